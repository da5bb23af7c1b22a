package render

import (
	"fmt"
	"strings"
	"testing"

	"github.com/repd/repd/bench/internal/check"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
)

func TestLatencies(t *testing.T) {
	r := result.Result{Read: &result.DirStats{IOs: 7005, P50us: 120, P99us: 850}, Write: &result.DirStats{IOs: 3002, P50us: 150, P99us: 990.5}}
	if p50, p99 := Latencies(r); p50 != "r 120 / w 150" || p99 != "r 850 / w 991" {
		t.Errorf("latencies = %q, %q", p50, p99)
	}
	if p50, _ := Latencies(result.Result{Write: &result.DirStats{IOs: 1, P50us: 9.25}}); p50 != "9.2" {
		t.Errorf("write-only p50 = %q", p50)
	}
}

func TestCharts(t *testing.T) {
	s := &result.Summary{}
	for _, tg := range target.All() {
		s.Targets = append(s.Targets, result.TargetInfo{Name: tg.Name, Meta: tg.Meta})
	}
	w := func(p50 float64) *result.DirStats { return &result.DirStats{IOs: 1, P50us: p50, P99us: 2 * p50} }
	s.Results = []result.Result{
		{Workload: "randwrite-4k-qd1", Target: "repd", Write: w(20)},
		{Workload: "randwrite-4k-qd1", Target: "repd-c1", Write: w(100)},
		{Workload: "randwrite-4k-qd1", Target: "repd-c1-wan", Write: w(31000)},
		{Workload: "randwrite-4k-qd1", Target: "repd-c1-lan", Write: w(700)},
		{Workload: "randwrite-4k-qd1", Target: "repd-c1-lan-100mbit", Write: w(900)},
		{Workload: "randwrite-4k-qd1", Target: "repd-a1-metro", Error: "boom"},
		{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 1000},
		{Workload: "randwrite-4k-qd32", Target: "nbdkit", IOPS: 2000},
	}
	se := linkSeries(s, "randwrite-4k-qd1", "C", writeP50ms)
	var labels []string
	for _, p := range se.Points {
		labels = append(labels, fmt.Sprintf("%s=%g", p.Label, p.Value))
	}
	if got := strings.Join(labels, " "); got != "loopback=0.1 lan +0.5ms=0.7 wan +30ms=31" {
		t.Errorf("C series: %s", got)
	}
	if a := linkSeries(s, "randwrite-4k-qd1", "A", writeP50ms); len(a.Points) != 0 {
		t.Errorf("A series: %+v", a)
	}
	var names []string
	for _, c := range charts(s) {
		names = append(names, c.name)
	}
	if got := strings.Join(names, ","); got != "latency-vs-link,iops-bars" {
		t.Errorf("charts: %s", got)
	}
	dat := datFile([]series{barSeries(s, "randwrite-4k-qd32", iops)})
	if !strings.Contains(dat, "0 \"repd\" 1000\n1 \"nbdkit\" 2000") {
		t.Errorf("dat:\n%s", dat)
	}
}

