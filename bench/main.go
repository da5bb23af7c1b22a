// Command bench measures what replication costs with fio: repd standalone,
// under protocol A and C with one and two peers, with and without zstd, over
// loopback and over shaped links (faultnet proxies adding delay, jitter and a
// bandwidth cap), next to nbdkit and the bare backing file, side by side in
// one run; then it drills failover (RTO), loss under asynchronous
// replication (RPO), resync after an outage, bytes on the wire, and resync,
// checksum resync and verify rates (sync), and writes a Markdown report,
// JSON and gnuplot charts.
//
//	go run ./bench                       # the default run, ~10 minutes
//	go run ./bench --check               # PASS/FAIL per issue target
//	go run ./bench --quick               # 3 s per job, 256 MiB: a smoke run
//	go run ./bench --long                # everything on everything
//
// Each workload (a job file in bench/jobs) runs on every target of a group
// before the next workload starts, so that noise on a shared machine hits
// all targets alike. Results go to bench/out/<timestamp>/: report.md,
// summary.json, charts/, the raw fio JSON of every run and the servers'
// logs. See bench/README.md.
//
// This package is the command: its flags, the plan of a run and the loop
// that runs it. The rest is in bench/internal: result (summary.json's
// schema), check (the targets --check judges), render (report.md and the
// charts), target (what fio measures), drill, fio, link (shaped links),
// proc, procfs and sysinfo; the repd clusters are the harness package's.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/repd/repd/bench/internal/check"
	"github.com/repd/repd/bench/internal/drill"
	"github.com/repd/repd/bench/internal/fio"
	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/render"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/sysinfo"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/bench/internal/units"
	"github.com/repd/repd/harness"
)

// rssInterval is how often a server's RSS is sampled during a job.
const rssInterval = 200 * time.Millisecond

type flags struct {
	targets, workloads string
	links, drills      string
	drillSeconds       int
	size               string
	runtime            string
	long, quick        bool
	dir, out           string
	transport          string
	localEngine        string
	prealloc           bool
	keepCache          bool
	precondition       bool
	check, strict      bool
	keep               bool
	rereport           string
	repeat             int
}

func main() {
	drill.FloorPeerMain() // the floor drill's peer process, if this is one
	os.Exit(run(os.Args[1:], os.Stdout))
}

