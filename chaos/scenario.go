package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/repd/repd/harness"
)

// Action is one step of a schedule, at an offset from the scenario's start.
type Action struct {
	At    time.Duration
	What  string
	Fault bool
}

func (a Action) String() string { return fmt.Sprintf("%8.3fs %s", a.At.Seconds(), a.What) }

// Result is one scenario run.
type Result struct {
	Scenario      string
	Seed          int64
	Protocol      string
	OnNoQuorum    string // with auto-promote: what a Primary without quorum does
	Long          bool   // the scenario's long form (the soak's)
	Schedule      []Action
	Faults        int
	WritesSent    int
	WritesChecked int
	Violations    []string
	Findings      []string // behaviour worth reporting that is not a violation
	Known         []string // violations of known engine bugs (see KnownBugsFail)
	Err           error    // the run itself failed (timeout, refused recovery)
	Elapsed       time.Duration
	MaxGoroutines float64 // highest go_goroutines scraped from any repd
	MaxRSS        float64
}

// KnownBugsFail makes known engine bugs fail a run like any violation.
var KnownBugsFail = os.Getenv("CHAOS_STRICT") == "1"

// Failed reports whether the run failed.
func (r *Result) Failed() bool {
	return r.Err != nil || len(r.Violations) > 0 || (KnownBugsFail && len(r.Known) > 0)
}

// Replay is the command that reruns it.
func (r *Result) Replay() string {
	s := fmt.Sprintf("go run ./chaos/cmd/soak -seed %d -scenario %s -protocol %s", r.Seed, r.Scenario, r.Protocol)
	if r.OnNoQuorum != "" {
		s += " -on-no-quorum " + r.OnNoQuorum
	}
	if !r.Long {
		s += " -long=false"
	}
	return s
}

// Format prints the result, with the schedule when it failed or verbose.
func (r *Result) Format(verbose bool) string {
	var b strings.Builder
	st := "ok"
	if r.Failed() {
		st = "FAIL"
	}
	fmt.Fprintf(&b, "%s %s seed=%d protocol=%s", st, r.Scenario, r.Seed, r.Protocol)
	if r.OnNoQuorum != "" {
		fmt.Fprintf(&b, " on-no-quorum=%s", r.OnNoQuorum)
	}
	fmt.Fprintf(&b, " faults=%d writes=%d checked=%d violations=%d %.1fs",
		r.Faults, r.WritesSent, r.WritesChecked, len(r.Violations), r.Elapsed.Seconds())
	if r.Err != nil {
		fmt.Fprintf(&b, "\n  error: %v", r.Err)
	}
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "\n  violation: %s", v)
	}
	for _, k := range r.Known {
		fmt.Fprintf(&b, "\n  known engine bug: %s", k)
	}
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "\n  finding: %s", f)
	}
	if verbose || r.Failed() {
		fmt.Fprintf(&b, "\n  schedule:")
		for _, a := range r.Schedule {
			fmt.Fprintf(&b, "\n    %s", a)
		}
		fmt.Fprintf(&b, "\n  replay: %s", r.Replay())
	}
	return b.String()
}

// Env is what a scenario works with.
type Env struct {
	Ctx context.Context
	Rng *rand.Rand
	C   *harness.Cluster
	H   *History
	Res *Result
	// Long: the soak's longer form of a scenario (flapping for a minute
	// rather than seconds).
	Long  bool
	start time.Time
	mu    sync.Mutex
}

// Act records an action of the schedule.
func (e *Env) Act(fault bool, format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.Res.Schedule = append(e.Res.Schedule, Action{At: time.Since(e.start), What: fmt.Sprintf(format, args...), Fault: fault})
	if fault {
		e.Res.Faults++
	}
}

// Find records a finding.
func (e *Env) Find(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.Res.Findings = append(e.Res.Findings, fmt.Sprintf(format, args...))
}

// Violate records a violation.
func (e *Env) Violate(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.Res.Violations = append(e.Res.Violations, fmt.Sprintf(format, args...))
}

// Known records a violation caused by a known engine bug: reported, and
// failing the run only with CHAOS_STRICT=1.
func (e *Env) Known(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.Res.Known = append(e.Res.Known, fmt.Sprintf(format, args...))
}

// Sleep sleeps a random duration in [lo, hi).
func (e *Env) Sleep(lo, hi time.Duration) time.Duration {
	d := lo
	if hi > lo {
		d += time.Duration(e.Rng.Int64N(int64(hi - lo)))
	}
	time.Sleep(d)
	return d
}

