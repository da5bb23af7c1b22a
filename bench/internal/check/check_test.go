package check

import (
	"strings"
	"testing"

	"github.com/repd/repd/bench/internal/result"
)

func TestChecks(t *testing.T) {
	s := &result.Summary{
		Targets: []result.TargetInfo{{Name: "repd", MaxRSS: 50 << 20}, {Name: "nbdkit"}},
		Results: []result.Result{
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 110},
			{Workload: "randwrite-4k-qd32", Target: "nbdkit", IOPS: 100},
			{Workload: "seqwrite-1m-qd8", Target: "repd", IOPS: 90},
			{Workload: "seqwrite-1m-qd8", Target: "nbdkit", IOPS: 100},
			{Workload: "randread-4k-qd32", Target: "nbdkit", IOPS: 100},
		},
	}
	got := map[string]string{}
	for _, c := range Eval(s) {
		got[c.Name] = c.Status
	}
	want := map[string]string{
		"repd/nbdkit IOPS on randwrite-4k-qd32": "PASS",
		"repd/nbdkit IOPS on seqwrite-1m-qd8":   "FAIL",
		"repd/nbdkit IOPS on randread-4k-qd32":  "SKIP",
		"repd max RSS":                          "PASS",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
}

func TestDrillChecks(t *testing.T) {
	d := &result.Drills{
		RTO: &result.RTOResult{TotalMs: 150, DetectMs: 5, PromoteMs: 100, FirstWriteMs: 45},
		RPO: []result.RPOResult{
			{Protocol: "A", Acked: 1000, LostWrites: 10, LostBytes: 40960, JournalBound: 8 << 20},
			{Protocol: "C", Acked: 1000, LostWrites: 1, LostBytes: 4096, JournalBound: 8 << 20},
		},
		Wire: []result.WireResult{{Data: "csv", Ratio: 0.2}, {Data: "repeat-4k", Ratio: 1.01}, {Data: "random", Ratio: 1.0}},
		RTOAuto: []result.RTOAutoResult{
			{TimeoutMs: 2000, TotalMs: 3100, ElectedMs: 2700, Successor: "bravo"},
			{TimeoutMs: 5000, TotalMs: 6900, ElectedMs: 6500, Successor: "bravo"}, // no target: never judged
		},
	}
	got := map[string]string{}
	for _, c := range Drills(d) {
		got[c.Name] = c.Status
	}
	want := map[string]string{
		"RTO: kill -9 primary until first write on promoted secondary": "PASS",
		"RPO under protocol A over the WAN link":                       "PASS",
		"RPO under protocol C over the WAN link":                       "FAIL",
		"wire/logical bytes, zstd, csv":                                "PASS",
		"wire/logical bytes, zstd, repeat-4k":                          "FAIL",
		"wire/logical bytes, zstd, random":                             "PASS",
		rtoAutoName:                                                    "PASS",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	for _, c := range Drills(nil) {
		if c.Status != "SKIP" {
			t.Errorf("no drills: %s is %s", c.Name, c.Status)
		}
	}
	// The 2 s case over its 5 s target, or without a successor, fails.
	for _, r := range []result.RTOAutoResult{
		{TimeoutMs: 2000, TotalMs: 5001, Successor: "bravo"},
		{TimeoutMs: 2000, TotalMs: 100},
		{TimeoutMs: 2000, Error: "start: boom"},
	} {
		if c := rtoAuto([]result.RTOAutoResult{r}); c.Status != "FAIL" || c.Issue != 18 {
			t.Errorf("%+v: %s %+v", r, c.Status, c)
		}
	}
	if c := rtoAuto([]result.RTOAutoResult{{TimeoutMs: 5000, TotalMs: 9000, Successor: "bravo"}}); c.Status != "SKIP" {
		t.Errorf("only the default timeout's case: %s, want SKIP (it has no target)", c.Status)
	}
}

const rtoAutoName = "RTO auto: Primary's host cut off (partition), timeout 2s, until a write completes on the elected successor"

// The CPU bound on a replicated ratio: CPUs / (standalone CPU per I/O +
// peers × floor), against standalone's IOPS; absent without the floor
// drill or the CPU figures.
func TestCPUBound(t *testing.T) {
	s := &result.Summary{
		Machine: result.Machine{Nproc: 2},
		Targets: []result.TargetInfo{
			standaloneTarget,
			replicatedTarget("repd-a1", "A", 1),
			replicatedTarget("repd-c2", "C", 2),
			{Name: "repd-c2-mac", Meta: result.TargetMeta{Kind: "repd", Protocol: "C", Peers: 2, FrameMAC: true}},
			{Name: "nbdkit", Meta: result.TargetMeta{Kind: "nbdkit"}},
		},
		Results: []result.Result{
			// 8 µs of CPU per I/O at 100k IOPS on 2 CPUs: 80 % busy.
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 100000, CPU: &result.CPUStats{TargetUs: 5, FioUs: 3, Util: 0.8}},
			// 20 µs of CPU per I/O at 60k IOPS on 2 CPUs: 60 % busy.
			{Workload: "randwrite-4k-qd32", Target: "repd-a1", IOPS: 60000, CPU: &result.CPUStats{TargetUs: 16, FioUs: 4, Util: 0.6}},
		},
		Drills: &result.Drills{Floor: &result.FloorResult{Us4K: 2, Us1M: 300, MACUs4K: 1, MACUs1M: 250}},
	}
	// One peer: 2 CPUs / 10 µs = 200k IOPS = 2.0x of 100k.
	if b, why := CPUBound(s, "repd-a1", "repd", "randwrite-4k-qd32"); b < 1.999 || b > 2.001 || !strings.Contains(why, "200000 IOPS") {
		t.Errorf("one peer: %.3f (%s), want 2.000 and 200000 IOPS", b, why)
	}
	// What keeps it at 0.6x of the 2.0x: 60 % busy, 20 µs per write.
	if _, why := CPUBound(s, "repd-a1", "repd", "randwrite-4k-qd32"); !strings.Contains(why, "repd-a1 itself kept the CPUs 60 % busy and spent 20.0 µs of CPU per write (its processes 16.0 + fio 4.0) where the bound allows 10.0") {
		t.Errorf("one peer: %s, want its own CPU per write and busy share", why)
	}
	// Without its CPU figures, only the bound.
	if _, why := CPUBound(s, "repd-c2", "repd", "randwrite-4k-qd32"); strings.Contains(why, "itself") {
		t.Errorf("two peers, no result: %s, want no share", why)
	}
	// Two peers: 2 CPUs / 12 µs = 166667 IOPS.
	if b, _ := CPUBound(s, "repd-c2", "repd", "randwrite-4k-qd32"); b < 1.666 || b > 1.667 {
		t.Errorf("two peers: %.4f, want 1.6667", b)
	}
	// Two peers whose frames carry tags: each copy also costs the MAC,
	// 2 CPUs / (8 + 2 × (2 + 1)) µs = 142857 IOPS.
	if b, why := CPUBound(s, "repd-c2-mac", "repd", "randwrite-4k-qd32"); b < 1.428 || b > 1.429 || !strings.Contains(why, "at least 2.0 µs to send, receive and pwrite 4 KiB, and 1.0 µs to tag its frame") {
		t.Errorf("two peers with frame MACs: %.4f (%s), want 1.4286", b, why)
	}
	for _, c := range []struct{ num, den, workload string }{
		{"nbdkit", "repd", "randwrite-4k-qd32"},    // not a replicated repd
		{"repd-a1", "nbdkit", "randwrite-4k-qd32"}, // not against standalone
		{"repd-a1", "repd", "randread-4k-qd32"},    // no standalone result with CPU
	} {
		if b, _ := CPUBound(s, c.num, c.den, c.workload); b != 0 {
			t.Errorf("%+v: bound %.3f, want none", c, b)
		}
	}
	s.Drills.Floor.Error = "failed"
	if b, _ := CPUBound(s, "repd-a1", "repd", "randwrite-4k-qd32"); b != 0 {
		t.Errorf("failed floor drill: bound %.3f, want none", b)
	}
}

