package main

import (
	"encoding/json"
	"fmt"
	"github.com/repd/repd/faultnet"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/config"
)

func TestParseFio(t *testing.T) {
	// The shape of fio 3.33's --output-format=json, trimmed; a warning line
	// before the object, as fio sometimes prints.
	in := `fio: some warning
{
  "fio version" : "fio-3.33",
  "jobs" : [ {
      "jobname" : "randrw-70-30-4k-qd32", "error" : 0,
      "read" : { "iops" : 700.5, "bw_bytes" : 2869248, "total_ios" : 7005,
        "clat_ns" : { "percentile" : { "1.000000" : 1000, "50.000000" : 120000, "99.000000" : 850000 } } },
      "write" : { "iops" : 300.25, "bw_bytes" : 1229824, "total_ios" : 3002,
        "clat_ns" : { "percentile" : { "50.000000" : 150000, "99.000000" : 990500 } } }
  } ]
}`
	r, err := parseFio([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if r.Read.IOPS != 700.5 || r.Read.P50us != 120 || r.Read.P99us != 850 || r.Read.IOs != 7005 {
		t.Errorf("read = %+v", r.Read)
	}
	if r.Write.P99us != 990.5 || r.Write.MBps() != 1.229824 {
		t.Errorf("write = %+v", r.Write)
	}
	iops, _ := r.Total()
	if iops != 1000.75 {
		t.Errorf("total iops = %v", iops)
	}
	res := Result{Read: &r.Read, Write: &r.Write}
	if p50, _ := latencies(res); p50 != "r 120 / w 150" {
		t.Errorf("latencies = %q", p50)
	}
}

func TestParseFioJobError(t *testing.T) {
	in := `{"jobs":[{"jobname":"w","error":1,"read":{},"write":{}}]}`
	_, err := parseFio([]byte(in))
	if err == nil || !strings.Contains(err.Error(), "EPERM") {
		t.Fatalf("err = %v, want EPERM", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "256MiB": 256 << 20, "512M": 512 << 20, "1G": 1 << 30, "4096": 4096} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1G", "1.5G"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}

func TestChecks(t *testing.T) {
	s := &Summary{
		Targets: []TargetInfo{{Name: "repd", MaxRSS: 50 << 20}, {Name: "nbdkit"}},
		Results: []Result{
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 110},
			{Workload: "randwrite-4k-qd32", Target: "nbdkit", IOPS: 100},
			{Workload: "seqwrite-1m-qd8", Target: "repd", IOPS: 90},
			{Workload: "seqwrite-1m-qd8", Target: "nbdkit", IOPS: 100},
			{Workload: "randread-4k-qd32", Target: "nbdkit", IOPS: 100},
		},
	}
	got := map[string]string{}
	for _, c := range evalChecks(s) {
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

func TestRepdTemplate(t *testing.T) {
	d := &RepdData{Resource: "bench", Size: 1 << 30, Protocol: "C", Nodes: []RepdNode{
		{Name: "alpha", Disk: "/d/a.img", Meta: "/d/a.meta", NBD: "unix:/d/a.sock", Peer: "127.0.0.1:1", Admin: "/d/a.admin.sock"},
		{Name: "bravo", Disk: "/d/b.img", Meta: "/d/b.meta", NBD: "127.0.0.1:2", Peer: "127.0.0.1:3", Admin: "/d/b.admin.sock"},
	}, Extra: map[string]string{"on-congestion": `"block"`}}
	out, err := renderRepdConfig(repdTemplate, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`size = 1073741824`, `on-congestion = "block"`, `nbd   = "unix:/d/a.sock"`, `name  = "bravo"`} {
		if !strings.Contains(out, s) {
			t.Errorf("resource file lacks %q:\n%s", s, out)
		}
	}
	// It must be a resource file repd accepts.
	if _, err := config.Parse([]byte(out)); err != nil {
		t.Errorf("config.Parse: %v\n%s", err, out)
	}
}

func TestBuildPlanDefault(t *testing.T) {
	plan, err := buildPlan(flags{targets: "default", workloads: "default", links: linkNames()})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	works := map[string]int{}
	for _, ph := range plan {
		for _, tg := range ph.targets {
			got[ph.group] = append(got[ph.group], tg.Name)
		}
		works[ph.group] = len(ph.workloads)
	}
	if ph := plan[0]; ph.runs("repd-a1-zstd", "randread-4k-qd32") || !ph.runs("repd-a1-zstd", "randwrite-4k-qd32") || !ph.runs("repd-a1", "randread-4k-qd32") {
		t.Error("compression targets not limited to their workloads")
	}
	want := map[string]string{
		groupLoopback: "local,nbdkit,repd,repd-c1,repd-a1,repd-c2,repd-c1-zstd,repd-a1-zstd",
		groupLinks:    "repd-c1-lan,repd-a1-lan,repd-c1-metro,repd-a1-metro,repd-c1-wan,repd-a1-wan,repd-c1-lan-100mbit,repd-a1-lan-100mbit",
	}
	for g, w := range want {
		if s := strings.Join(got[g], ","); s != w {
			t.Errorf("%s: %s, want %s", g, s, w)
		}
	}
	if works[groupLoopback] != len(Workloads) || works[groupLinks] != 2 || len(plan) != 2 {
		t.Errorf("workloads per group: %v", works)
	}

	plan, err = buildPlan(flags{targets: "repd,repd-c1-wan,repd-c1-lan", workloads: "randwrite-4k-qd1", links: "wan"})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != 2 || plan[1].targets[0].Name != "repd-c1-wan" || len(plan[1].targets) != 1 || len(plan[1].workloads) != 1 {
		t.Errorf("explicit plan: %+v", plan)
	}
	if _, err := buildPlan(flags{targets: "nope", links: "none"}); err == nil {
		t.Error("unknown target accepted")
	}
	if _, err := buildPlan(flags{targets: "default", links: "moon"}); err == nil {
		t.Error("unknown link accepted")
	}
}

func TestTargetMeta(t *testing.T) {
	for _, tg := range allTargets() {
		if tg.Meta.Kind == "" || tg.Meta.Group == "" {
			t.Errorf("%s: meta %+v", tg.Name, tg.Meta)
		}
	}
	wan := replicated("A", 1, "none", &linkProfiles[2])
	if wan.Name != "repd-a1-wan" || wan.Meta.LinkRTTms != 30 || wan.Meta.Group != groupLinks {
		t.Errorf("wan target: %s %+v", wan.Name, wan.Meta)
	}
	if l := linkProfiles[2].Link(); l.Delay != 15*time.Millisecond {
		t.Errorf("wan one-way delay %s, want 15ms", l.Delay)
	}
}

func TestRepdTemplatePeerListen(t *testing.T) {
	d := &RepdData{Resource: "bench", Size: 1 << 30, Protocol: "A", Nodes: []RepdNode{
		{Name: "alpha", Disk: "/d/a.img", Meta: "/d/a.meta", NBD: "127.0.0.1:1", Peer: "127.0.0.1:2", Admin: "/d/a.sock"},
		{Name: "bravo", Disk: "/d/b.img", Meta: "/d/b.meta", NBD: "127.0.0.1:3", Peer: "127.0.0.1:4", PeerListen: "127.0.0.1:5", Admin: "/d/b.sock"},
	}}
	out, err := renderRepdConfig(repdTemplate, d)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out, "peer-listen") != 1 || !strings.Contains(out, `peer-listen = "127.0.0.1:5"`) {
		t.Errorf("resource file:\n%s", out)
	}
	f, err := config.Parse([]byte(out))
	if err != nil {
		t.Fatalf("config.Parse: %v\n%s", err, out)
	}
	if f.Nodes[1].PeerListen != "127.0.0.1:5" {
		t.Errorf("peer-listen = %q", f.Nodes[1].PeerListen)
	}
}

func TestParseStatus(t *testing.T) {
	in := `{"resource":"bench","role":"Primary","disk":"UpToDate","journal_bytes":4096,"writes":7,
	  "peers":[{"name":"bravo","connection":"Connected","replication":"Established","disk":"UpToDate",
	    "out_of_sync_kib":8,"bytes_sent":1000,"resynced_bytes":4096,"wire_bytes_sent":900,"dedup_hits":3,"connects":1}]}`
	st, err := parseStatus([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	p := st.Peers[0]
	if st.Role != "Primary" || st.JournalBytes != 4096 || p.OutOfSyncKiB != 8 || p.BytesSent != 1000 || p.ResyncedBytes != 4096 {
		t.Errorf("status = %+v", st)
	}
	if len(p.Counters) != 2 || p.Counters["wire_bytes_sent"] != 900 || p.Counters["dedup_hits"] != 3 {
		t.Errorf("counters = %v", p.Counters)
	}
	if inSync(p) {
		t.Error("in sync with 8 KiB out of sync")
	}
}

func TestRPOData(t *testing.T) {
	a, b := make([]byte, rpoBlock), make([]byte, rpoBlock)
	rpoData(7, a)
	rpoData(7, b)
	if string(a) != string(b) || string(a[:8]) != rpoMagic {
		t.Fatal("rpoData not deterministic or no magic")
	}
	rpoData(8, b)
	if string(a[16:]) == string(b[16:]) {
		t.Fatal("two blocks share filler")
	}
}

func TestWireGenerators(t *testing.T) {
	csv := make([]byte, 64<<10)
	wireGenerator("csv", 1)(3, csv)
	lines := strings.Split(string(csv), "\n")
	if len(lines) < 100 || strings.Count(lines[0], ",") != 8 {
		t.Errorf("csv: %d lines, first %q", len(lines), lines[0])
	}
	rep := make([]byte, 4096)
	rep2 := make([]byte, 4096)
	g := wireGenerator("repeat-4k", 2)
	g(0, rep)
	g(99, rep2)
	if string(rep) != string(rep2) {
		t.Error("repeat-4k blocks differ")
	}
	r1, r2 := make([]byte, 4096), make([]byte, 4096)
	g = wireGenerator("random", 3)
	g(0, r1)
	g(1, r2)
	if string(r1) == string(r2) {
		t.Error("random blocks equal")
	}
}

func TestDrillChecks(t *testing.T) {
	d := &Drills{
		RTO: &RTOResult{TotalMs: 150, DetectMs: 5, PromoteMs: 100, FirstWriteMs: 45},
		RPO: []RPOResult{
			{Protocol: "A", Acked: 1000, LostWrites: 10, LostBytes: 40960, JournalBound: 8 << 20},
			{Protocol: "C", Acked: 1000, LostWrites: 1, LostBytes: 4096, JournalBound: 8 << 20},
		},
		Wire: []WireResult{{Data: "csv", Ratio: 0.2}, {Data: "repeat-4k", Ratio: 1.01}, {Data: "random", Ratio: 1.0}},
	}
	got := map[string]string{}
	for _, c := range drillChecks(d) {
		got[c.Name] = c.Status
	}
	want := map[string]string{
		"RTO: kill -9 primary until first write on promoted secondary": "PASS",
		"RPO under protocol A over the WAN link":                       "PASS",
		"RPO under protocol C over the WAN link":                       "FAIL",
		"wire/logical bytes, zstd, csv":                                "PASS",
		"wire/logical bytes, zstd, repeat-4k":                          "FAIL",
		"wire/logical bytes, zstd, random":                             "PASS",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	for _, c := range drillChecks(nil) {
		if c.Status != "SKIP" {
			t.Errorf("no drills: %s is %s", c.Name, c.Status)
		}
	}
}

func TestCharts(t *testing.T) {
	s := &Summary{}
	for _, tg := range allTargets() {
		s.Targets = append(s.Targets, TargetInfo{Name: tg.Name, Meta: tg.Meta})
	}
	w := func(p50 float64) *DirStats { return &DirStats{IOs: 1, P50us: p50, P99us: 2 * p50} }
	s.Results = []Result{
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
	s := &Summary{
		Targets: []TargetInfo{{Name: "repd", Meta: TargetMeta{Group: groupLoopback}}, {Name: "repd-c1-wan", Meta: TargetMeta{Group: groupLinks}}},
		Results: []Result{
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 1000, Write: &DirStats{IOs: 1, P50us: 30, P99us: 90}},
			{Workload: "randwrite-4k-qd32", Target: "repd-c1-wan", IOPS: 500, Write: &DirStats{IOs: 1, P50us: 31000, P99us: 33000}},
		},
		Drills:  &Drills{Resync: &ResyncResult{OutageSeconds: 5, DirtyBytes: 1 << 20}},
		LoadEnd: "1.00 2.00 3.00",
	}
	fillRatios(s.Results)
	md := markdown(s, Workloads)
	for _, want := range []string{"## Loopback", "## Links", "| 4k randwrite QD32 | repd-c1-wan | 500 | 0.0 | 31000 | 33000 | 0.50 |  |", "## Resync drill", "at end"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestMeasureLink(t *testing.T) {
	l, _ := linkProfile("lan")
	rtt, err := measureLink(l, 5)
	if err != nil {
		t.Fatal(err)
	}
	if rtt < l.RTT {
		t.Errorf("measured %s through a link adding %s", rtt, l.RTT)
	}
}

func TestMedianRounds(t *testing.T) {
	rs := []Result{
		{Workload: "w", Target: "a", IOPS: 30, MBps: 3},
		{Workload: "w", Target: "b", IOPS: 5},
		{Workload: "w", Target: "a", IOPS: 10, MBps: 1},
		{Workload: "w", Target: "b", IOPS: 7, Error: "fio died"},
		{Workload: "w", Target: "a", IOPS: 20, MBps: 2, MaxRSS: 9},
		{Workload: "w", Target: "b", IOPS: 6},
	}
	got := medianRounds(rs)
	if len(got) != 2 || got[0].Target != "a" || got[1].Target != "b" {
		t.Fatalf("targets %+v", got)
	}
	if a := got[0]; a.IOPS != 20 || a.MBps != 2 || !slices.Equal(a.RoundsIOPS, []float64{30, 10, 20}) || a.MaxRSS != 9 {
		t.Errorf("a: median round %+v", a)
	}
	if b := got[1]; b.Error != "fio died" || !slices.Equal(b.RoundsIOPS, []float64{5, 7, 6}) {
		t.Errorf("b: a failed round must be reported: %+v", b)
	}
	if one := medianRounds(rs[:2]); len(one) != 2 || one[0].RoundsIOPS != nil {
		t.Errorf("single rounds: %+v", one)
	}
}

func TestLinkWindowCoversTheBandwidthDelayProduct(t *testing.T) {
	wan, _ := linkProfile("wan")
	// 10 Gbit/s over 15 ms + 3 ms one way: 22.5 MB.
	if w := wan.Window(); w < 22_000_000 || w > 23_000_000 {
		t.Errorf("wan window %d", w)
	}
	lan, _ := linkProfile("lan")
	if w := lan.Window(); w != faultnet.DefaultMaxInFlight {
		t.Errorf("lan window %d, want the 4 MiB floor", w)
	}
}

func TestSyncDrillChecksAndReport(t *testing.T) {
	r := &SyncResult{
		DeviceBytes: 1 << 30, CSums: true, RefMBps: []float64{500, 700}, RefMeanMBps: 600, PrefillMBps: 300,
		Resync: []SyncCase{
			{Name: "1m", WriteSize: 1 << 20, DirtyBytes: 102 << 20, ResyncMs: 200, RateMBps: 535, Ratio: 535.0 / 600, WireSent: 102 << 20, Timing: "events"},
			{Name: "4k", WriteSize: 4 << 10, DirtyBytes: 102 << 20, ResyncMs: 500, RateMBps: 214, Ratio: 214.0 / 600, WireSent: 103 << 20, Timing: "events"},
		},
		CSumsResync: &CSumsCase{ResyncMs: 900, RateMBps: 1190, SourceSent: 11 << 20, SourcePct: 100 * float64(11<<20) / (1 << 30), HashesRecv: 8 << 20},
		Verify:      &VerifyResult{Ms: 900, RateMBps: 1190},
	}
	got := map[string]string{}
	for _, c := range drillChecks(&Drills{Sync: r}) {
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
	for _, c := range syncChecks(r) {
		if w := map[string]string{"resync": "FAIL", "checksum": "PASS", "online": "FAIL"}[strings.Fields(c.Name)[0]]; c.Status != w {
			t.Errorf("%s: %s, want %s", c.Name, c.Status, w)
		}
	}
	r.Resync[0] = SyncCase{Name: "1m", Error: "boom"}
	if c := syncChecks(r)[0]; c.Status != "FAIL" || c.Detail != "boom" {
		t.Errorf("failed resync: %+v", c)
	}
	md := markdown(&Summary{Drills: &Drills{Sync: r}}, Workloads)
	for _, w := range []string{"## Sync drill (issue #4)", "| resync, 10% dirty in 4.0 KiB pieces | 102.0 MiB | 500 ms | 214 | **0.36** |",
		"| checksum resync, identical data |", "| online verify | 1.00 GiB compared | 900 ms | 1190 |", "error: boom", "500 and 700 MB/s, mean **600 MB/s**"} {
		if !strings.Contains(md, w) {
			t.Errorf("report lacks %q:\n%s", w, md)
		}
	}
}

func TestSyncSpan(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	evs := []syncEvent{
		{Time: at(-50), Kind: "replication", Peer: "bravo", Old: "Off", New: "SyncSource"}, // before the trigger
		{Time: at(-10), Kind: "replication", Peer: "bravo", Old: "SyncSource", New: "Established"},
		{Time: at(5), Kind: "connection", Peer: "bravo", Old: "Connecting", New: "Connected"},
		{Time: at(6), Kind: "replication", Peer: "charlie", Old: "Off", New: "SyncSource"},
		{Time: at(7), Kind: "replication", Peer: "bravo", Old: "Off", New: "SyncSource"},
		{Time: at(9), Kind: "peer-disk", Peer: "bravo", Old: "UpToDate", New: "Inconsistent"},
	}
	if s, _, ok := spanOf(evs, "bravo", "SyncSource", t0); ok || !s.Time.Equal(at(7)) {
		t.Errorf("unfinished span: ok=%v start=%v", ok, s.Time)
	}
	evs = append(evs, syncEvent{Time: at(187), Kind: "replication", Peer: "bravo", Old: "SyncSource", New: "Established"})
	s, e, ok := spanOf(evs, "bravo", "SyncSource", t0)
	if !ok || e.Time.Sub(s.Time) != 180*time.Millisecond || e.New != "Established" {
		t.Errorf("span: ok=%v %v..%v", ok, s.Time, e.Time)
	}
	var l syncEvent
	if err := json.Unmarshal([]byte(`{"time":"2026-11-27T03:06:03.375174182Z","kind":"replication","peer":"bravo","old":"Off","new":"SyncSource"}`), &l); err != nil ||
		l.Time.Nanosecond() != 375174182 || l.New != "SyncSource" {
		t.Errorf("event line: %+v %v", l, err)
	}
}

// The CPU bound on a replicated ratio: CPUs / (standalone CPU per I/O +
// peers × floor), against standalone's IOPS; absent without the floor
// drill or the CPU figures.
func TestCPUBound(t *testing.T) {
	s := &Summary{
		Machine: Machine{Nproc: 2},
		Targets: []TargetInfo{
			{Name: "repd", Meta: TargetMeta{Kind: "repd"}},
			{Name: "repd-a1", Meta: TargetMeta{Kind: "repd", Protocol: "A", Peers: 1}},
			{Name: "repd-c2", Meta: TargetMeta{Kind: "repd", Protocol: "C", Peers: 2}},
			{Name: "nbdkit", Meta: TargetMeta{Kind: "nbdkit"}},
		},
		Results: []Result{
			// 8 µs of CPU per I/O at 100k IOPS on 2 CPUs: 80 % busy.
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 100000, CPU: &CPUStats{TargetUs: 5, FioUs: 3, Util: 0.8}},
			{Workload: "randwrite-4k-qd32", Target: "repd-a1", IOPS: 60000},
		},
		Drills: &Drills{Floor: &FloorResult{Us4K: 2, Us1M: 300}},
	}
	// One peer: 2 CPUs / 10 µs = 200k IOPS = 2.0x of 100k.
	if b, why := cpuBound(s, "repd-a1", "repd", "randwrite-4k-qd32"); b < 1.999 || b > 2.001 || !strings.Contains(why, "200000 IOPS") {
		t.Errorf("one peer: %.3f (%s), want 2.000 and 200000 IOPS", b, why)
	}
	// Two peers: 2 CPUs / 12 µs = 166667 IOPS.
	if b, _ := cpuBound(s, "repd-c2", "repd", "randwrite-4k-qd32"); b < 1.666 || b > 1.667 {
		t.Errorf("two peers: %.4f, want 1.6667", b)
	}
	for _, c := range []struct{ num, den, workload string }{
		{"nbdkit", "repd", "randwrite-4k-qd32"},    // not a replicated repd
		{"repd-a1", "nbdkit", "randwrite-4k-qd32"}, // not against standalone
		{"repd-a1", "repd", "randread-4k-qd32"},    // no standalone result with CPU
	} {
		if b, _ := cpuBound(s, c.num, c.den, c.workload); b != 0 {
			t.Errorf("%+v: bound %.3f, want none", c, b)
		}
	}
	s.Drills.Floor.Error = "failed"
	if b, _ := cpuBound(s, "repd-a1", "repd", "randwrite-4k-qd32"); b != 0 {
		t.Errorf("failed floor drill: bound %.3f, want none", b)
	}
}

func TestProcCPU(t *testing.T) {
	self, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn some CPU; the reading must grow (USER_HZ ticks: 10 ms).
	end := time.Now().Add(100 * time.Millisecond)
	for x := 0; time.Now().Before(end); x++ {
		_ = x * x
	}
	after, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after <= self {
		t.Errorf("CPU time %v after 100 ms of spinning, %v before: want more", after, self)
	}
	if got := treeCPU(os.Getpid()); got < after {
		t.Errorf("treeCPU %v < procCPU %v of the same process", got, after)
	}
	if _, err := procCPU(1 << 30); err == nil {
		t.Error("procCPU of a pid that cannot exist: no error")
	}
}

// The floor drill runs on a small file and reports a positive cost for
// each step, a 1 MiB write costing more than a 4 KiB one; a device under
// 64 MiB is refused.
func TestFloorDrillSmall(t *testing.T) {
	r := drillFloor(t.Context(), Env{Dir: t.TempDir(), Size: 64 << 20})
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	if r.Us4K <= 0 || r.PwriteUs4K <= 0 || r.Us1M <= 0 {
		t.Errorf("floor %+v: every cost must be positive", r)
	}
	if r.Us1M < r.Us4K {
		t.Errorf("floor %+v: a 1 MiB write cannot cost less than a 4 KiB one", r)
	}
	if r := drillFloor(t.Context(), Env{Dir: t.TempDir(), Size: 1 << 20}); r.Error == "" {
		t.Error("a 1 MiB device: no error, want one (the drill needs 64 MiB)")
	}
}