// Running is a workload in progress.
type Running struct {
	W      *Workload
	cancel context.CancelFunc
	done   chan error
}

// Stop stops the workload and waits for it.
func (r *Running) Stop() error {
	r.cancel()
	return <-r.done
}

// Done is closed... reports whether the workload ended by itself.
func (r *Running) wait(d time.Duration) bool {
	select {
	case err := <-r.done:
		r.done <- err
		return true
	case <-time.After(d):
		return false
	}
}

// Workload starts a workload on node n.
func (e *Env) Workload(n *harness.Node) *Running { return e.workload(n, 3, 3) }

// workload starts a workload of conns connections with depth writers each.
func (e *Env) workload(n *harness.Node, conns, depth int) *Running {
	ctx, cancel := context.WithCancel(e.Ctx)
	w := &Workload{
		Addr: n.NBD, Export: "r0", Conns: conns, Depth: depth,
		Blocks: min(e.C.Opt.Size/BlockSize, 4096), MaxBlocks: 8, FlushEvery: 16,
		Seed: e.Rng.Uint64(), H: e.H,
	}
	r := &Running{W: w, cancel: cancel, done: make(chan error, 1)}
	e.Act(false, "workload on %s", n.Name)
	go func() { r.done <- w.Run(ctx) }()
	return r
}

// Check reads the whole device from n and checks it.
func (e *Env) Check(n *harness.Node, mode Mode) ([]byte, error) {
	return e.checkFirst(n, mode, e.C.Opt.Size)
}

// checkFirst reads the first size bytes of the device from n and checks
// them.
func (e *Env) checkFirst(n *harness.Node, mode Mode, size int64) ([]byte, error) {
	img, err := readFirst(n, size)
	if err != nil {
		return nil, err
	}
	rep := Check(e.H, img, mode)
	e.Act(false, "check %s (%d acknowledged writes, mode %v): %d violations", n.Name, rep.WritesChecked, mode, rep.NViolations)
	e.mu.Lock()
	e.Res.WritesChecked += rep.WritesChecked
	e.mu.Unlock()
	for _, v := range rep.Violations {
		e.Violate("%s: %s", n.Name, v)
	}
	if rep.NViolations > len(rep.Violations) {
		e.Violate("%s: ... %d violations in all", n.Name, rep.NViolations)
	}
	if rep.FlushedLost > 0 {
		e.Find("%s: %d blocks lost writes acknowledged before a completed flush (protocol A flush does not wait for the peer)", n.Name, rep.FlushedLost)
	}
	return img, nil
}

// readFirst reads the first size bytes of the device through n's NBD
// export.
func readFirst(n *harness.Node, size int64) ([]byte, error) {
	cl, err := n.DialNBD()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	img := make([]byte, size)
	const chunk = 1 << 20
	for off := int64(0); off < size; off += chunk {
		end := min(off+chunk, size)
		if err := cl.Read(img[off:end], off); err != nil {
			return nil, fmt.Errorf("read %s at %d: %w", n.Name, off, err)
		}
	}
	return img, nil
}

func (m Mode) String() string {
	if m == Prefix {
		return "prefix"
	}
	return "all-acked"
}

// Scenario is a named fault story.
type Scenario struct {
	Name string
	// Protocols it runs under; the first is used by the fast tests.
	Protocols []string
	Nodes     int
	SmallDisk bool // node 1's disk on a tmpfs smaller than the device
	// Witness: the last node is a witness (disk = "none", named tie).
	Witness bool
	// AutoPromote: quorum (the default majority) with auto-promote = true
	// and on-no-quorum suspend-io or io-error, chosen by the seed.
	AutoPromote bool
	Extra       string // more [resource] lines
	Size        int64  // the device's size; default 32 MiB
	// Soak: run by the soak (and by name) only, not by TestScenarios.
	Soak bool
	Run  func(e *Env) error
}

// Config configures Run.
type Config struct {
	Bins     *harness.Bins
	Dir      string // parent for the cluster's directory
	Protocol string // "" picks one from the scenario's list with the seed
	// OnNoQuorum forces on-no-quorum in auto-promote scenarios ("" picks
	// suspend-io or io-error with the seed).
	OnNoQuorum string
	// Long runs the scenarios' longer forms (the soak).
	Long bool
	Logf func(format string, args ...any)
}