// The flush bound on the database job: standalone's cycle with its flush
// replaced by two fdatasyncs at once on the shared disk, plus a round trip
// per write; only for protocol C with one peer against standalone, and
// quoted by the db check, which says when it puts the target out of reach.
func TestFlushBound(t *testing.T) {
	s := &result.Summary{
		Machine: result.Machine{Nproc: 2},
		Targets: []result.TargetInfo{
			standaloneTarget,
			replicatedTarget("repd-c1", "C", 1),
			replicatedTarget("repd-a1", "A", 1),
			replicatedTarget("repd-c2", "C", 2),
		},
		Results: []result.Result{
			// 8 writes and a flush every 1000 µs, the flush 500 µs of it.
			{Workload: "dbsync-16k-fsync8", Target: "repd", IOPS: 8000, Write: &result.DirStats{IOPS: 8000, IOs: 80000},
				Flush: &result.FlushStats{N: 10000, MeanUs: 500}},
			{Workload: "dbsync-16k-fsync8", Target: "repd-c1", IOPS: 3000},
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 100000, Write: &result.DirStats{IOPS: 100000, IOs: 1000000}},
		},
		// Shared, an fdatasync takes 1100 µs; a round trip adds 35 − 5 µs:
		// a cycle takes at least 1000 − 500 + 1100 + 8 × 30 = 1840 µs.
		Drills: &result.Drills{Floor: &result.FloorResult{RTTUs4KProcess: 35, PwriteUs4K: 5, DatasyncUs: 520, DatasyncSharedUs: 1100}},
	}
	b, why := FlushBound(s, "repd-c1", "repd", "dbsync-16k-fsync8")
	if b < 0.5434 || b > 0.5435 || !strings.Contains(why, "at least 1840 µs a cycle") || !strings.Contains(why, "520 µs alone and 1100 µs with a second file") {
		t.Errorf("bound %.4f (%s), want 1000/1840 = 0.5435", b, why)
	}
	for _, c := range []struct{ num, den, workload string }{
		{"repd-a1", "repd", "dbsync-16k-fsync8"},    // protocol A waits for no peer's flush
		{"repd-c2", "repd", "dbsync-16k-fsync8"},    // the drill shares the disk between two files only
		{"repd-c1", "repd-a1", "dbsync-16k-fsync8"}, // not against standalone
		{"repd-c1", "repd", "randwrite-4k-qd32"},    // no flushes
	} {
		if b, _ := FlushBound(s, c.num, c.den, c.workload); b != 0 {
			t.Errorf("%+v: bound %.3f, want none", c, b)
		}
	}
	// The db check quotes it: 0.375x is 69 % of the bound.
	found := false
	for _, c := range Eval(s) {
		if c.Name == "repd-c1/repd IOPS on dbsync-16k-fsync8" {
			found = true
			if c.Status != "FAIL" || !strings.Contains(c.Detail, "with both nodes' files on this machine's one disk it cannot exceed 0.54x") {
				t.Errorf("db check: %s (%s)", c.Status, c.Detail)
			}
		}
	}
	if !found {
		t.Error("no db check")
	}
	// A slower shared flush puts 0.45x out of reach: 1000 / (500 + 1500 + 240) = 0.446x.
	s.Drills.Floor.DatasyncSharedUs = 1500
	for _, c := range Eval(s) {
		if c.Name == "repd-c1/repd IOPS on dbsync-16k-fsync8" && !strings.Contains(c.Detail, "so 0.45x is out of reach here (84 % of the bound reached)") {
			t.Errorf("db check with a 1500 µs shared flush: %s", c.Detail)
		}
	}
	s.Drills.Floor.Error = "failed"
	if b, _ := FlushBound(s, "repd-c1", "repd", "dbsync-16k-fsync8"); b != 0 {
		t.Errorf("failed floor drill: bound %.3f, want none", b)
	}
}

