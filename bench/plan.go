package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/repd/repd/bench/internal/fio"
	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/procfs"
	"github.com/repd/repd/bench/internal/render"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/bench/internal/units"
)

// phase is one group of targets and the workloads they run. Phases run one
// after the other; within one, each workload runs on every target before the
// next workload starts, so noise hits all targets of a workload alike.
type phase struct {
	group     string
	targets   []target.Target
	workloads []Workload
	// only restricts a target (by name) to some of the workloads; a target
	// not in it runs them all.
	only map[string]map[string]bool
}

// runs reports whether target t runs workload w in this phase.
func (ph phase) runs(t, w string) bool {
	m, ok := ph.only[t]
	return !ok || m[w]
}

// The default run's workloads on the compression and link targets (all
// workloads on loopback).
var (
	compressionWorkloads = []string{"randwrite-4k-qd32", "seqwrite-1m-qd8"}
	linkWorkloads        = []string{"randwrite-4k-qd32", "randwrite-4k-qd1"}
)

// buildPlan turns --targets, --workloads and --links into phases.
func buildPlan(f flags) ([]phase, error) {
	all := target.All()
	var targets []target.Target
	switch f.targets {
	case "default", "":
		for _, t := range all {
			if t.Meta.Default {
				targets = append(targets, t)
			}
		}
	case "all":
		targets = all
	default:
		seen := map[string]bool{}
		for _, name := range strings.Split(f.targets, ",") {
			name = strings.TrimSpace(name)
			if name == "" || seen[name] {
				continue
			}
			seen[name] = true
			i := slices.IndexFunc(all, func(t target.Target) bool { return t.Name == name })
			if i < 0 {
				return nil, fmt.Errorf("unknown target %q (known: %s)", name, targetNames())
			}
			targets = append(targets, all[i])
		}
	}
	links := map[string]bool{}
	if f.links != "none" {
		for _, name := range strings.Split(f.links, ",") {
			name = strings.TrimSpace(name)
			if _, ok := link.Lookup(name); !ok {
				return nil, fmt.Errorf("--links: unknown link %q (known: %s)", name, link.Names())
			}
			links[name] = true
		}
	}
	targets = slices.DeleteFunc(targets, func(t target.Target) bool { return t.Meta.Link != "" && !links[t.Meta.Link] })

	explicit := f.workloads != "default" && f.workloads != ""
	wl := f.workloads
	if !explicit {
		wl = "all"
	}
	selected, err := selectWorkloads(wl)
	if err != nil {
		return nil, err
	}
	// The compression targets run in the loopback phase, interleaved with
	// their uncompressed twins (the zstd/none ratio is a check), on the
	// compression workloads only unless workloads were named.
	var plan []phase
	for _, g := range []string{result.GroupLoopback, result.GroupLinks} {
		ph := phase{group: g, workloads: selected, only: map[string]map[string]bool{}}
		if !explicit && g == result.GroupLinks {
			ph.workloads, _ = selectWorkloads(strings.Join(linkWorkloads, ","))
		}
		for _, t := range targets {
			switch {
			case t.Meta.Group == g:
			case g == result.GroupLoopback && t.Meta.Group == result.GroupCompression:
				if !explicit {
					ph.only[t.Name] = map[string]bool{}
					for _, w := range compressionWorkloads {
						ph.only[t.Name][w] = true
					}
				}
			default:
				continue
			}
			ph.targets = append(ph.targets, t)
		}
		if len(ph.targets) > 0 && len(ph.workloads) > 0 {
			plan = append(plan, ph)
		}
	}
	return plan, nil
}

// matrix runs phases and collects their results into s.
type matrix struct {
	s            *result.Summary
	env          target.Env
	scratch, out string
	jobDir       string
	runtime      time.Duration
	repeat       int  // rounds per job
	dropCache    bool // drop the page cache before every job
	precondition bool // write the whole target before every write job
	total, n     int  // jobs in all phases, jobs started
}

