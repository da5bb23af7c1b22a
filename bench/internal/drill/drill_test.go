package drill

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/harness"
	"github.com/repd/repd/internal/testtool"
)

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

func TestSyncSpan(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	evs := []api.Event{
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
	evs = append(evs, api.Event{Time: at(187), Kind: "replication", Peer: "bravo", Old: "SyncSource", New: "Established"})
	s, e, ok := spanOf(evs, "bravo", "SyncSource", t0)
	if !ok || e.Time.Sub(s.Time) != 180*time.Millisecond || e.New != "Established" {
		t.Errorf("span: ok=%v %v..%v", ok, s.Time, e.Time)
	}
	var l api.Event
	if err := json.Unmarshal([]byte(`{"time":"2026-11-27T03:06:03.375174182Z","kind":"replication","peer":"bravo","old":"Off","new":"SyncSource"}`), &l); err != nil ||
		l.Time.Nanosecond() != 375174182 || l.New != "SyncSource" {
		t.Errorf("event line: %+v %v", l, err)
	}
}

// The floor drill runs on a small file and reports a positive cost for
// each step, a 1 MiB write costing more than a 4 KiB one; a device under
// 64 MiB is refused.
func TestFloorDrillSmall(t *testing.T) {
	r := drillFloor(t.Context(), target.Env{Dir: t.TempDir(), Size: 64 << 20})
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	if r.Us4K <= 0 || r.PwriteUs4K <= 0 || r.Us1M <= 0 || r.RTTUs4K <= 0 || r.RTTUs4KProcess <= 0 || r.MACUs4K <= 0 || r.MACUs1M <= 0 ||
		r.DatasyncUs <= 0 || r.DatasyncSharedUs <= 0 {
		t.Errorf("floor %+v: every cost must be positive", r)
	}
	if r.Us1M < r.Us4K || r.MACUs1M < r.MACUs4K {
		t.Errorf("floor %+v: a 1 MiB write cannot cost less than a 4 KiB one", r)
	}
	if r := drillFloor(t.Context(), target.Env{Dir: t.TempDir(), Size: 1 << 20}); r.Error == "" {
		t.Error("a 1 MiB device: no error, want one (the drill needs 64 MiB)")
	}
}

// The wire drill reports the daemon's own counters of logical and wire
// bytes, compression and dedup: every numeric peer field whose JSON name
// speaks of them, and no other.
func TestWireCounters(t *testing.T) {
	in := `{"name":"bravo","connection":"Connected","replication":"Established","out_of_sync_kib":8,"bytes_sent":1000,
	  "resynced_bytes":4096,"bytes_logical":900,"compression_ratio":0.5,"dedup_blocks":3,"dedup_bytes_saved":12288,"zero_blocks":2,"dedup_misses":1}`
	var p api.PeerStatus
	if err := json.Unmarshal([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	m := counters(p)
	want := map[string]float64{"bytes_logical": 900, "compression_ratio": 0.5, "dedup_blocks": 3, "dedup_bytes_saved": 12288, "dedup_misses": 1}
	if len(m) != len(want) {
		t.Errorf("counters %v, want %v", m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, m[k], v, m)
		}
	}
}

func TestMain(m *testing.M) {
	FloorPeerMain() // the peer process TestFloorDrillSmall starts
	code := m.Run()
	harness.RemoveBinaries()
	os.Exit(code)
}

// The rto-auto case with the 2 s timeout on a small device: bravo is
// elected and serves the failover client's write; the old Primary's lease
// was over before the election; it rejoins as an UpToDate Secondary after
// the heal.
func TestRTOAutoDrill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs repd processes and fio")
	}
	testtool.Require(t, "fio")
	r := rtoAuto(t.Context(), target.Env{Dir: t.TempDir(), Size: 64 << 20, Transport: "unix", Logf: t.Logf}, 2*time.Second, time.Second)
	t.Logf("%+v", r)
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	if r.Successor != "bravo" || r.LoadIOPS <= 0 || r.Attempts < 1 || r.TimeoutMs != 2000 || r.PromiseMs != 2250 {
		t.Errorf("result %+v", r)
	}
	if r.ElectedMs <= 0 || r.TotalMs < r.ElectedMs {
		t.Errorf("elected at %.0f ms, first write at %.0f ms: the write must follow the election", r.ElectedMs, r.TotalMs)
	}
	if r.LeaseEndMs == 0 || r.LeaseEndMs >= r.ElectedMs || r.LeaseEndMs > r.LeaseMs {
		t.Errorf("old Primary's lease over by %.0f ms, successor elected at %.0f ms: the lease (%.0f ms) must end first", r.LeaseEndMs, r.ElectedMs, r.LeaseMs)
	}
	if r.SuspendedMs == 0 {
		t.Errorf("the old Primary, with fio's writes on it, never suspended I/O")
	}
	if !strings.HasPrefix(r.Rejoined, "an UpToDate Secondary") {
		t.Errorf("after the heal: %s", r.Rejoined)
	}
}