// The backup drill's checks (issue 19): bytes read and time of the
// incremental, and the Primary's writes during backups; a failed part
// fails its checks with the reason, a drill not run skips them.
func TestBackupChecks(t *testing.T) {
	r := &result.BackupResult{
		DeviceBytes: 1 << 30, RewrittenBytes: 10682368, IncReadShare: 10682368.0 / (1 << 30), IncTimeRatio: 200.0 / 5000, CtlFloorMs: 20,
		Full:     &result.BackupRun{Kind: "full", WallMs: 5000, ReportedSeconds: 4.9, BytesRead: 1 << 30},
		Inc:      &result.BackupRun{Kind: "inc", WallMs: 200, ReportedSeconds: 0.15, BytesRead: 10682368},
		Load:     []result.BackupLoad{{Case: "base", IOPS: 4000}, {Case: "backup", IOPS: 3400, Backups: 2}, {Case: "snapshot", IOPS: 2000}},
		BaseIOPS: 4000, BackupRatio: 0.85, SnapshotRatio: 0.5,
	}
	status := func(cs []result.Check) []string {
		var out []string
		for _, c := range cs {
			if c.Issue != 19 {
				t.Errorf("%s: issue %d", c.Name, c.Issue)
			}
			out = append(out, c.Status)
		}
		return out
	}
	if got := status(Backup(r)); strings.Join(got, ",") != "PASS,PASS,PASS" {
		t.Errorf("good drill: %v %+v", got, Backup(r))
	}
	if d := Backup(r)[2].Detail; !strings.Contains(d, "0.85x") || !strings.Contains(d, "copy-on-write, no target) 0.50x") {
		t.Errorf("load detail: %s", d)
	}
	r.IncReadShare, r.IncTimeRatio, r.BackupRatio = 0.021, 1.0/11, 0.04
	if got := status(Backup(r)); strings.Join(got, ",") != "FAIL,FAIL,FAIL" {
		t.Errorf("bad drill: %v", got)
	}
	r.Inc.Error = "repctl backup: exit status 1: boom"
	r.Load[1].Error = "fio: killed"
	cs := Backup(r)
	if strings.Join(status(cs), ",") != "FAIL,FAIL,FAIL" || !strings.Contains(cs[0].Detail, "boom") || cs[2].Detail != "fio: killed" {
		t.Errorf("failed parts: %+v", cs)
	}
	if got := status(Backup(nil)); strings.Join(got, ",") != "SKIP,SKIP,SKIP" {
		t.Errorf("not run: %v", got)
	}
	if n := len(Drills(&result.Drills{Backup: r})); n == 0 || Drills(nil)[n-1].Issue != 19 {
		t.Errorf("Drills does not judge the backup drill")
	}
}

