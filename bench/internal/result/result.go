// Package result is the schema of the benchmark's summary.json: what a run
// measured (fio results per workload and target, the drills), where and
// how (machine, options, links), and the checks judged on it. Everything
// else (the checks, the report, the charts) is computed from a Summary,
// so `--rereport` can redo it from the JSON alone.
package result

import "time"

// Summary is summary.json.
type Summary struct {
	Started     time.Time    `json:"started"`
	Finished    time.Time    `json:"finished"`
	Interrupted bool         `json:"interrupted,omitempty"`
	Machine     Machine      `json:"machine"`
	Options     Options      `json:"options"`
	Targets     []TargetInfo `json:"targets"`
	Results     []Result     `json:"results"`
	Checks      []Check      `json:"checks,omitempty"`
	Drills      *Drills      `json:"drills,omitempty"`
	LoadEnd     string       `json:"loadavg_at_end"`
	Links       []LinkInfo   `json:"links,omitempty"`
	Charts      []string     `json:"charts,omitempty"` // PNG files next to the report
	ChartNote   string       `json:"chart_note,omitempty"`
}

// Result is the result of workload on target, or nil.
func (s *Summary) Result(workload, target string) *Result {
	for i := range s.Results {
		if r := &s.Results[i]; r.Workload == workload && r.Target == target {
			return r
		}
	}
	return nil
}

// Target is the named target's entry, or nil.
func (s *Summary) Target(name string) *TargetInfo {
	for i := range s.Targets {
		if s.Targets[i].Name == name {
			return &s.Targets[i]
		}
	}
	return nil
}

// Options are the settings of a run, as recorded in the report.
type Options struct {
	Phases      []PhaseOptions `json:"phases"`
	Drills      []string       `json:"drills"`
	SizeBytes   int64          `json:"size_bytes"`
	RuntimeSec  int            `json:"runtime_s"`
	RampSec     int            `json:"ramp_s"`
	Repeat      int            `json:"repeat,omitempty"` // rounds per job; results are each job's median round
	Transport   string         `json:"transport"`
	LocalEngine string         `json:"local_engine"`
	Prealloc    bool           `json:"prealloc"`
	DropCache   bool           `json:"drop_cache"` // page cache dropped before every job
	// Precondition: every run of a write job followed one sequential pass
	// over the whole target with the job's block size.
	Precondition bool `json:"precondition,omitempty"`
}

// PhaseOptions is one group's targets and workloads.
type PhaseOptions struct {
	Group     string   `json:"group"`
	Targets   []string `json:"targets"`
	Workloads []string `json:"workloads"`
	// Only: targets limited to some of the workloads.
	Only map[string][]string `json:"only,omitempty"`
}

// Machine describes where the numbers were taken.
type Machine struct {
	Host       string `json:"host"`
	Nproc      int    `json:"nproc"`
	CPU        string `json:"cpu"`
	Kernel     string `json:"kernel"`
	MemTotal   string `json:"mem_total"`
	LoadAvg    string `json:"loadavg_at_start"`
	Filesystem string `json:"filesystem"` // of the scratch directory
	Fio        string `json:"fio"`
	Nbdkit     string `json:"nbdkit"`
	QemuNBD    string `json:"qemu_nbd"`
	Go         string `json:"go"`
	Commit     string `json:"commit"`
}

// Groups of targets, run one after the other; each runs its own workloads.
const (
	GroupLoopback    = "loopback"
	GroupCompression = "compression"
	GroupLinks       = "links"
)

// Standalone is the target the replicated ones are compared with.
const Standalone = "repd"

// StandaloneMachine is the standalone twin of the -machines targets:
// repd and fio on the first half of the CPUs.
const StandaloneMachine = "repd-machine"

// TargetInfo is one target's state in the report.
type TargetInfo struct {
	Name   string     `json:"name"`
	Desc   string     `json:"desc"`
	Meta   TargetMeta `json:"meta"`
	Status string     `json:"status"` // "ran", "skipped: ...", "failed: ..."
	URI    string     `json:"uri,omitempty"`
	MaxRSS int64      `json:"max_rss_bytes,omitempty"` // over all its fio runs
	Notes  []string   `json:"notes,omitempty"`
}

// TargetMeta places a target in the report's tables and charts.
type TargetMeta struct {
	Kind        string  `json:"kind"`                  // local, nbdkit, qemu-nbd, repd
	Group       string  `json:"group"`                 // loopback, compression, links
	Protocol    string  `json:"protocol,omitempty"`    // repd: A or C
	Peers       int     `json:"peers"`                 // repd: nodes besides the primary
	Compression string  `json:"compression,omitempty"` // repd: none, zstd
	Link        string  `json:"link,omitempty"`        // link profile; "" is loopback
	LinkRTTms   float64 `json:"link_rtt_ms"`           // added round trip
	// FrameMAC: repd with peers whose frames carry AES-GCM tags (a shared
	// secret and no TLS, the default).
	FrameMAC bool `json:"frame_mac,omitempty"`
	// Pinned: repd whose nodes run on CPUs of their own (cpu-mask).
	Pinned bool `json:"pinned,omitempty"`
	// Machines: one node per machine modelled on this one (fio and the
	// Primary on the first half of the CPUs, the peer on the rest).
	Machines bool `json:"machines,omitempty"`
	// Default: in the default run (without --targets).
	Default bool `json:"-"`
}