// The backup drill on a small device with short fio runs: both backups
// run on the Secondary and are recorded by it, the incremental reads about
// what was rewritten and equals its snapshot, every fio run has IOPS and
// the snapshot run found data to preserve.
func TestBackupDrill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs repd processes and fio")
	}
	testtool.Require(t, "fio")
	testtool.Require(t, "qemu-img")
	const size = 32 << 20
	r := backupDrill(t.Context(), target.Env{Dir: t.TempDir(), Size: size, Transport: "unix", Logf: t.Logf}, size, 1, 2, 1)
	t.Logf("%+v", r)
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	if r.Full.Kind != "full" || r.Inc.Kind != "inc" || r.Full.BytesRead != size || r.Full.ReportedSeconds <= 0 {
		t.Errorf("backups: full %+v, inc %+v", r.Full, r.Inc)
	}
	// 1 % of 32 MiB in 64 KiB blocks is 5 blocks: each incremental reads
	// those (its dirty bitmap may be coarser, never finer).
	if len(r.Incs) != 2 || !slices.Contains(r.Incs, *r.Inc) {
		t.Errorf("incrementals %+v, judged %+v", r.Incs, r.Inc)
	}
	for _, inc := range r.Incs {
		if inc.Kind != "inc" || r.RewrittenBytes != 5*backupRewriteBlock || inc.BytesRead < r.RewrittenBytes || inc.BytesRead > 4*r.RewrittenBytes {
			t.Errorf("rewrote %d, the incremental %+v", r.RewrittenBytes, inc)
		}
	}
	if !strings.HasPrefix(r.Verify, "identical") {
		t.Errorf("verify: %s", r.Verify)
	}
	var cases []string
	for _, l := range r.Load {
		cases = append(cases, l.Case)
		if l.Error != "" || l.IOPS <= 0 {
			t.Errorf("load %+v", l)
		}
		if strings.HasPrefix(l.Case, "backup") && l.Backups < 1 {
			t.Errorf("no backup ran during the load: %+v", l)
		}
		if (l.Case == "backup-paced") != (l.Rate != "") {
			t.Errorf("only the paced backups have a rate: %+v", l)
		}
		if strings.HasPrefix(l.Case, "snapshot") && l.StoreBytes == 0 {
			t.Errorf("a fresh snapshot preserved nothing under random writes: %+v", l)
		}
	}
	if strings.Join(cases, ",") != "base,backup,base,backup-paced,snapshot,snapshot-secondary,snapshot-secondary-lazy,base" ||
		r.BaseIOPS <= 0 || len(r.BackupRatios) != 1 || r.BackupRatio != r.BackupRatios[0] || r.SnapshotRatio <= 0 || r.SecondaryLazyRatio <= 0 {
		t.Errorf("load cases %v, base %.0f, ratios %.2f %.2f %.2f", cases, r.BaseIOPS, r.BackupRatio, r.SnapshotRatio, r.SecondaryLazyRatio)
	}
}