// Issue 20's checks: a ratio below its target passes at OfBound of a CPU
// bound that puts the target out of reach, and not below it; the QD1
// latency and CPU per write against standalone; the replicated targets'
// memory against their journal.
func TestIssue20Checks(t *testing.T) {
	s := &result.Summary{
		Machine: result.Machine{Nproc: 2},
		Targets: []result.TargetInfo{
			standaloneTarget,
			replicatedTarget("repd-c1", "C", 1),
			replicatedTarget("repd-a1", "A", 1),
		},
		Results: []result.Result{
			// Standalone: 20 µs per I/O at 100k IOPS on 2 CPUs; a peer's
			// copy costs at least 20 µs more: the bound is 0.5x.
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 100000, CPU: &result.CPUStats{TargetUs: 12, FioUs: 8, Util: 1}},
			{Workload: "randwrite-4k-qd32", Target: "repd-c1", IOPS: 36000},                    // 0.36x = 72 % of 0.5x
			{Workload: "randwrite-4k-qd32", Target: "repd-a1", IOPS: 44000, MaxRSS: 120 << 20}, // 88 % of 0.5x; RSS over 64+48 MiB
			{Workload: "randwrite-4k-qd1", Target: "repd", IOPS: 20000, Write: &result.DirStats{P50us: 35}, CPU: &result.CPUStats{TargetUs: 40}},
			{Workload: "randwrite-4k-qd1", Target: "repd-c1", IOPS: 9000, Write: &result.DirStats{P50us: 90}, CPU: &result.CPUStats{TargetUs: 170}},
			// 1 MiB: 1300 µs standalone + 300 µs a peer's copy: at most
			// 2 CPUs / 1600 µs = 1250 IOPS = 0.625x, under the 0.65x
			// target; 0.5x is 80 % of it.
			{Workload: "seqwrite-1m-qd8", Target: "repd", IOPS: 2000, CPU: &result.CPUStats{TargetUs: 800, FioUs: 500, Util: 0.7}},
			{Workload: "seqwrite-1m-qd8", Target: "repd-c1", IOPS: 1000},
			// The pinned twin is quoted, not judged: repd-a1 still fails.
			{Workload: "randwrite-4k-qd32", Target: "repd-a1-pinned", IOPS: 49000},
			// So is the one-node-per-machine model, against its own
			// standalone: 30000/40000.
			{Workload: "randwrite-4k-qd32", Target: "repd-a1-machines", IOPS: 30000},
			{Workload: "randwrite-4k-qd32", Target: "repd-machine", IOPS: 40000},
			// Without its standalone twin it is not quoted.
			{Workload: "seqwrite-1m-qd8", Target: "repd-c1-machines", IOPS: 900},
		},
		Drills: &result.Drills{Floor: &result.FloorResult{Us4K: 20, Us1M: 300, RTTUs4K: 31}},
	}
	got := map[string]string{}
	for _, c := range Eval(s) {
		if c.Issue == 20 {
			got[c.Name] = c.Status
		}
		if c.Issue == 20 && c.Name == "repd-c1/repd IOPS on seqwrite-1m-qd8" && !strings.Contains(c.Detail, "so 0.65x is out of reach here (80 % of the bound reached)") {
			t.Errorf("the 1 MiB check does not say its target is out of reach: %s", c.Detail)
		}
		if c.Name == "repd-a1/repd IOPS on randwrite-4k-qd32" && !strings.Contains(c.Detail, "; with each node on CPUs of its own (repd-a1-pinned, not judged): 0.49x") {
			t.Errorf("the A check does not quote its pinned twin: %s", c.Detail)
		}
		if c.Name == "repd-a1/repd IOPS on randwrite-4k-qd32" && !strings.Contains(c.Detail, "against standalone and fio on the first half: repd-a1-machines/repd-machine, not judged): 0.75x") {
			t.Errorf("the A check does not quote its one-node-per-machine model: %s", c.Detail)
		}
		if c.Name == "repd-c1/repd IOPS on seqwrite-1m-qd8" && strings.Contains(c.Detail, "-machines") {
			t.Errorf("the 1 MiB check quotes a model whose standalone twin did not run: %s", c.Detail)
		}
		if c.Name == "repd-c1/repd IOPS on randwrite-4k-qd32" && strings.Contains(c.Detail, "pinned") {
			t.Errorf("the C check quotes a pinned twin that did not run: %s", c.Detail)
		}
		if c.Name == "repd-c1 p50 write latency on randwrite-4k-qd1" && !strings.Contains(c.Detail, "round trip (send, pwrite, answer) took 31 µs") {
			t.Errorf("the latency check does not name the floor's round trip: %s", c.Detail)
		}
	}
	want := map[string]string{
		"repd-c1/repd IOPS on randwrite-4k-qd32":        "PASS", // 0.36x < 0.55x, but >= 70 % of the 0.5x bound
		"repd-a1/repd IOPS on randwrite-4k-qd32":        "FAIL", // 88 % of the bound, 90 % wanted
		"repd-c2/repd IOPS on randwrite-4k-qd32":        "SKIP",
		"repd-c1/repd IOPS on dbsync-16k-fsync8":        "SKIP",
		"repd-c1/repd IOPS on seqwrite-1m-qd8":          "FAIL", // out of reach, and 80 % of the bound is no pass
		"repd-c1 p50 write latency on randwrite-4k-qd1": "PASS", // +55 µs
		"repd-c1 CPU per write on randwrite-4k-qd1":     "FAIL", // 4.25x
		"repd-a1 max RSS on randwrite-4k-qd32":          "FAIL",
		"repd-a1-j8 max RSS on randwrite-4k-qd32":       "SKIP",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %s", k, got[k], v)
		}
	}
	s.Results[1].IOPS = 34000 // 68 % of the bound
	s.Results[4].Write.P50us = 96
	for _, c := range Eval(s) {
		switch c.Name {
		case "repd-c1/repd IOPS on randwrite-4k-qd32", "repd-c1 p50 write latency on randwrite-4k-qd1":
			if c.Issue == 20 && c.Status != "FAIL" {
				t.Errorf("%s: %s (%s), want FAIL", c.Name, c.Status, c.Detail)
			}
		}
	}
}

