// Package check judges a benchmark run against repd's targets: IOPS ratios
// between targets measured side by side, the server's memory, the RTO, RPO
// and wire drills, and the sync drill. Each target comes from an issue of
// the tracker and a Check carries its number, so that a FAIL names what
// was promised where. The limits are here, apart from the code that
// measures and from the report that shows them.
package check

import "github.com/repd/repd/bench/internal/result"

// Ratio is an IOPS ratio between two targets on one workload, measured in
// the same run: Num's IOPS over Den's must be at least Min.
type Ratio struct {
	Issue    int
	Workload string
	Num, Den string // target names
	Min      float64
	Note     string // added to the detail
	// OfBound, if set, is the share of the CPU bound (CPUBound) that
	// meets the target on a machine whose bound puts Min out of reach of
	// any implementation: the check then passes at OfBound × the bound.
	OfBound float64
}

// Ratios are the IOPS ratio targets.
var Ratios = []Ratio{
	// Issue 2: standalone repd against nbdkit, the page-cache file server.
	{Issue: 2, Workload: "randwrite-4k-qd32", Num: result.Standalone, Den: "nbdkit", Min: 1.0},
	{Issue: 2, Workload: "seqwrite-1m-qd8", Num: result.Standalone, Den: "nbdkit", Min: 1.0},
	{Issue: 2, Workload: "randread-4k-qd32", Num: result.Standalone, Den: "nbdkit", Min: 0.9},
	// Issue 3: what replication over loopback costs against standalone.
	{Issue: 3, Workload: "randwrite-4k-qd32", Num: "repd-a1", Den: result.Standalone, Min: 0.9},
	{Issue: 3, Workload: "randwrite-4k-qd32", Num: "repd-c1", Den: result.Standalone, Min: 0.6},
	{Issue: 3, Workload: "seqwrite-1m-qd8", Num: "repd-c1", Den: result.Standalone, Min: 0.7},
	// Issue 7: replication over shaped links.
	{Issue: 7, Workload: "randwrite-4k-qd32", Num: "repd-c1-lan", Den: result.Standalone, Min: 0.5},
	{Issue: 7, Workload: "randwrite-4k-qd32", Num: "repd-a1-wan", Den: result.Standalone, Min: 0.85},
	// Issue 20: protocol C at the speed of its round trip, on loopback.
	{Issue: 20, Workload: "randwrite-4k-qd32", Num: "repd-c1", Den: result.Standalone, Min: 0.55, OfBound: 0.70},
	{Issue: 20, Workload: "randwrite-4k-qd32", Num: "repd-c2", Den: result.Standalone, Min: 0.40},
	{Issue: 20, Workload: "seqwrite-1m-qd8", Num: "repd-c1", Den: result.Standalone, Min: 0.65},
	{Issue: 20, Workload: "randwrite-4k-qd32", Num: "repd-a1", Den: result.Standalone, Min: 0.70, OfBound: 0.90},
	{Issue: 20, Workload: "dbsync-16k-fsync8", Num: "repd-c1", Den: result.Standalone, Min: 0.45,
		Note: "16 KiB writes at QD1, a flush every 8"},
	// Issue 5: compression that finds nothing to squeeze costs little.
	{Issue: 5, Workload: "randwrite-4k-qd32", Num: "repd-a1-zstd", Den: "repd-a1", Min: 0.95,
		Note: "fio's buffers are random (incompressible)"},
}

// RSSLimit is issue 2's bound on standalone repd's resident memory.
const RSSLimit = 100 << 20

// RTOLimitMs is issue 7's recovery time target: kill -9 of the primary
// until the first write acknowledged by the promoted secondary.
const RTOLimitMs = 2000

// Issue 18's automatic failover target: with timeout = "2s", two data
// nodes and a witness, from the partition that cuts the Primary's host off
// until a write completes on the successor the others elected. The case
// with the default timeout is reported without a target.
const (
	RTOAutoTimeoutMs = 2000
	RTOAutoLimitMs   = 5000
)

// WireLimits are issue 5's targets for wire bytes over logical bytes, with
// zstd, by kind of data written.
var WireLimits = map[string]float64{"csv": 1.0 / 3, "repeat-4k": 0.10, "random": 1.01}

// Issue 4's targets for the sync drill.
const (
	// SyncRatioMin: resync of 10 % dirty in 1 MiB pieces over fio's 1 MiB
	// sequential writes through the same cluster.
	SyncRatioMin = 0.8
	// CSumsSourceMax: checksum resync of identical data, bytes the source
	// sends over the device's size.
	CSumsSourceMax = 0.01
)

// Issue 19's targets for the backup drill: backups from the Secondary of a
// filled device, the incremental after 1 % of it was rewritten in random
// 64 KiB blocks.
const (
	// BackupIncReadMax: the incremental's bytes read over the device.
	BackupIncReadMax = 0.02
	// BackupIncTimeMax: the incremental's time over the full's.
	BackupIncTimeMax = 1.0 / 20
	// BackupLoadMin: fio 4k randwrite QD32 IOPS on the Primary during
	// backups from the Secondary over the same without a backup. (With a
	// fresh snapshot on the Primary itself the ratio is reported, no
	// target.)
	BackupLoadMin = 0.8
)

// Latency is issue 20's bound on what protocol C adds to a write's median
// latency at queue depth 1 on loopback: Num's p50 at most Den's plus
// MaxAddUs.
type Latency struct {
	Issue    int
	Workload string
	Num, Den string
	MaxAddUs float64
}

// Latencies are the latency targets.
var Latencies = []Latency{
	{Issue: 20, Workload: "randwrite-4k-qd1", Num: "repd-c1", Den: result.Standalone, MaxAddUs: 60},
}

// CPUPerIO is issue 20's bound on a replicated target's CPU time per
// write (its processes', fio's left out) against standalone repd's on the
// same workload: at most MaxX times.
type CPUPerIO struct {
	Issue    int
	Workload string
	Num, Den string
	MaxX     float64
}

// CPUPerIOs are the CPU-per-write targets.
var CPUPerIOs = []CPUPerIO{
	{Issue: 20, Workload: "randwrite-4k-qd1", Num: "repd-c1", Den: result.Standalone, MaxX: 4},
}

// RSSBound is issue 20's bound on a protocol-A Primary's resident memory
// under a workload: the journal it may fill plus Slack. The bench samples
// every process of the target (the Primary and its peer), so the largest
// sample is what is judged.
type RSSBound struct {
	Issue    int
	Workload string
	Target   string
	Journal  int64 // the target's journal-size
	Slack    int64
}

// RSSBounds are the memory targets of replicated repd.
var RSSBounds = []RSSBound{
	{Issue: 20, Workload: "randwrite-4k-qd32", Target: "repd-a1", Journal: 64 << 20, Slack: 48 << 20},
	{Issue: 20, Workload: "randwrite-4k-qd32", Target: "repd-a1-j8", Journal: 8 << 20, Slack: 56 << 20},
}