// Run runs one scenario with one seed.
func Run(ctx context.Context, cfg Config, sc Scenario, seed int64) (res *Result) {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x63686173))
	// The seed draws the protocol (and on-no-quorum) whether or not the
	// caller forces them, so that a replay with them forced runs the same
	// schedule.
	proto := sc.Protocols[rng.IntN(len(sc.Protocols))]
	if cfg.Protocol != "" {
		proto = cfg.Protocol
	}
	res = &Result{Scenario: sc.Name, Seed: seed, Protocol: proto, Long: cfg.Long}
	if sc.AutoPromote {
		res.OnNoQuorum = []string{"suspend-io", "io-error"}[rng.IntN(2)]
		if cfg.OnNoQuorum != "" {
			res.OnNoQuorum = cfg.OnNoQuorum
		}
	}
	t0 := time.Now()
	defer func() { res.Elapsed = time.Since(t0) }()
	dir, err := os.MkdirTemp(cfg.Dir, "chaos-"+sc.Name+"-")
	if err != nil {
		res.Err = err
		return res
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // so an unprivileged caller reaches the admin socket's own permission check
	opt := clusterOptions(max(2, sc.Nodes), proto, 20, seed)
	if sc.Size > 0 {
		opt.Size = sc.Size
	}
	if sc.Witness {
		opt.Names = append(opt.Names, "alpha", "beta", "gamma", "delta")[:opt.Nodes-1]
		opt.Names = append(opt.Names, "tie")
		opt.Witnesses = []int{opt.Nodes - 1}
	}
	if sc.AutoPromote {
		opt.Extra += fmt.Sprintf("auto-promote = true\non-no-quorum = %q\n", res.OnNoQuorum)
	}
	opt.Extra += sc.Extra
	if sc.SmallDisk {
		small, cleanup, err := smallFS(dir)
		if err != nil {
			res.Err = err
			return res
		}
		defer cleanup()
		opt.DiskDir = func(i int) string {
			if i == 1 {
				return small
			}
			return dir
		}
	}
	c, err := harness.Launch(ctx, cfg.Bins, dir, opt)
	if err != nil {
		res.Err = err
		return res
	}
	e := &Env{Ctx: ctx, Rng: rng, C: c, H: &History{}, Res: res, Long: cfg.Long, start: t0}
	stopScrape := e.scrape()
	defer func() {
		stopScrape()
		if res.Failed() {
			for _, n := range c.Nodes {
				res.Findings = append(res.Findings, fmt.Sprintf("log tail of %s:\n%s", n.Name, n.LogTail(3000)))
			}
		}
		c.Close()
		res.WritesSent, _, _, _ = e.H.Counts()
	}()
	e.Act(false, "up: %s Primary, protocol %s", c.Nodes[0].Name, proto)
	if err := sc.Run(e); err != nil {
		res.Err = err
	}
	return res
}

// scrape samples the daemons' goroutines and RSS every 500ms.
func (e *Env) scrape() func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, n := range e.C.Nodes {
				g, rss, err := scrape(e.Ctx, n) // a stopped node just does not answer
				if err != nil {
					continue
				}
				e.mu.Lock()
				e.Res.MaxGoroutines = max(e.Res.MaxGoroutines, g)
				e.Res.MaxRSS = max(e.Res.MaxRSS, rss)
				e.mu.Unlock()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// smallFS mounts a 6 MiB tmpfs under dir.
func smallFS(dir string) (string, func(), error) {
	small := filepath.Join(dir, "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		return "", nil, err
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", small).CombinedOutput()
	if err != nil {
		return "", nil, fmt.Errorf("mount a small tmpfs (needs root): %v: %s", err, out)
	}
	return small, func() { exec.Command("umount", "-l", small).Run() }, nil
}

// clusterOptions are the chaos clusters' options: nodes on
// 127.0.0.(hostBase+i) with a proxy on every link and metrics, a 32 MiB
// device, a peer timeout of 1 s and reconnects every 100 ms.
func clusterOptions(nodes int, proto string, hostBase int, seed int64) harness.Options {
	return harness.Options{
		Nodes: nodes, Size: 32 << 20, Protocol: proto, Timeout: time.Second, ConnectInterval: 100 * time.Millisecond,
		HostBase: hostBase, Metrics: true, Proxies: true, Seed: seed,
	}
}

// scrape reads a node's goroutines and resident memory from its /metrics.
func scrape(ctx context.Context, n *harness.Node) (goroutines, rss float64, err error) {
	m, err := n.Scrape(ctx)
	return m["go_goroutines"], m["process_resident_memory_bytes"], err
}