// standaloneTarget and replicatedTarget are targets as the bench names
// and describes them (no link, no compression).
var standaloneTarget = result.TargetInfo{Name: result.Standalone, Meta: result.TargetMeta{Kind: "repd"}}

func replicatedTarget(name, protocol string, peers int) result.TargetInfo {
	return result.TargetInfo{Name: name, Meta: result.TargetMeta{Kind: "repd", Protocol: protocol, Peers: peers}}
}

// A judged value prints with the decimals it needs to read on the side of
// its limit that its status says: 0.6451 against >= 0.65 is 0.645x and a
// FAIL, 60.4 µs against <= 60 is +60.4 µs.
func TestShownSide(t *testing.T) {
	for _, c := range []struct {
		v, limit float64
		d        int
		atLeast  bool
		want     string
	}{
		{0.6451, 0.65, 2, true, "0.645"},
		{0.64996, 0.65, 2, true, "0.64996"},
		{0.6512, 0.65, 2, true, "0.65"},
		{0.63, 0.65, 2, true, "0.63"},
		{60.4, 60, 0, false, "60.4"},
		{59.6, 60, 0, false, "60"},
		{4.04, 4, 1, false, "4.04"},
		{3.3, 4, 1, false, "3.3"},
	} {
		if got := shown(c.v, c.limit, c.d, c.atLeast); got != c.want {
			t.Errorf("shown(%v, %v, %d, %v) = %q, want %q", c.v, c.limit, c.d, c.atLeast, got, c.want)
		}
	}
	s := &result.Summary{
		Machine: result.Machine{Nproc: 2},
		Targets: []result.TargetInfo{standaloneTarget, replicatedTarget("repd-c1", "C", 1)},
		Results: []result.Result{
			{Workload: "seqwrite-1m-qd8", Target: "repd", IOPS: 1792},
			{Workload: "seqwrite-1m-qd8", Target: "repd-c1", IOPS: 1156},
		},
	}
	for _, c := range Eval(s) {
		if c.Issue == 20 && c.Name == "repd-c1/repd IOPS on seqwrite-1m-qd8" {
			if c.Status != "FAIL" || !strings.HasPrefix(c.Detail, "0.645x (") {
				t.Fatalf("1156 of 1792 IOPS against >= 0.65x: %s %s", c.Status, c.Detail)
			}
			return
		}
	}
	t.Fatal("no issue-20 check of the 1 MiB job")
}