func TestMarkdownSections(t *testing.T) {
	s := &result.Summary{
		Targets: []result.TargetInfo{{Name: "repd", Meta: result.TargetMeta{Group: result.GroupLoopback}}, {Name: "repd-c1-wan", Meta: result.TargetMeta{Group: result.GroupLinks}}},
		Results: []result.Result{
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 1000, Write: &result.DirStats{IOs: 1, P50us: 30, P99us: 90}},
			{Workload: "randwrite-4k-qd32", Target: "repd-c1-wan", IOPS: 500, Write: &result.DirStats{IOs: 1, P50us: 31000, P99us: 33000}},
		},
		Drills: &result.Drills{Resync: &result.ResyncResult{OutageSeconds: 5, DirtyBytes: 1 << 20},
			Floor: &result.FloorResult{Us4K: 5, DatasyncUs: 480, DatasyncSharedUs: 1040},
			RTOAuto: []result.RTOAutoResult{
				{Protocol: "C", Quorum: "majority: 2 of 3 votes", OnNoQuorum: "suspend-io", Timeout: "2s", TimeoutMs: 2000, LeaseMs: 2000, PromiseMs: 2250,
					LoadIOPS: 9000, LeaseEndMs: 1900, SuspendedMs: 2100, ElectedMs: 2600, TotalMs: 2700, Successor: "bravo", Attempts: 80, Rejoined: "in sync", LoadAvg: "1.0 1.0 1.0"},
				{Timeout: "default (5s)", TimeoutMs: 5000, LeaseMs: 5000, PromiseMs: 5625, Error: "start: boom"},
			}},
		LoadEnd: "1.00 2.00 3.00",
	}
	result.FillRatios(s.Results)
	md := Markdown(s, map[string]string{"randwrite-4k-qd32": "4k randwrite QD32"})
	for _, want := range []string{"## Loopback", "## Links", "| 4k randwrite QD32 | repd-c1-wan | 500 | 0.0 | 31000 | 33000 | 0.50 |  |", "## Resync drill", "at end",
		"## Automatic failover drill (rto-auto)", "`on-no-quorum = \"suspend-io\"`",
		"| 2s | 2000 ms | 2250 ms | 9000 writes/s | 1900 ms | 2100 ms | 2600 ms | **2700 ms** (bravo) | ≤ 5000 ms | 80 | in sync | 1.0 1.0 1.0 |",
		"| default (5s) | 5000 ms | 5625 ms | | | | | error: start: boom | none |",
		"fdatasync of such a file took 480 µs alone and 1040 µs with a second file doing the same at the same time"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	// The precondition pass is stated only when the run made it.
	const pass = "before every run of a write job, one sequential pass over the whole target"
	if strings.Contains(md, pass) {
		t.Errorf("report of a run without --precondition states the pass")
	}
	s.Options.Precondition = true
	if md := Markdown(s, nil); !strings.Contains(md, pass) {
		t.Errorf("report of a run with --precondition lacks %q", pass)
	}
}