func run(args []string, stdout io.Writer) int {
	var f flags
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&f.targets, "targets", "default", "comma list of targets, or default, or all, or none (the drills alone): "+targetNames())
	fs.StringVar(&f.workloads, "workloads", "default", "comma list of workloads (job files in bench/jobs without .fio), or all; default: all on loopback, a few on the compression and link targets")
	fs.StringVar(&f.links, "links", link.Names(), "link profiles for the link targets, or none")
	fs.StringVar(&f.drills, "drills", strings.Join(drill.Names, ","), "drills to run after the matrix, or none: "+strings.Join(drill.Names, ","))
	fs.IntVar(&f.drillSeconds, "drill-seconds", 5, "seconds of writes in the RPO and resync drills")
	fs.StringVar(&f.size, "size", "512MiB", "backing file size per target (e.g. 256MiB, 1GiB)")
	fs.StringVar(&f.runtime, "runtime", "5s", "measured time per job, after a 2 s ramp")
	fs.BoolVar(&f.long, "long", false, "every workload on every target (and qemu-nbd), 30 s per job, 1 GiB")
	fs.BoolVar(&f.quick, "quick", false, "smoke run: 3 s per job, 256 MiB (unless --runtime/--size are given)")
	fs.StringVar(&f.dir, "dir", os.TempDir(), "parent of the scratch directory holding the backing files (one filesystem for all targets)")
	fs.StringVar(&f.out, "out", "", "output parent directory (default bench/out in the module root)")
	fs.StringVar(&f.transport, "transport", "unix", "NBD transport for all NBD targets: unix or tcp (loopback)")
	fs.StringVar(&f.localEngine, "local-engine", "libaio", "fio ioengine of the local target: libaio or io_uring")
	fs.BoolVar(&f.prealloc, "prealloc", false, "fallocate backing files instead of creating them sparse")
	fs.BoolVar(&f.keepCache, "keep-cache", false, "do not drop the page cache before every job (dropping it needs root)")
	fs.BoolVar(&f.precondition, "precondition", true, "write the whole target once (the job's block size) before every run of a write job; --precondition=false measures from the first write")
	fs.BoolVar(&f.check, "check", false, "evaluate repd's issue targets and print PASS/FAIL lines")
	fs.BoolVar(&f.strict, "strict", false, "with --check: exit 1 unless every check passes (SKIP fails too)")
	fs.IntVar(&f.repeat, "repeat", 3, "rounds of every job, targets interleaved in each round; the report gives each job's median round (this machine's noise is large: compare medians)")
	fs.BoolVar(&f.keep, "keep", false, "keep the scratch directory (backing files, sockets, logs)")
	fs.StringVar(&f.rereport, "rereport", "", "redraw the charts and rewrite report.md of an output directory from its summary.json, and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if f.quick {
		if !set["runtime"] {
			f.runtime = "3s"
		}
		if !set["size"] {
			f.size = "256MiB"
		}
	}
	if f.long {
		if !set["runtime"] {
			f.runtime = "30s"
		}
		if !set["size"] {
			f.size = "1GiB"
		}
		if !set["workloads"] {
			f.workloads = "all"
		}
		if !set["targets"] {
			f.targets = "all"
		}
		if !set["drill-seconds"] {
			f.drillSeconds = 10
		}
	}
	if f.strict {
		f.check = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if f.rereport != "" {
		if err := rereport(ctx, f.rereport, stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		return 0
	}
	code, err := bench(ctx, f, stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	return code
}

func targetNames() string {
	var names []string
	for _, t := range target.All() {
		names = append(names, t.Name)
	}
	return strings.Join(names, ",")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// bench runs the whole benchmark and returns the exit code.
func bench(ctx context.Context, f flags, stdout io.Writer) (int, error) {
	size, err := parseSize(f.size)
	if err != nil {
		return 2, fmt.Errorf("--size: %w", err)
	}
	if size < 16<<20 || size%(1<<20) != 0 {
		return 2, fmt.Errorf("--size %s: want a multiple of 1 MiB, at least 16 MiB", f.size)
	}
	runtime, err := parseDuration(f.runtime)
	if err != nil || runtime < time.Second {
		return 2, fmt.Errorf("--runtime %q: want a duration of at least 1s (10s, 1m)", f.runtime)
	}
	var plan []phase // --targets none: the drills alone
	if f.targets != "none" {
		if plan, err = buildPlan(f); err != nil {
			return 2, err
		}
	}
	drills, err := drill.Select(f.drills)
	if err != nil {
		return 2, err
	}
	if f.repeat < 1 || f.repeat > 99 {
		return 2, fmt.Errorf("--repeat %d: want 1 to 99 rounds", f.repeat)
	}
	if f.localEngine != "libaio" && f.localEngine != "io_uring" {
		return 2, fmt.Errorf("--local-engine %q: want libaio or io_uring", f.localEngine)
	}
	if f.transport != "unix" && f.transport != "tcp" {
		return 2, fmt.Errorf("--transport %q: want unix or tcp", f.transport)
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return 1, fmt.Errorf("%w: fio not installed", target.ErrSkip)
	}

	repo, rootErr := harness.ModuleRoot()
	outParent := f.out
	if outParent == "" {
		if rootErr != nil {
			return 2, fmt.Errorf("%v: pass --out", rootErr)
		}
		outParent = filepath.Join(repo, "bench", "out")
	}
	started := time.Now()
	out, err := newOutDir(outParent, started.Format("20060102-150405"))
	if err != nil {
		return 1, err
	}
	if err := os.Mkdir(filepath.Join(out, "raw"), 0o755); err != nil {
		return 1, err
	}
	scratch, err := os.MkdirTemp(f.dir, "repd-bench-")
	if err != nil {
		return 1, err
	}
	defer func() {
		if f.keep {
			logf("kept scratch directory %s", scratch)
			return
		}
		os.RemoveAll(scratch)
	}()
	jobDir := filepath.Join(scratch, "jobs")
	if err := writeJobs(jobDir); err != nil {
		return 1, err
	}
	if err := writeJobs(filepath.Join(out, "jobs")); err != nil {
		return 1, err
	}

	dropCache := false
	if !f.keepCache {
		if err := dropPageCache(); err != nil {
			logf("the page cache is kept between jobs (dropping it needs root): %v", err)
		} else {
			dropCache = true
		}
	}
	s := &result.Summary{
		Started: started,
		Machine: sysinfo.Machine(repo, scratch),
		Options: result.Options{
			SizeBytes:    size,
			RuntimeSec:   int(runtime.Seconds()),
			RampSec:      int(fio.RampTime.Seconds()),
			Repeat:       f.repeat,
			Transport:    f.transport,
			LocalEngine:  f.localEngine,
			Prealloc:     f.prealloc,
			DropCache:    dropCache,
			Precondition: f.precondition,
		},
	}
	for _, ph := range plan {
		var ts, ws []string
		for _, t := range ph.targets {
			ts = append(ts, t.Name)
		}
		for _, w := range ph.workloads {
			ws = append(ws, w.Name)
		}
		po := result.PhaseOptions{Group: ph.group, Targets: ts, Workloads: ws}
		for t, m := range ph.only {
			if po.Only == nil {
				po.Only = map[string][]string{}
			}
			for w := range m {
				po.Only[t] = append(po.Only[t], w)
			}
			slices.Sort(po.Only[t])
		}
		s.Options.Phases = append(s.Options.Phases, po)
		logf("%s: %d workloads x %d targets", ph.group, len(ws), len(ts))
	}
	s.Options.Drills = drills
	logf("output in %s; scratch in %s", out, scratch)
	logf("%s + %s ramp per job, %s per target; drills: %s", runtime, fio.RampTime, units.Size(size), strings.Join(drills, ","))

	env := target.Env{
		Size: size, Prealloc: f.prealloc, Transport: f.transport,
		LocalEngine: f.localEngine, Logf: logf,
	}
	if usesRepd(plan, drills) {
		logf("building ./cmd/repd, ./cmd/repctl and ./cmd/linkproxy")
		if _, err := harness.Binaries(); err != nil {
			logf("repd does not build; its targets and drills are skipped: %v", err)
		}
		defer harness.RemoveBinaries()
	}
	defer copyLogs(scratch, filepath.Join(out, "logs"))
	m := &matrix{s: s, env: env, scratch: scratch, out: out, jobDir: jobDir, runtime: runtime, repeat: f.repeat, dropCache: dropCache, precondition: f.precondition}
	for _, ph := range plan {
		for _, t := range ph.targets {
			for _, w := range ph.workloads {
				if ph.runs(t.Name, w.Name) {
					m.total += f.repeat
				}
			}
		}
	}
	var links []string
	for _, ph := range plan {
		for _, t := range ph.targets {
			if t.Meta.Link != "" && !slices.Contains(links, t.Meta.Link) {
				links = append(links, t.Meta.Link)
			}
		}
	}
	if slices.Contains(drills, "rpo") && !slices.Contains(links, "wan") {
		links = append(links, "wan")
	}
	s.Links = link.Measure(ctx, links)
	for _, l := range s.Links {
		logf("link %s: %g ms added RTT, %.2f ms measured through the proxy %s", l.Name, l.RTTms, l.MeasuredRTTms, l.Error)
	}
	interrupted := false
	for _, ph := range plan {
		if err := m.runPhase(ctx, ph); err != nil {
			if ctx.Err() != nil {
				interrupted = true
				break
			}
			return 1, err
		}
	}
	if !interrupted && len(drills) > 0 {
		env.Dir = filepath.Join(scratch, "drills")
		s.Drills = drill.Run(ctx, env, drills, f.drillSeconds, f.quick)
		interrupted = ctx.Err() != nil
	}
	s.LoadEnd = sysinfo.LoadAvg()

	s.Finished = time.Now()
	s.Interrupted = interrupted
	result.FillRatios(s.Results)
	if f.check {
		s.Checks = check.Eval(s)
	}
	s.Charts, s.ChartNote = render.DrawCharts(ctx, s, out)
	report := render.Markdown(s, workloadDescs())
	if err := os.WriteFile(filepath.Join(out, "report.md"), []byte(report), 0o644); err != nil {
		return 1, err
	}
	js, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return 1, err
	}
	if err := os.WriteFile(filepath.Join(out, "summary.json"), append(js, '\n'), 0o644); err != nil {
		return 1, err
	}
	fmt.Fprint(stdout, "\n"+report)
	fmt.Fprintf(stdout, "\nreport: %s\n", filepath.Join(out, "report.md"))
	if interrupted {
		return 130, errors.New("interrupted")
	}
	if f.strict {
		for _, c := range s.Checks {
			if c.Status != "PASS" {
				return 1, errors.New("--strict: not every check passed")
			}
		}
	}
	return 0, nil
}

// probeWrite writes 64 KiB at the start of an NBD target, to tell "the
// server refuses writes" (a Secondary) apart from slow or failing runs.
func probeWrite(ctx context.Context, ep *target.Endpoint, output string) error {
	_, err := fio.Job{
		Args:    append(append([]string{}, ep.FioArgs...), "--name=probe", "--rw=write", "--bs=4k", "--size=64k"),
		Output:  output,
		Timeout: time.Minute,
	}.Run(ctx)
	return err
}

// usesRepd reports whether a run starts repd: a repd target or a drill
// other than the floor drill.
func usesRepd(plan []phase, drills []string) bool {
	for _, ph := range plan {
		for _, t := range ph.targets {
			if t.Meta.Kind == "repd" {
				return true
			}
		}
	}
	return slices.ContainsFunc(drills, func(d string) bool { return d != "floor" })
}

// newOutDir creates parent/name, or parent/name-2, ... if that exists.
func newOutDir(parent, name string) (string, error) {
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	for i := 1; ; i++ {
		dir := filepath.Join(parent, name)
		if i > 1 {
			dir += "-" + strconv.Itoa(i)
		}
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, os.ErrExist) || i > 100 {
			return "", err
		}
	}
}

// copyLogs copies the servers' logs and resource files from the scratch
// directory into the output directory.
func copyLogs(scratch, dst string) {
	_ = filepath.WalkDir(scratch, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if ext := filepath.Ext(p); ext != ".log" && ext != ".toml" {
			return nil
		}
		rel, _ := filepath.Rel(scratch, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		to := filepath.Join(dst, strings.ReplaceAll(rel, string(filepath.Separator), "--"))
		if os.MkdirAll(dst, 0o755) == nil {
			_ = os.WriteFile(to, b, 0o644)
		}
		return nil
	})
}

// parseSize parses "1GiB", "256MiB", "512M", "1G", "4096".
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{
		{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"k", 1 << 10},
	} {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: want a size such as 256MiB or 1GiB", s)
	}
	return n * mult, nil
}

// parseDuration takes a Go duration or whole seconds.
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(s)
}

// rereport redraws the charts and rewrites report.md in dir from its
// summary.json (after a change to the report or the charts).
func rereport(ctx context.Context, dir string, stdout io.Writer) error {
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	if err != nil {
		return err
	}
	var s result.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if len(s.Checks) > 0 {
		s.Checks = check.Eval(&s)
	}
	s.Charts, s.ChartNote = render.DrawCharts(ctx, &s, dir)
	js, err := json.MarshalIndent(&s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	report := render.Markdown(&s, workloadDescs())
	fmt.Fprint(stdout, report)
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(report), 0o644)
}
