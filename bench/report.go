package main

import (
	"fmt"
	"math"
	"slices"
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

// Check is one issue target evaluated against the results.
type Check struct {
	Issue  int     `json:"issue"`
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
	Drills      *Drills      `json:"drills,omitempty"`
	LoadEnd     string       `json:"loadavg_at_end"`
	Links       []LinkInfo   `json:"links,omitempty"`
	Charts      []string     `json:"charts,omitempty"` // PNG files next to the report
	ChartNote   string       `json:"chart_note,omitempty"`
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
}

// PhaseOptions is one group's targets and workloads.
type PhaseOptions struct {
	Group     string   `json:"group"`
	Targets   []string `json:"targets"`
	Workloads []string `json:"workloads"`
	// Only: targets limited to some of the workloads.
	Only map[string][]string `json:"only,omitempty"`
}

// fillRatios sets each result's ratio to nbdkit and to repd standalone on
// the same workload.
func fillRatios(rs []Result) {
	nbdkit, alone := map[string]float64{}, map[string]float64{}
	for _, r := range rs {
		if r.Error != "" {
			continue
		}
		switch r.Target {
		case "nbdkit":
			nbdkit[r.Workload] = r.IOPS
		case standalone:
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

// ratioCheck is an IOPS ratio between two targets on one workload, measured
// in the same run.
type ratioCheck struct {
	issue     int
	workload  string
	num, den  string // target names
	min       float64
	numLabel  string
	denLabel  string
	extraNote string
}

var ratioChecks = []ratioCheck{
	{issue: 2, workload: "randwrite-4k-qd32", num: standalone, den: "nbdkit", min: 1.0},
	{issue: 2, workload: "seqwrite-1m-qd8", num: standalone, den: "nbdkit", min: 1.0},
	{issue: 2, workload: "randread-4k-qd32", num: standalone, den: "nbdkit", min: 0.9},
	{issue: 3, workload: "randwrite-4k-qd32", num: "repd-a1", den: standalone, min: 0.9},
	{issue: 3, workload: "randwrite-4k-qd32", num: "repd-c1", den: standalone, min: 0.6},
	{issue: 3, workload: "seqwrite-1m-qd8", num: "repd-c1", den: standalone, min: 0.7},
	{issue: 7, workload: "randwrite-4k-qd32", num: "repd-c1-lan", den: standalone, min: 0.5},
	{issue: 7, workload: "randwrite-4k-qd32", num: "repd-a1-wan", den: standalone, min: 0.85},
	{issue: 5, workload: "randwrite-4k-qd32", num: "repd-a1-zstd", den: "repd-a1", min: 0.95,
		extraNote: "fio's buffers are random (incompressible)"},
}

const rssLimit = 100 << 20

// Issue 7's RTO target.
const rtoLimitMs = 2000

// Issue 5's wire/logical targets by data kind.
var wireLimits = map[string]float64{"csv": 1.0 / 3, "repeat-4k": 0.10, "random": 1.01}

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
	for _, c := range ratioChecks {
		ck := Check{Issue: c.issue, Name: fmt.Sprintf("%s/%s IOPS on %s", c.num, c.den, c.workload), Limit: fmt.Sprintf(">= %.2fx", c.min)}
		num, den := find(c.workload, c.num), find(c.workload, c.den)
		switch {
		case num == nil || den == nil:
			ck.Status, ck.Detail = "SKIP", fmt.Sprintf("needs %s and %s with %s in the run", c.num, c.den, c.workload)
		case num.Error != "":
			ck.Status, ck.Detail = "FAIL", c.num+": "+num.Error
		case den.Error != "" || den.IOPS == 0:
			ck.Status, ck.Detail = "SKIP", c.den+" failed: "+den.Error
		default:
			ck.Value = num.IOPS / den.IOPS
			ck.Status = passFail(ck.Value >= c.min)
			ck.Detail = fmt.Sprintf("%.2fx (%s %.0f, %s %.0f IOPS)", ck.Value, c.num, num.IOPS, c.den, den.IOPS)
			if c.extraNote != "" {
				ck.Detail += "; " + c.extraNote
			}
			if b := littleBound(s, c.num, c.workload); b > 0 {
				ck.Detail += fmt.Sprintf("; protocol C at this queue depth cannot exceed QD/RTT = %.0f IOPS (%.2fx) over the measured RTT", b, b/den.IOPS)
			}
			if b, why := cpuBound(s, c.num, c.den, c.workload); b > 0 {
				ck.Detail += fmt.Sprintf("; on this machine's CPUs it cannot exceed %.2fx: %s", b, why)
			}
		}
		cs = append(cs, ck)
	}
	ck := Check{Issue: 2, Name: "repd max RSS", Limit: "< 100 MiB"}
	var ti *TargetInfo
	for i := range s.Targets {
		if s.Targets[i].Name == standalone {
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
	cs = append(cs, ck)
	return append(cs, drillChecks(s.Drills)...)
}

// drillChecks judge the drills: RTO, RPO and the wire ratios.
func drillChecks(d *Drills) []Check {
	skip := func(issue int, name, limit, why string) Check {
		return Check{Issue: issue, Name: name, Limit: limit, Status: "SKIP", Detail: why}
	}
	if d == nil {
		d = &Drills{}
	}
	var cs []Check
	const rtoName, rtoLimit = "RTO: kill -9 primary until first write on promoted secondary", "< 2 s"
	switch r := d.RTO; {
	case r == nil:
		cs = append(cs, skip(7, rtoName, rtoLimit, "rto drill not run"))
	case r.Error != "":
		cs = append(cs, Check{Issue: 7, Name: rtoName, Limit: rtoLimit, Status: "FAIL", Detail: r.Error})
	default:
		cs = append(cs, Check{Issue: 7, Name: rtoName, Limit: rtoLimit, Value: r.TotalMs, Status: passFail(r.TotalMs < rtoLimitMs),
			Detail: fmt.Sprintf("%.0f ms (detect %.0f, promote %.0f, first write %.0f)", r.TotalMs, r.DetectMs, r.PromoteMs, r.FirstWriteMs)})
	}
	for _, proto := range []string{"C", "A"} {
		name := "RPO under protocol " + proto + " over the WAN link"
		limit := "0 bytes lost"
		if proto == "A" {
			limit = "lost <= journal-size"
		}
		i := slices.IndexFunc(d.RPO, func(r RPOResult) bool { return r.Protocol == proto })
		if i < 0 {
			cs = append(cs, skip(7, name, limit, "rpo drill not run"))
			continue
		}
		r := d.RPO[i]
		ck := Check{Issue: 7, Name: name, Limit: limit, Value: float64(r.LostBytes)}
		switch {
		case r.Error != "":
			ck.Status, ck.Detail = "FAIL", r.Error
		case r.Acked == 0:
			ck.Status, ck.Detail = "FAIL", "no write was acknowledged"
		case proto == "C":
			ck.Status = passFail(r.LostBytes == 0)
		default:
			ck.Status = passFail(r.LostBytes <= r.JournalBound)
		}
		if r.Error == "" {
			ck.Detail = fmt.Sprintf("%d of %d acknowledged writes lost (%s, %.2f s of writes); journal-size %s",
				r.LostWrites, r.Acked, fmtBytes(r.LostBytes), r.LostSeconds, fmtBytes(r.JournalBound))
		}
		cs = append(cs, ck)
	}
	for _, kind := range []string{"csv", "repeat-4k", "random"} {
		lim := wireLimits[kind]
		name := "wire/logical bytes, zstd, " + kind
		limit := fmt.Sprintf("<= %.3f", lim)
		i := slices.IndexFunc(d.Wire, func(w WireResult) bool { return w.Data == kind })
		if i < 0 {
			cs = append(cs, skip(5, name, limit, "wire drill not run"))
			continue
		}
		w := d.Wire[i]
		ck := Check{Issue: 5, Name: name, Limit: limit, Value: w.Ratio}
		if w.Error != "" {
			ck.Status, ck.Detail = "FAIL", w.Error
		} else {
			ck.Status = passFail(w.Ratio <= lim)
			ck.Detail = fmt.Sprintf("%.3f (%s on the wire for %s written)", w.Ratio, fmtBytes(w.Wire), fmtBytes(w.Logical))
		}
		cs = append(cs, ck)
	}
	return append(cs, syncChecks(d.Sync)...)
}

// syncChecks judge the sync drill (issue 4).
func syncChecks(r *SyncResult) []Check {
	const (
		resyncName = "resync of 10% dirty (1 MiB pieces) / fio 1 MiB seq write, same cluster"
		csumsName  = "checksum resync of an identical device: bytes the source sends"
		verifyName = "online verify of the device: rate (no target), differences"
	)
	resyncLimit := fmt.Sprintf(">= %.2fx", syncRatioMin)
	csumsLimit := fmt.Sprintf("< %g%% of the device", 100*csumsSourceMax)
	const verifyLimit = "completes, 0 KiB differ"
	if r == nil {
		return []Check{
			{Issue: 4, Name: resyncName, Limit: resyncLimit, Status: "SKIP", Detail: "sync drill not run"},
			{Issue: 4, Name: csumsName, Limit: csumsLimit, Status: "SKIP", Detail: "sync drill not run"},
			{Issue: 4, Name: verifyName, Limit: verifyLimit, Status: "SKIP", Detail: "sync drill not run"},
		}
	}
	dev := fmtBytes(r.DeviceBytes)
	ck := Check{Issue: 4, Name: resyncName, Limit: resyncLimit}
	i := slices.IndexFunc(r.Resync, func(c SyncCase) bool { return c.Name == "1m" })
	switch {
	case i < 0:
		ck.Status, ck.Detail = "FAIL", "not measured: "+r.Error
	case r.Resync[i].Error != "":
		ck.Status, ck.Detail = "FAIL", r.Resync[i].Error
	case r.RefMeanMBps == 0:
		ck.Status, ck.Detail = "SKIP", "no fio reference: "+r.Error
	default:
		c := r.Resync[i]
		ck.Value = c.Ratio
		ck.Status = passFail(c.Ratio >= syncRatioMin)
		ck.Detail = fmt.Sprintf("%.2fx: %s dirty of %s resynced in %.0f ms, %.0f MB/s; fio %.0f MB/s (mean of %s)",
			c.Ratio, fmtBytes(c.DirtyBytes), dev, c.ResyncMs, c.RateMBps, r.RefMeanMBps, mbpsList(r.RefMBps))
	}
	cs := []Check{ck}
	ck = Check{Issue: 4, Name: csumsName, Limit: csumsLimit}
	switch c := r.CSumsResync; {
	case c == nil:
		ck.Status, ck.Detail = "FAIL", "not measured: "+r.Error
	case c.Error != "":
		ck.Status, ck.Detail = "FAIL", c.Error
	default:
		ck.Value = c.SourcePct
		ck.Status = passFail(float64(c.SourceSent) < csumsSourceMax*float64(r.DeviceBytes))
		ck.Detail = fmt.Sprintf("%s sent (%.3f%% of %s), %s of hashes received (%.2f%%), in %.0f ms (%.0f MB/s)",
			fmtBytes(c.SourceSent), c.SourcePct, dev, fmtBytes(c.HashesRecv), c.HashesPct, c.ResyncMs, c.RateMBps)
	}
	cs = append(cs, ck)
	ck = Check{Issue: 4, Name: verifyName, Limit: verifyLimit}
	switch v := r.Verify; {
	case v == nil:
		ck.Status, ck.Detail = "FAIL", "not measured: "+r.Error
	case v.Error != "":
		ck.Status, ck.Detail = "FAIL", v.Error
	default:
		ck.Value = v.RateMBps
		ck.Status = passFail(v.MismatchKiB == 0)
		ck.Detail = fmt.Sprintf("%.0f MB/s (%s in %.0f ms), %d KiB differ", v.RateMBps, dev, v.Ms, v.MismatchKiB)
	}
	return append(cs, ck)
}

func mbpsList(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(s, " and ")
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
		fmt.Fprintf(&b, "%s  issue %d: %s (%s): %s\n", c.Status, c.Issue, c.Name, c.Limit, c.Detail)
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
	fmt.Fprintf(&b, "- machine: %s, %d CPUs, %s, %s RAM, kernel %s\n", m.Host, m.Nproc, m.CPU, m.MemTotal, m.Kernel)
	fmt.Fprintf(&b, "- load average (1/5/15 min): %s at start, %s at end; the machine is shared, expect noise\n", m.LoadAvg, s.LoadEnd)
	fmt.Fprintf(&b, "- tools: %s; %s; %s; %s\n", m.Fio, m.Nbdkit, m.QemuNBD, m.Go)
	if m.Commit != "" {
		fmt.Fprintf(&b, "- repd commit: %s\n", m.Commit)
	}
	o := s.Options
	fill := "sparse"
	if o.Prealloc {
		fill = "fallocated"
	}
	fmt.Fprintf(&b, "- backing: fresh %s %s file per node on %s; NBD over %s; peers on loopback TCP\n", fill, fmtSize(o.SizeBytes), m.Filesystem, o.Transport)
	cache := "; the page cache kept between jobs"
	if o.DropCache {
		cache = ", then the page cache dropped, so every job starts from a cold cache whatever ran before it"
	}
	fmt.Fprintf(&b, "- each job: %d s + %d s ramp, targets interleaved per workload; reads after a 1M sequential prefill; sync(2) before every job, so no job pays for an earlier job's writeback%s\n", o.RuntimeSec, o.RampSec, cache)
	if o.Repeat > 1 {
		fmt.Fprintf(&b, "- %d rounds of every job (each round runs every target once, in turn, starting one target later than the round before); each figure is the job's median round, ratios are ratios of medians\n", o.Repeat)
	}
	if !s.Finished.IsZero() {
		fmt.Fprintf(&b, "- duration: %s\n", s.Finished.Sub(s.Started).Round(time.Second))
	}
	b.WriteString("\n")

	desc := map[string]string{}
	for _, w := range workloads {
		desc[w.Name] = w.Desc
	}
	group := map[string]string{}
	for _, t := range s.Targets {
		group[t.Name] = t.Meta.Group
	}
	titles := map[string]string{
		groupLoopback:    "## Loopback: every workload, nodes on one machine, no added delay",
		groupCompression: "## Compression (zstd) on loopback (run interleaved with the loopback targets)",
		groupLinks:       "## Links: replication through a link-shaping proxy (faultnet)",
	}
	for _, g := range []string{groupLoopback, groupCompression, groupLinks} {
		var rows []Result
		for _, r := range s.Results {
			if group[r.Target] == g {
				rows = append(rows, r)
			}
		}
		if len(rows) == 0 {
			continue
		}
		b.WriteString(titles[g] + "\n\n")
		if g == groupLinks && len(s.Links) > 0 {
			b.WriteString("| link | shaping | added RTT | measured RTT through the proxy |\n|---|---|---:|---:|\n")
			for _, l := range s.Links {
				m := fmt.Sprintf("%.2f ms", l.MeasuredRTTms)
				if l.Error != "" {
					m = "error: " + mdEscape(l.Error)
				}
				fmt.Fprintf(&b, "| %s | %s | %g ms | %s |\n", l.Name, l.Desc, l.RTTms, m)
			}
			b.WriteString("\n*measured RTT*: median of 25 round trips of a 4 KiB message through a proxy shaped like the link to a loopback echo server. " +
				"What exceeds the added RTT is the proxy's own cost (it runs in the harness, on the same CPUs): read the link results against the measured RTT. " +
				"A link without a bandwidth cap carries a 10 Gbit/s bandwidth-delay product in flight per direction (at least 4 MiB); a capped one is paced to its cap.\n\n")
		}
		b.WriteString("| workload | target | IOPS | MB/s | p50 µs | p99 µs | × standalone | × nbdkit | CPU µs/IO target + fio | CPUs busy | rounds (IOPS) |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, r := range rows {
			name := desc[r.Workload]
			if name == "" {
				name = r.Workload
			}
			if r.Error != "" {
				fmt.Fprintf(&b, "| %s | %s | error | | | | | | | | |\n", name, r.Target)
				continue
			}
			p50, p99 := latencies(r)
			var rounds []string
			for _, x := range r.RoundsIOPS {
				rounds = append(rounds, fmt.Sprintf("%.0f", x))
			}
			cpu, busy := "", ""
			if c := r.CPU; c != nil {
				cpu = fmt.Sprintf("%.1f + %.1f", c.TargetUs, c.FioUs)
				busy = fmt.Sprintf("%.0f %%", 100*c.Util)
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.1f | %s | %s | %s | %s | %s | %s | %s |\n", name, r.Target, r.IOPS, r.MBps, p50, p99, ratio(r.RatioStandalone), ratio(r.RatioNbdkit), cpu, busy, strings.Join(rounds, " "))
		}
		b.WriteString("\n*CPU µs/IO*: CPU time (user + system) of the target's processes (server and its peers) and of fio, from the end of ramp_time to fio's exit, per I/O fio counted; *CPUs busy*: both together over that span, as a share of all CPUs. Near 100 %, the job was bound by this machine's CPUs, and a target's IOPS follow the inverse of its CPU per I/O.\n\n")
	}
	if len(s.Charts) > 0 {
		b.WriteString("Charts: ")
		for i, c := range s.Charts {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "[%s](%s)", c, c)
		}
		b.WriteString("\n\n")
	}
	if s.ChartNote != "" {
		b.WriteString(s.ChartNote + "\n\n")
	}
	drillsMarkdown(&b, s.Drills)

	b.WriteString("## Targets\n\n| target | status | max server RSS | notes |\n|---|---|---:|---|\n")
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
		b.WriteString("\n## Checks\n\n```\n" + checkLines(s.Checks) + "```\n")
	}
	return b.String()
}

func ratio(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", v)
}

// drillsMarkdown renders the drills' results.
func drillsMarkdown(b *strings.Builder, d *Drills) {
	if d == nil {
		return
	}
	if r := d.Floor; r != nil {
		b.WriteString("## Floor drill: the least a peer's copy of a write costs\n\n")
		b.WriteString("A bare loop in the harness, no repd: the write's bytes (behind a 32-byte header) sent over loopback TCP in batches, received in 512 KiB reads, and written with pwrite into a file of the device's size that was written over once before. " +
			"No checksums, acks, journal or goroutine hand-offs: whatever replicates a write to a peer on this machine spends at least this much CPU time per write, on top of what the write costs standalone. " +
			"The issue-3 checks turn it into a bound on the replicated/standalone ratio.\n\n")
		if r.Error != "" {
			fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
		}
		b.WriteString("| 4 KiB random: send + receive + pwrite | of which pwrite | 1 MiB sequential: send + receive + pwrite |\n|---:|---:|---:|\n")
		fmt.Fprintf(b, "| %.2f µs | %.2f µs | %.0f µs |\n\n", r.Us4K, r.PwriteUs4K, r.Us1M)
	}
	if r := d.RTO; r != nil {
		b.WriteString("## RTO drill\n\n")
		fmt.Fprintf(b, "Two nodes, protocol %s, %s; fio 4k randwrite QD32 on the primary (%.0f writes/s), `kill -9` of the primary, "+
			"then on the secondary: wait until it sees the peer gone, `repctl primary`, connect over NBD and write 4 KiB.\n\n", r.Protocol, r.Link, r.LoadIOPS)
		if r.Error != "" {
			fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
		}
		b.WriteString("| failure detection | promote | first write | RTO total |\n|---:|---:|---:|---:|\n")
		fmt.Fprintf(b, "| %.0f ms | %.0f ms | %.0f ms | **%.0f ms** |\n\n", r.DetectMs, r.PromoteMs, r.FirstWriteMs, r.TotalMs)
		fmt.Fprintf(b, "Promotion: %s. Detection here is repd noticing the dead process's TCP connection close (instant on one host); "+
			"a dead *host* is noticed only by the peer timeout, and a cluster manager adds its own decision time.\n\n", r.Promote)
	}
	if len(d.RPO) > 0 {
		b.WriteString("## RPO drill\n\n")
		b.WriteString("Two nodes over the WAN link; 32 writers put numbered 4 KiB blocks (header + incompressible filler) at distinct offsets through the primary and note each acknowledgment; " +
			"at the end the primary's site is lost with its link (the proxy stops forwarding and resets its connections, dropping what it holds, then `kill -9` of the primary) with writes in flight; " +
			"the secondary is promoted and every acknowledged block read back from it. A write counts as lost when its block on the new primary holds an older write. `on-congestion = \"block\"`. " +
			"*lost seconds*: from the oldest lost write's acknowledgment to the kill.\n\n")
		b.WriteString("| protocol | link | writes acked | MB/s | journal before kill | journal-size | lost writes | lost bytes | lost seconds of writes | promotion |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, r := range d.RPO {
			if r.Error != "" {
				fmt.Fprintf(b, "| %s | %s | error: %s | | | | | | | |\n", r.Protocol, r.Link, mdEscape(r.Error))
				continue
			}
			fmt.Fprintf(b, "| %s | %s | %d | %.1f | %s | %s | %d | %s | %.3f | %s |\n", r.Protocol, r.Link, r.Acked, r.WriteMBps,
				fmtBytes(r.JournalAtEnd), fmtBytes(r.JournalBound), r.LostWrites, fmtBytes(r.LostBytes), r.LostSeconds, mdEscape(r.Promote))
		}
		b.WriteString("\n")
	}
	if r := d.Resync; r != nil {
		b.WriteString("## Resync drill\n\n")
		fmt.Fprintf(b, "Two nodes, protocol C, loopback: the secondary stopped (SIGTERM), fio 4k randwrite QD32 capped at 20 MiB/s on the primary for %.0f s (%.1f MB/s measured), the secondary restarted.\n\n", r.OutageSeconds, r.FioWriteMBps)
		if r.Error != "" {
			fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
		}
		b.WriteString("| written | dirty (out of sync) | resynced | on the wire | restart→Connected | Connected→in sync | total | resync rate | dirty/s |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.0f ms | %.0f ms | %.0f ms | %.1f MB/s | %.1f MB/s |\n\n",
			fmtBytes(r.WrittenBytes), fmtBytes(r.DirtyBytes), fmtBytes(r.ResyncedBytes), fmtBytes(r.WireBytes),
			r.ConnectMs, r.ResyncMs, r.TotalMs, r.RateMBps, r.DirtyRateMBps)
	}
	if d.Sync != nil {
		syncMarkdown(b, d.Sync)
	}
	if len(d.Wire) > 0 {
		b.WriteString("## Wire bytes (issue 5)\n\n")
		b.WriteString("Two nodes, protocol C, `compression = \"zstd\"`, loopback; 32 MiB of each kind written through NBD; wire = the primary's `bytes_sent` to the peer (frames, headers, everything), logical = bytes written.\n\n")
		b.WriteString("| data | write size | logical | wire | wire/logical | target | daemon counters |\n|---|---:|---:|---:|---:|---:|---|\n")
		for _, w := range d.Wire {
			if w.Error != "" {
				fmt.Fprintf(b, "| %s | %d | error: %s | | | | |\n", w.Data, w.WriteSize, mdEscape(w.Error))
				continue
			}
			var cs []string
			for k, v := range w.Counters {
				cs = append(cs, fmt.Sprintf("%s %.0f", k, v))
			}
			slices.Sort(cs)
			fmt.Fprintf(b, "| %s | %s | %s | %s | %.3f | ≤ %.2f | %s |\n", w.Data, fmtBytes(int64(w.WriteSize)), fmtBytes(w.Logical), fmtBytes(w.Wire), w.Ratio, wireLimits[w.Data], strings.Join(cs, ", "))
		}
		b.WriteString("\n")
	}
}

// fmtBytes is a byte count for people: 4.0 KiB, 12.3 MiB.
func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
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

// littleBound is the most IOPS a protocol C link target can reach on a
// workload by Little's law: every write waits at least one round trip of
// the link, so IOPS <= queue depth / RTT (0 if it does not apply).
func littleBound(s *Summary, target, workload string) float64 {
	var meta *TargetMeta
	for i := range s.Targets {
		if s.Targets[i].Name == target {
			meta = &s.Targets[i].Meta
		}
	}
	if meta == nil || meta.Protocol != "C" || meta.Link == "" {
		return 0
	}
	qd := 0
	switch workload {
	case "randwrite-4k-qd32":
		qd = 32
	case "randwrite-4k-qd1":
		qd = 1
	default:
		return 0
	}
	for _, l := range s.Links {
		if l.Name == meta.Link && l.MeasuredRTTms > 0 {
			return float64(qd) / (l.MeasuredRTTms / 1000)
		}
	}
	return 0
}

// cpuBound bounds the ratio of a replicated target's IOPS to standalone's
// on one machine, whatever the implementation: each of its writes costs at
// least what a standalone write cost (target and fio, CPU per I/O) plus,
// per peer, the floor drill's cost of sending, receiving and writing the
// bytes once more, and all of it shares these CPUs. Hence its IOPS are at
// most CPUs / (standalone CPU per I/O + peers × floor), against
// standalone's measured IOPS. 0 without the CPU figures or the floor
// drill.
func cpuBound(s *Summary, num, den, workload string) (float64, string) {
	if den != standalone || s.Drills == nil || s.Drills.Floor == nil || s.Drills.Floor.Error != "" || s.Machine.Nproc == 0 {
		return 0, ""
	}
	var meta *TargetMeta
	for i := range s.Targets {
		if s.Targets[i].Name == num {
			meta = &s.Targets[i].Meta
		}
	}
	var sa *Result
	for i := range s.Results {
		if r := &s.Results[i]; r.Workload == workload && r.Target == standalone && r.Error == "" {
			sa = r
		}
	}
	if meta == nil || meta.Kind != "repd" || meta.Peers == 0 || sa == nil || sa.CPU == nil || sa.IOPS == 0 {
		return 0, ""
	}
	fl := s.Drills.Floor.Us4K
	what := "receive and pwrite 4 KiB"
	if workload == "seqwrite-1m-qd8" {
		fl, what = s.Drills.Floor.Us1M, "receive and pwrite 1 MiB"
	} else if !strings.HasPrefix(workload, "randwrite-4k") {
		return 0, ""
	}
	perIO := sa.CPU.Total() + float64(meta.Peers)*fl
	b := float64(s.Machine.Nproc) * 1e6 / perIO / sa.IOPS
	return b, fmt.Sprintf("standalone cost %.1f µs of CPU per write (repd %.1f + fio %.1f) with the %d CPUs %.0f %% busy, "+
		"and each peer adds at least %.1f µs to send, %s (floor drill): at most %d CPUs / %.1f µs = %.0f IOPS",
		sa.CPU.Total(), sa.CPU.TargetUs, sa.CPU.FioUs, s.Machine.Nproc, 100*sa.CPU.Util, fl, what, s.Machine.Nproc, perIO, float64(s.Machine.Nproc)*1e6/perIO)
}

// syncMarkdown renders the sync drill (issue 4).
func syncMarkdown(b *strings.Builder, r *SyncResult) {
	b.WriteString("## Sync drill (issue #4)\n\n")
	dev := fmtBytes(r.DeviceBytes)
	fmt.Fprintf(b, "Two nodes (alpha Primary, bravo), protocol C, default configuration, loopback, a %s device", dev)
	if r.Quick {
		fmt.Fprintf(b, " (**--quick: %s, not the 1 GiB of the issue**)", dev)
	}
	b.WriteString(". *Reference*: fio 1 MiB sequential writes QD8 over the whole device through alpha with bravo connected " +
		"(every write replicated), ending with a flush (`end_fsync`: durable on both nodes, as a finished resync is), once at the start of the drill and once at the end: ")
	if len(r.RefMBps) > 0 {
		fmt.Fprintf(b, "%s MB/s, mean **%.0f MB/s**. ", mbpsList(r.RefMBps), r.RefMeanMBps)
	} else {
		b.WriteString("not measured. ")
	}
	if r.PrefillMBps > 0 {
		fmt.Fprintf(b, "Before them the same job wrote the fresh sparse backing files once (%.0f MB/s, not part of the reference: the resyncs write into written blocks). ", r.PrefillMBps)
	}
	b.WriteString("*Resync*: `repctl disconnect bravo` on alpha, fio randwrite of 10 % of the device in distinct blocks " +
		"(random map, `io_size` = 10 %), `repctl connect bravo`; *time* is from alpha's `SyncSource` event to its `Established` " +
		"(`repctl events`, the daemon's clock; the reconnect before it is not counted, *from connect* in the notes is). " +
		"*rate* is dirty bytes over the time. " +
		"*Checksum resync*: on a second cluster with `csums = true`, after fio wrote the whole device, `repctl invalidate-remote bravo` of identical data: bravo sends a hash of every block, alpha only the blocks that differ; " +
		"rate is the device over the time. *Verify*: `repctl verify bravo`, from `VerifySource` to its end. " +
		"*On the wire*: alpha's `bytes_sent` / `bytes_received` to bravo during the step (frames and headers included). " +
		"Before each fio run and each timed step both nodes' backing files are fsynced, untimed: repd writes through the page cache and a resync makes its data durable " +
		"(a barrier every 8 MiB, an fdatasync on the target), which would otherwise also write back what the fio run before it left dirty. MB/s = 10^6 bytes/s.\n\n")
	if r.Error != "" {
		fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
	}
	b.WriteString("| case | dirty | time | rate MB/s | × fio 1 MiB seq write | on the wire (alpha sent / received) | notes |\n")
	b.WriteString("|---|---:|---:|---:|---:|---|---|\n")
	ref := func(mbps float64) string {
		if r.RefMeanMBps == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", mbps/r.RefMeanMBps)
	}
	timing := func(t string) string {
		if t == "events" || t == "" {
			return ""
		}
		return "; timed " + t
	}
	for _, c := range r.Resync {
		name := fmt.Sprintf("resync, 10%% dirty in %s pieces", fmtBytes(c.WriteSize))
		if c.Error != "" {
			fmt.Fprintf(b, "| %s | | | | | | error: %s |\n", name, mdEscape(c.Error))
			continue
		}
		wire := fmt.Sprintf("%s / %s", fmtBytes(c.WireSent), fmtBytes(c.WireReceived))
		if c.DirtyBytes > 0 {
			wire += fmt.Sprintf(" (sent %.2f× dirty)", float64(c.WireSent)/float64(c.DirtyBytes))
		}
		fmt.Fprintf(b, "| %s | %s | %.0f ms | %.0f | **%s** | %s | from connect %.0f ms%s |\n", name, fmtBytes(c.DirtyBytes),
			c.ResyncMs, c.RateMBps, ref(c.RateMBps), wire, c.ConnectMs, timing(c.Timing))
	}
	if c := r.CSumsResync; c != nil {
		const name = "checksum resync, identical data"
		if c.Error != "" {
			fmt.Fprintf(b, "| %s | | | | | | error: %s |\n", name, mdEscape(c.Error))
		} else {
			fmt.Fprintf(b, "| %s | %s (all marked) | %.0f ms | %.0f | %s | source sent **%s (%.3f%% of the device)** / hashes received %s (%.2f%%) | %s found equal%s |\n",
				name, dev, c.ResyncMs, c.RateMBps, ref(c.RateMBps), fmtBytes(c.SourceSent), c.SourcePct, fmtBytes(c.HashesRecv), c.HashesPct,
				fmtBytes(c.EqualBytes), timing(c.Timing))
		}
	}
	if v := r.Verify; v != nil {
		const name = "online verify"
		if v.Error != "" {
			fmt.Fprintf(b, "| %s | | | | | | error: %s |\n", name, mdEscape(v.Error))
		} else {
			fmt.Fprintf(b, "| %s | %s compared | %.0f ms | %.0f | %s | %s / %s | %d KiB differ%s |\n",
				name, dev, v.Ms, v.RateMBps, ref(v.RateMBps), fmtBytes(v.WireSent), fmtBytes(v.WireRecv), v.MismatchKiB, timing(v.Timing))
		}
	}
	fmt.Fprintf(b, "\nTargets (`--check`): resync in 1 MiB pieces ≥ %.1f× the reference; checksum resync source bytes < %g%% of the device; verify: rate reported, no target.\n\n",
		syncRatioMin, 100*csumsSourceMax)
}