type running struct {
	t       target.Target
	ep      *target.Endpoint
	info    *result.TargetInfo
	prefill bool  // prefilled already
	dead    error // the server died; skip its remaining runs
	maxRSS  int64
}

// runPhase starts the phase's targets, runs its workloads interleaved and
// stops the targets. It returns an error only when interrupted or when the
// scratch directory cannot be written.
func (m *matrix) runPhase(ctx context.Context, ph phase) error {
	s := m.s
	var live []*running
	defer func() {
		for _, r := range live {
			r.ep.Stop()
			r.info.MaxRSS = r.maxRSS
			if r.dead != nil {
				r.info.Status = "died: " + r.dead.Error()
			}
		}
	}()
	logf("== %s: %d targets", ph.group, len(ph.targets))
	for _, t := range ph.targets {
		s.Targets = append(s.Targets, result.TargetInfo{Name: t.Name, Desc: t.Desc, Meta: t.Meta})
	}
	infos := s.Targets[len(s.Targets)-len(ph.targets):]
	for i, t := range ph.targets {
		info := &infos[i]
		env := m.env
		env.Dir = filepath.Join(m.scratch, t.Name)
		if err := os.MkdirAll(env.Dir, 0o755); err != nil {
			return err
		}
		logf("starting %s", t.Name)
		ep, err := t.Start(ctx, env)
		if ctx.Err() != nil {
			if ep != nil {
				ep.Stop()
			}
			return errors.New("interrupted")
		}
		if err != nil {
			if errors.Is(err, target.ErrSkip) {
				info.Status = "skipped: " + strings.TrimPrefix(err.Error(), target.ErrSkip.Error()+": ")
			} else {
				info.Status = "failed to start: " + err.Error()
			}
			logf("%s: %s", t.Name, info.Status)
			continue
		}
		info.Status, info.URI, info.Notes = "ran", ep.URI, ep.Notes
		r := &running{t: t, ep: ep, info: info}
		live = append(live, r)
		if ep.URI != "" {
			if err := probeWrite(ctx, ep, filepath.Join(m.scratch, t.Name+"-probe.json")); err != nil {
				note := "WRITES REFUSED: " + err.Error()
				info.Notes = append(info.Notes, note)
				logf("%s: %s", t.Name, note)
			}
		}
		for _, n := range info.Notes {
			logf("%s: %s", t.Name, n)
		}
	}
	for _, w := range ph.workloads {
		first := len(m.s.Results)
		for round := range max(m.repeat, 1) {
			// Each round starts one target later, so that no target
			// always runs right after the same other one.
			for i := range live {
				r := live[(i+round)%len(live)]
				if ctx.Err() != nil {
					return errors.New("interrupted")
				}
				if !ph.runs(r.t.Name, w.Name) {
					continue
				}
				m.n++
				m.runOne(ctx, w, r, round)
			}
		}
		m.s.Results = append(m.s.Results[:first], medianRounds(m.s.Results[first:])...)
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}

// runOne runs workload w on target r (after a prefill, if w reads).
func (m *matrix) runOne(ctx context.Context, w Workload, r *running, round int) {
	s, size := m.s, m.env.Size
	res := result.Result{Workload: w.Name, Target: r.t.Name}
	defer func() { s.Results = append(s.Results, res) }()
	if r.dead == nil {
		r.dead = r.ep.Alive()
	}
	if r.dead != nil {
		res.Error = "target not running: " + r.dead.Error()
		return
	}
	if w.NeedsData && !r.prefill {
		logf("[%d/%d] prefilling %s (%s, 1M sequential)", m.n, m.total, r.t.Name, units.Size(size))
		stopRSS := procfs.SampleRSS(r.ep.PIDs(), rssInterval)
		_, err := fio.Job{
			Args:    r.ep.FioArgs,
			JobFile: filepath.Join(m.jobDir, prefillJob),
			Output:  filepath.Join(m.out, "raw", "prefill--"+r.t.Name+".json"),
			Timeout: 30 * time.Minute,
		}.Run(ctx)
		r.maxRSS = max(r.maxRSS, stopRSS())
		if err != nil {
			res.Error = "prefill: " + err.Error()
			logf("%s: %s", r.t.Name, res.Error)
			return
		}
		r.prefill = true
	}
	raw := filepath.Join("raw", w.Name+"--"+r.t.Name+".json")
	if m.repeat > 1 {
		raw = filepath.Join("raw", fmt.Sprintf("%s--%s--round%d.json", w.Name, r.t.Name, round+1))
	}
	// The earlier job's dirty pages are written back now, not by the
	// kernel's flusher while this job runs (it would take CPU from
	// whichever target happened to come next). Then the page cache goes:
	// what an earlier job left in it changes what this one costs (after
	// 4 KiB random writes, the file's cache is made of 4 KiB pages, and a
	// 1 MiB pwrite into them costs the kernel about three times what it
	// costs on a cold cache), so every job starts from the same state. A
	// write job then gets its precondition pass (preconditionRun), which
	// refills the cache in the job's own layout.
	syncAll()
	if m.dropCache {
		if err := dropPageCache(); err != nil {
			logf("drop the page cache: %v", err)
		}
	}
	if m.preconditions(w, r.t) {
		if err := m.preconditionRun(ctx, w, r); err != nil {
			res.Error = "precondition: " + err.Error()
			logf("%s: %s", r.t.Name, res.Error)
			return
		}
	}
	stopRSS := procfs.SampleRSS(r.ep.PIDs(), rssInterval)
	type sample struct {
		cpu time.Duration
		at  time.Time
	}
	atRamp := make(chan sample, 1)
	fr, err := fio.Job{
		Args:    r.ep.FioArgs,
		JobFile: filepath.Join(m.jobDir, w.Name+".fio"),
		Output:  filepath.Join(m.out, raw),
		Runtime: m.runtime,
		Timeout: m.runtime + fio.RampTime + 2*time.Minute,
		AtRamp:  func() { atRamp <- sample{procfs.PIDsCPU(r.ep.PIDs()), time.Now()} },
	}.Run(ctx)
	var cpuEnd sample
	if len(r.ep.PIDs()) > 0 {
		cpuEnd = sample{procfs.PIDsCPU(r.ep.PIDs()), time.Now()}
	}
	res.MaxRSS = stopRSS()
	r.maxRSS = max(r.maxRSS, res.MaxRSS)
	res.RawJSON = raw
	if ctx.Err() != nil {
		res.Error = "interrupted"
		return
	}
	if err != nil {
		res.Error = err.Error()
		if dead := r.ep.Alive(); dead != nil {
			r.dead = dead
			res.Error += "; " + dead.Error()
		}
		logf("[%d/%d] %s on %s: %s", m.n, m.total, w.Name, r.t.Name, res.Error)
		return
	}
	res.IOPS, res.MBps = fr.Total()
	select {
	case s := <-atRamp:
		// The target's CPU from the end of the ramp to fio's exit; fio's
		// own over the same span.
		if ios := fr.Read.IOs + fr.Write.IOs; ios > 0 && fr.CPU > 0 {
			window := cpuEnd.at.Sub(s.at)
			tgt := cpuEnd.cpu - s.cpu
			if cpuEnd.at.IsZero() {
				tgt, window = 0, time.Duration(m.runtime) // no PIDs (local: fio alone)
			}
			res.CPU = &result.CPUStats{
				TargetUs: float64(tgt.Microseconds()) / float64(ios),
				FioUs:    float64(fr.CPU.Microseconds()) / float64(ios),
				Util:     float64(tgt+fr.CPU) / float64(window) / float64(runtime.NumCPU()),
			}
		}
	default:
	}
	if fr.Read.IOs > 0 {
		res.Read = &fr.Read
	}
	if fr.Write.IOs > 0 {
		res.Write = &fr.Write
	}
	if fr.Flush.N > 0 {
		res.Flush = &fr.Flush
	}
	p50, p99 := render.Latencies(res)
	logf("[%d/%d] %-22s %-18s %9.0f IOPS %8.1f MB/s  p50 %s µs  p99 %s µs",
		m.n, m.total, w.Name, r.t.Name, res.IOPS, res.MBps, p50, p99)
}

// medianRounds folds the rounds of each job (results of one workload, in
// run order) into one result per target: the round with the median IOPS
// (the lower middle one of an even count), with every round's IOPS in
// RoundsIOPS. A failed round is reported instead if there is one.
func medianRounds(rs []result.Result) []result.Result {
	var order []string
	by := map[string][]result.Result{}
	for _, r := range rs {
		if _, ok := by[r.Target]; !ok {
			order = append(order, r.Target)
		}
		by[r.Target] = append(by[r.Target], r)
	}
	out := make([]result.Result, 0, len(order))
	for _, t := range order {
		runs := by[t]
		if len(runs) == 1 {
			out = append(out, runs[0])
			continue
		}
		var iops []float64
		var failed *result.Result
		for i := range runs {
			iops = append(iops, runs[i].IOPS)
			if runs[i].Error != "" && failed == nil {
				failed = &runs[i]
			}
		}
		if failed != nil {
			f := *failed
			f.RoundsIOPS = iops
			out = append(out, f)
			continue
		}
		sorted := slices.Clone(runs)
		slices.SortStableFunc(sorted, func(a, b result.Result) int { return cmp.Compare(a.IOPS, b.IOPS) })
		med := sorted[(len(sorted)-1)/2]
		med.RoundsIOPS = iops
		for _, r := range runs {
			med.MaxRSS = max(med.MaxRSS, r.MaxRSS)
		}
		out = append(out, med)
	}
	return out
}

// preconditions reports whether w runs on t after a precondition pass: a
// write workload, unless t is behind a shaped link (one pass over 512 MiB
// through lan-100mbit would take 43 s, through wan under protocol C
// longer).
func (m *matrix) preconditions(w Workload, t target.Target) bool {
	return m.precondition && w.BS != "" && t.Meta.Link == ""
}

// preconditionRun writes the whole of r once, sequentially, with w's
// block size (preconditionJob), then writes its dirty pages back: w then
// runs in its steady state. From a dropped cache, a job's first writes to
// each block also allocate its page-cache page on every node, and on a
// VM that reports the memory its guest frees to the host (virtio-balloon
// free page reporting), the host maps such memory again when it is
// touched, at far more than the write's cost (here: 1 MiB written into a
// dropped cache took 1.2-1.5 ms, into a cached one 70-90 µs). A slower target, or
// one with more nodes, spends more of its measured window in that first
// pass than standalone, so the ratio measured the machine's memory, not
// the target.
func (m *matrix) preconditionRun(ctx context.Context, w Workload, r *running) error {
	stopRSS := procfs.SampleRSS(r.ep.PIDs(), rssInterval)
	args := append(slices.Clone(r.ep.FioArgs), "--bs="+w.BS, fmt.Sprintf("--iodepth=%d", max(w.QD, 1)))
	_, err := fio.Job{
		Args:    args,
		JobFile: filepath.Join(m.jobDir, preconditionJob),
		Output:  filepath.Join(m.scratch, "precondition--"+r.t.Name+".json"),
		Timeout: 30 * time.Minute,
	}.Run(ctx)
	r.maxRSS = max(r.maxRSS, stopRSS())
	if err != nil {
		return err
	}
	syncAll()
	return nil
}

// syncAll writes back every filesystem's dirty data (sync(2)).
func syncAll() {
	t := time.Now()
	syscall.Sync()
	if d := time.Since(t); d > 5*time.Second {
		logf("sync before the job took %s", d.Round(time.Millisecond))
	}
}

// dropPageCache drops the clean pages of the page cache
// (/proc/sys/vm/drop_caches, root only); after sync(2) that is all of it.
func dropPageCache() error {
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0)
}