// An IOPS ratio's detail lists the ratio of every round, which the bench
// ran side by side, so a reader sees the spread the median came from;
// not when the rounds do not pair up.
func TestRoundRatios(t *testing.T) {
	s := &result.Summary{
		Machine: result.Machine{Nproc: 2},
		Targets: []result.TargetInfo{standaloneTarget, replicatedTarget("repd-c1", "C", 1)},
		Results: []result.Result{
			{Workload: "dbsync-16k-fsync8", Target: "repd", IOPS: 9668, RoundsIOPS: []float64{9315, 9852, 9668}},
			{Workload: "dbsync-16k-fsync8", Target: "repd-c1", IOPS: 3718, RoundsIOPS: []float64{4016, 3718, 3297}},
			{Workload: "seqwrite-1m-qd8", Target: "repd", IOPS: 2169, RoundsIOPS: []float64{1624, 2283, 2169}},
			{Workload: "seqwrite-1m-qd8", Target: "repd-c1", IOPS: 1153, RoundsIOPS: []float64{1153, 1260}},
		},
	}
	var db, seq *result.Check
	cs := Eval(s)
	for i, c := range cs {
		switch {
		case c.Issue == 20 && c.Name == "repd-c1/repd IOPS on dbsync-16k-fsync8":
			db = &cs[i]
		case c.Issue == 20 && c.Name == "repd-c1/repd IOPS on seqwrite-1m-qd8":
			seq = &cs[i]
		}
	}
	if db == nil || seq == nil {
		t.Fatal("no issue-20 checks of the database and 1 MiB jobs")
	}
	if want := "; round by round 0.43x 0.38x 0.34x"; db.Status != "FAIL" || !strings.Contains(db.Detail, want) {
		t.Errorf("database job: %s %s, want it to contain %q", db.Status, db.Detail, want)
	}
	if strings.Contains(seq.Detail, "round by round") {
		t.Errorf("1 MiB job with 2 rounds against 3: %s", seq.Detail)
	}
	if got := roundRatios(&result.Result{RoundsIOPS: []float64{1, 0}}, &result.Result{RoundsIOPS: []float64{1, 2}}); got != "" {
		t.Errorf("a round without IOPS: %q, want none", got)
	}
}

