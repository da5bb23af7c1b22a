package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Result is one workload on one target.
type Result struct {
	Workload string    `json:"workload"`
	Target   string    `json:"target"`
	Read     *DirStats `json:"read,omitempty"`
	Write    *DirStats `json:"write,omitempty"`
	IOPS     float64   `json:"iops"` // read+write
	MBps     float64   `json:"mb_per_s"`
	// RatioNbdkit is IOPS over nbdkit's IOPS on the same workload in the
	// same run; 0 when there is none.
	RatioNbdkit float64 `json:"ratio_to_nbdkit,omitempty"`
	MaxRSS      int64   `json:"max_rss_bytes,omitempty"` // server RSS during this run
	RawJSON     string  `json:"raw_json,omitempty"`      // relative to the report
	Error       string  `json:"error,omitempty"`
}

// TargetInfo is one target's state in the report.
type TargetInfo struct {
	Name   string   `json:"name"`
	Desc   string   `json:"desc"`
	Status string   `json:"status"` // "ran", "skipped: ...", "failed: ..."
	URI    string   `json:"uri,omitempty"`
	MaxRSS int64    `json:"max_rss_bytes,omitempty"` // over all its fio runs
	Notes  []string `json:"notes,omitempty"`
}

// Check is one issue target evaluated against the results.
type Check struct {
	Name   string  `json:"name"`
	Status string  `json:"status"` // PASS, FAIL or SKIP
	Value  float64 `json:"value,omitempty"`
	Limit  string  `json:"limit"`
	Detail string  `json:"detail,omitempty"`
}

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
}

// Options are the settings of a run, as recorded in the report.
type Options struct {
	Targets     []string `json:"targets"`
	Workloads   []string `json:"workloads"`
	SizeBytes   int64    `json:"size_bytes"`
	RuntimeSec  int      `json:"runtime_s"`
	RampSec     int      `json:"ramp_s"`
	Transport   string   `json:"transport"`
	LocalEngine string   `json:"local_engine"`
	Prealloc    bool     `json:"prealloc"`
}

// fillRatios sets each result's ratio to nbdkit on the same workload.
func fillRatios(rs []Result) {
	base := map[string]float64{}
	for _, r := range rs {
		if r.Target == "nbdkit" && r.Error == "" {
			base[r.Workload] = r.IOPS
		}
	}
	for i := range rs {
		if b := base[rs[i].Workload]; b > 0 && rs[i].Error == "" {
			rs[i].RatioNbdkit = rs[i].IOPS / b
		}
	}
}

// Issue targets for repd, judged against nbdkit measured in the same run.
var checkRatios = []struct {
	workload string
	min      float64
}{
	{"randwrite-4k-qd32", 1.0},
	{"seqwrite-1m-qd8", 1.0},
	{"randread-4k-qd32", 0.9},
}

const rssLimit = 100 << 20

func evalChecks(s *Summary) []Check {
	var cs []Check
	find := func(w, t string) *Result {
		for i := range s.Results {
			if s.Results[i].Workload == w && s.Results[i].Target == t {
				return &s.Results[i]
			}
		}
		return nil
	}
	for _, c := range checkRatios {
		ck := Check{Name: "repd/nbdkit IOPS on " + c.workload, Limit: fmt.Sprintf(">= %.2fx", c.min)}
		repd, nbdkit := find(c.workload, "repd"), find(c.workload, "nbdkit")
		switch {
		case repd == nil || nbdkit == nil:
			ck.Status, ck.Detail = "SKIP", "needs repd and nbdkit in --targets and the workload in --workloads"
		case repd.Error != "":
			ck.Status, ck.Detail = "FAIL", "repd: "+repd.Error
		case nbdkit.Error != "" || nbdkit.IOPS == 0:
			ck.Status, ck.Detail = "SKIP", "nbdkit failed: "+nbdkit.Error
		default:
			ck.Value = repd.IOPS / nbdkit.IOPS
			ck.Status = passFail(ck.Value >= c.min)
			ck.Detail = fmt.Sprintf("%.2fx (repd %.0f, nbdkit %.0f IOPS)", ck.Value, repd.IOPS, nbdkit.IOPS)
		}
		cs = append(cs, ck)
	}
	ck := Check{Name: "repd max RSS", Limit: "< 100 MiB"}
	var ti *TargetInfo
	for i := range s.Targets {
		if s.Targets[i].Name == "repd" {
			ti = &s.Targets[i]
		}
	}
	switch {
	case ti == nil || ti.MaxRSS == 0:
		ck.Status, ck.Detail = "SKIP", "repd did not run"
	default:
		ck.Value = float64(ti.MaxRSS) / (1 << 20)
		ck.Status = passFail(ti.MaxRSS < rssLimit)
		ck.Detail = fmt.Sprintf("%.1f MiB", ck.Value)
	}
	return append(cs, ck)
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// checkLines are the PASS/FAIL lines printed by --check.
func checkLines(cs []Check) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "%s  %s (%s): %s\n", c.Status, c.Name, c.Limit, c.Detail)
	}
	return b.String()
}