// Result is one workload on one target.
type Result struct {
	Workload string    `json:"workload"`
	Target   string    `json:"target"`
	Read     *DirStats `json:"read,omitempty"`
	Write    *DirStats `json:"write,omitempty"`
	// Flush is the job's flushes, if it made any (they are not counted in
	// IOPS).
	Flush *FlushStats `json:"flush,omitempty"`
	IOPS  float64     `json:"iops"` // read+write
	MBps  float64     `json:"mb_per_s"`
	// RatioNbdkit is IOPS over nbdkit's IOPS on the same workload in the
	// same run; 0 when there is none.
	RatioNbdkit float64 `json:"ratio_to_nbdkit,omitempty"`
	// RatioStandalone is IOPS over repd standalone's on the same workload.
	RatioStandalone float64 `json:"ratio_to_standalone,omitempty"`
	MaxRSS          int64   `json:"max_rss_bytes,omitempty"` // server RSS during this run
	// CPU is what the job cost in CPU time per I/O (target and fio) and
	// how busy it kept this machine's CPUs.
	CPU     *CPUStats `json:"cpu,omitempty"`
	RawJSON string    `json:"raw_json,omitempty"` // relative to the report
	// RoundsIOPS is every round's IOPS in run order when the job ran more
	// than once (--repeat); the other fields are the median round's.
	RoundsIOPS []float64 `json:"rounds_iops,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// DirStats is one direction (read or write) of one fio run.
type DirStats struct {
	IOPS    float64 `json:"iops"`
	BWBytes float64 `json:"bw_bytes"` // bytes per second
	P50us   float64 `json:"clat_p50_us"`
	P99us   float64 `json:"clat_p99_us"`
	IOs     int64   `json:"total_ios"`
}

// FlushStats is the flushes of one fio run (fio's "sync" section): how
// many, and their latency from submission to completion.
type FlushStats struct {
	N      int64   `json:"total"`
	MeanUs float64 `json:"lat_mean_us"`
	P50us  float64 `json:"lat_p50_us"`
}

// MBps is the bandwidth in MB/s (10^6 bytes), as fio reports it.
func (d DirStats) MBps() float64 { return d.BWBytes / 1e6 }

// CPUStats is the CPU time one job cost per I/O over fio's measured window
// (after ramp_time): the target's processes (server, peers) and fio itself.
type CPUStats struct {
	TargetUs float64 `json:"target_us_per_io"`
	FioUs    float64 `json:"fio_us_per_io"`
	// Util is (target + fio CPU time) / (window × CPUs): near 1, the job
	// was bound by this machine's CPUs.
	Util float64 `json:"cpu_util"`
}

// Total is the CPU time per I/O of the target and fio together.
func (c *CPUStats) Total() float64 { return c.TargetUs + c.FioUs }

// FillRatios sets each result's ratio to nbdkit and to repd standalone on
// the same workload.
func FillRatios(rs []Result) {
	nbdkit, alone := map[string]float64{}, map[string]float64{}
	for _, r := range rs {
		if r.Error != "" {
			continue
		}
		switch r.Target {
		case "nbdkit":
			nbdkit[r.Workload] = r.IOPS
		case Standalone:
			alone[r.Workload] = r.IOPS
		}
	}
	for i := range rs {
		if rs[i].Error != "" {
			continue
		}
		if b := nbdkit[rs[i].Workload]; b > 0 {
			rs[i].RatioNbdkit = rs[i].IOPS / b
		}
		if b := alone[rs[i].Workload]; b > 0 {
			rs[i].RatioStandalone = rs[i].IOPS / b
		}
	}
}

// Check is one target of an issue evaluated against the results.
type Check struct {
	Issue  int     `json:"issue"`
	Name   string  `json:"name"`
	Status string  `json:"status"` // PASS, FAIL or SKIP
	Value  float64 `json:"value,omitempty"`
	Limit  string  `json:"limit"`
	Detail string  `json:"detail,omitempty"`
}

// LinkInfo is a link profile as configured and as measured.
type LinkInfo struct {
	Name          string  `json:"name"`
	Desc          string  `json:"desc"`
	RTTms         float64 `json:"rtt_ms"`
	BandwidthMbit float64 `json:"bandwidth_mbit,omitempty"`
	// MeasuredRTTms is the median round trip of a 4 KiB message echoed
	// through a proxy shaped like the link, on loopback: what the link
	// really adds, proxy overheads included.
	MeasuredRTTms float64 `json:"measured_rtt_ms"`
	Error         string  `json:"error,omitempty"`
}