func TestSyncDrillChecksAndReport(t *testing.T) {
	r := &result.SyncResult{
		DeviceBytes: 1 << 30, CSums: true, RefMBps: []float64{500, 700}, RefMeanMBps: 600, PrefillMBps: 300,
		Resync: []result.SyncCase{
			{Name: "1m", WriteSize: 1 << 20, DirtyBytes: 102 << 20, ResyncMs: 200, RateMBps: 535, Ratio: 535.0 / 600, WireSent: 102 << 20, Timing: "events"},
			{Name: "4k", WriteSize: 4 << 10, DirtyBytes: 102 << 20, ResyncMs: 500, RateMBps: 214, Ratio: 214.0 / 600, WireSent: 103 << 20, Timing: "events"},
		},
		CSumsResync: &result.CSumsCase{ResyncMs: 900, RateMBps: 1190, SourceSent: 11 << 20, SourcePct: 100 * float64(11<<20) / (1 << 30), HashesRecv: 8 << 20},
		Verify:      &result.VerifyResult{Ms: 900, RateMBps: 1190},
	}
	got := map[string]string{}
	for _, c := range check.Drills(&result.Drills{Sync: r}) {
		if c.Issue == 4 {
			got[c.Name] = c.Status
		}
	}
	want := map[string]string{
		"resync of 10% dirty (1 MiB pieces) / fio 1 MiB seq write, same cluster": "PASS",
		"checksum resync of an identical device: bytes the source sends":         "FAIL", // 11 MiB of 1 GiB > 1 %
		"online verify of the device: rate (no target), differences":             "PASS",
	}
	if len(got) != len(want) {
		t.Errorf("issue 4 checks: %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	r.Resync[0].Ratio = 0.5
	r.CSumsResync.SourceSent = 4 << 10
	r.Verify.MismatchKiB = 4
	for _, c := range check.Sync(r) {
		if w := map[string]string{"resync": "FAIL", "checksum": "PASS", "online": "FAIL"}[strings.Fields(c.Name)[0]]; c.Status != w {
			t.Errorf("%s: %s, want %s", c.Name, c.Status, w)
		}
	}
	r.Resync[0] = result.SyncCase{Name: "1m", Error: "boom"}
	if c := check.Sync(r)[0]; c.Status != "FAIL" || c.Detail != "boom" {
		t.Errorf("failed resync: %+v", c)
	}
	md := Markdown(&result.Summary{Drills: &result.Drills{Sync: r}}, nil)
	for _, w := range []string{"## Sync drill (issue #4)", "| resync, 10% dirty in 4.0 KiB pieces | 102.0 MiB | 500 ms | 214 | **0.36** |",
		"| checksum resync, identical data |", "| online verify | 1.00 GiB compared | 900 ms | 1190 |", "error: boom", "500 and 700 MB/s, mean **600 MB/s**"} {
		if !strings.Contains(md, w) {
			t.Errorf("report lacks %q:\n%s", w, md)
		}
	}
}

// The backup drill's section: both backups, the incremental's share and
// time ratio against their targets, every fio run, an error.
func TestBackupDrillReport(t *testing.T) {
	r := &result.BackupResult{
		DeviceBytes: 1 << 30, FillMBps: 80, RewrittenBytes: 10682368, IncReadShare: 10682368.0 / (1 << 30), IncTimeRatio: 431.0 / 4891,
		CtlFloorMs: 210, LoadSeconds: 6, Verify: "identical (qemu-img compare x-inc.qcow2 with bench@b2)",
		Full: &result.BackupRun{Kind: "full", WallMs: 4891, ReportedSeconds: 4.77, BytesRead: 1 << 30, FileBytes: 1074135040},
		Incs: []result.BackupRun{{Kind: "inc", WallMs: 900, ReportedSeconds: 0.8, BytesRead: 10682368, FileBytes: 11075584},
			{Kind: "inc", WallMs: 431, ReportedSeconds: 0.36, BytesRead: 10682368, FileBytes: 11075584},
			{Kind: "inc", WallMs: 300, ReportedSeconds: 0.25, BytesRead: 10682368, FileBytes: 11075584}},
		Load: []result.BackupLoad{{Case: "base", IOPS: 4084, P99Us: 30540}, {Case: "backup", IOPS: 155, P99Us: 1535115, Backups: 1},
			{Case: "snapshot", IOPS: 1903, StoreBytes: 587137024}, {Case: "snapshot-secondary", Error: "snapshot create cow on bravo: refused"}},
		BaseIOPS: 4000, BackupRatio: 155.0 / 4000, SnapshotRatio: 1903.0 / 4000,
	}
	r.Inc = &r.Incs[1]
	md := Markdown(&result.Summary{Drills: &result.Drills{Backup: r}}, nil)
	for _, w := range []string{"## Backup drill (issue #19)", "| full | full | 1.00 GiB | 1.00 GiB | 4891 ms | 4.77 s |",
		"| incremental 2 (median) | inc | 10.2 MiB | 10.6 MiB | 431 ms | 0.36 s |", "| incremental 3 | inc | 10.2 MiB | 10.6 MiB | 300 ms | 0.25 s |", "done 3 times in a row", "read **0.99 %** of the device (target ≤ 2 %), in **1/11** of the full's time (target ≤ 1/20; by the times repctl reported, 1/13)",
		"| backup | 155 | 1535115 µs | **0.04** | 1 full backups from bravo ran; target ≥ 0.8× |", "alpha's store preserved 559.9 MiB",
		"| snapshot-secondary | | | | error: snapshot create cow on bravo: refused |", "Verified: identical", "6 s runs"} {
		if !strings.Contains(md, w) {
			t.Errorf("report lacks %q:\n%s", w, md)
		}
	}
}