// The QD1 latency check names the least a protocol-C p50 can be here:
// standalone's plus the floor's round trip between two processes, less
// the pwrite that overlaps it; and says when that puts +60 µs out of
// reach, without changing the verdict.
func TestLatencyBound(t *testing.T) {
	for _, tc := range []struct {
		rtt, p50 float64
		status   string
		want     []string
	}{
		{56, 90, "FAIL", []string{"so repd-c1's p50 cannot be below 79 µs here (repd's + 51 µs: the round trip less the 5.0 µs pwrite that overlaps it); it is 11 µs above it"}},
		{56, 76, "PASS", []string{"it is 3 µs below it (the drill and the job ran at different times)"}},
		{75, 100, "FAIL", []string{"cannot be below 98 µs here", "; +60 µs is out of reach on this machine"}},
	} {
		s := &result.Summary{
			Machine: result.Machine{Nproc: 2},
			Targets: []result.TargetInfo{standaloneTarget, replicatedTarget("repd-c1", "C", 1)},
			Results: []result.Result{
				{Workload: "randwrite-4k-qd1", Target: "repd", IOPS: 20000, Write: &result.DirStats{P50us: 28}},
				{Workload: "randwrite-4k-qd1", Target: "repd-c1", IOPS: 9000, Write: &result.DirStats{P50us: tc.p50}},
			},
			Drills: &result.Drills{Floor: &result.FloorResult{Us4K: 5, RTTUs4K: 22, RTTUs4KProcess: tc.rtt, PwriteUs4K: 5}},
		}
		var found bool
		for _, c := range Eval(s) {
			if c.Name != "repd-c1 p50 write latency on randwrite-4k-qd1" {
				continue
			}
			found = true
			if c.Status != tc.status {
				t.Errorf("rtt %.0f, p50 %.0f: %s, want %s: %s", tc.rtt, tc.p50, c.Status, tc.status, c.Detail)
			}
			for _, w := range tc.want {
				if !strings.Contains(c.Detail, w) {
					t.Errorf("rtt %.0f, p50 %.0f: %q missing from %s", tc.rtt, tc.p50, w, c.Detail)
				}
			}
			if tc.rtt < 60 && strings.Contains(c.Detail, "out of reach") {
				t.Errorf("rtt %.0f: +60 µs called out of reach: %s", tc.rtt, c.Detail)
			}
		}
		if !found {
			t.Fatal("no latency check")
		}
	}
}