// markdown renders the report.
func markdown(s *Summary, workloads []Workload) string {
	var b strings.Builder
	m := s.Machine
	fmt.Fprintf(&b, "# repd benchmark %s\n\n", s.Started.Format("2006-01-02 15:04:05 MST"))
	if s.Interrupted {
		b.WriteString("**Interrupted: partial results.**\n\n")
	}
	fmt.Fprintf(&b, "- machine: %d CPUs, %s, %s RAM, kernel %s, load at start %s\n", m.Nproc, m.CPU, m.MemTotal, m.Kernel, m.LoadAvg)
	fmt.Fprintf(&b, "- tools: %s; %s; %s; %s\n", m.Fio, m.Nbdkit, m.QemuNBD, m.Go)
	if m.Commit != "" {
		fmt.Fprintf(&b, "- repd commit: %s\n", m.Commit)
	}
	o := s.Options
	fill := "sparse"
	if o.Prealloc {
		fill = "fallocated"
	}
	fmt.Fprintf(&b, "- backing: fresh %s %s file per target on %s; NBD over %s\n", fill, fmtSize(o.SizeBytes), m.Filesystem, o.Transport)
	fmt.Fprintf(&b, "- each job: %d s + %d s ramp, targets interleaved per workload; reads after a 1M sequential prefill\n\n", o.RuntimeSec, o.RampSec)

	b.WriteString("| workload | target | IOPS | MB/s | p50 µs | p99 µs | ratio to nbdkit (IOPS) |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|\n")
	desc := map[string]string{}
	for _, w := range workloads {
		desc[w.Name] = w.Desc
	}
	for _, r := range s.Results {
		name := desc[r.Workload]
		if name == "" {
			name = r.Workload
		}
		if r.Error != "" {
			fmt.Fprintf(&b, "| %s | %s | error | | | | |\n", name, r.Target)
			continue
		}
		ratio := ""
		if r.RatioNbdkit > 0 {
			ratio = fmt.Sprintf("%.2f", r.RatioNbdkit)
		}
		p50, p99 := latencies(r)
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.1f | %s | %s | %s |\n", name, r.Target, r.IOPS, r.MBps, p50, p99, ratio)
	}

	b.WriteString("\n| target | status | max server RSS | notes |\n|---|---|---:|---|\n")
	for _, t := range s.Targets {
		rss := ""
		if t.MaxRSS > 0 {
			rss = fmt.Sprintf("%.1f MiB", float64(t.MaxRSS)/(1<<20))
		}
		notes := append([]string{t.Desc}, t.Notes...)
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, mdEscape(t.Status), rss, mdEscape(strings.Join(notes, "; ")))
	}

	var errs []string
	for _, r := range s.Results {
		if r.Error != "" {
			errs = append(errs, fmt.Sprintf("- %s on %s: %s", r.Workload, r.Target, r.Error))
		}
	}
	if len(errs) > 0 {
		b.WriteString("\nErrors:\n\n" + strings.Join(errs, "\n") + "\n")
	}
	if len(s.Checks) > 0 {
		b.WriteString("\nChecks:\n\n```\n" + checkLines(s.Checks) + "```\n")
	}
	return b.String()
}

// latencies formats p50 and p99 completion latency in µs: the one direction
// a workload does, or "r / w" for a mixed one.
func latencies(r Result) (p50, p99 string) {
	active := func(d *DirStats) bool { return d != nil && d.IOs > 0 }
	switch {
	case active(r.Read) && active(r.Write):
		return fmt.Sprintf("r %s / w %s", us(r.Read.P50us), us(r.Write.P50us)),
			fmt.Sprintf("r %s / w %s", us(r.Read.P99us), us(r.Write.P99us))
	case active(r.Read):
		return us(r.Read.P50us), us(r.Read.P99us)
	case active(r.Write):
		return us(r.Write.P50us), us(r.Write.P99us)
	}
	return "", ""
}

func us(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", math.Round(v))
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

func fmtSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
