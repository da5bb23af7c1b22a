package chaos

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/repd/repd/faultnet"
	"github.com/repd/repd/harness"
)

// Endurance is one cluster kept up for a long time: three repd processes
// (protocol C) on 127.0.0.30–32 that are never restarted, a workload that
// never stops for long, and a link fault every few seconds (partition,
// cut, stall, corruption, delay and loss), healed each time. Every epoch
// the workload pauses, the links heal, the nodes must come back in sync
// and every acknowledged write of the epoch is checked on the Primary; the
// history then starts afresh, so the checker's memory stays bounded while
// the daemons run on. Goroutines and RSS of the same three processes are
// sampled once per epoch: they must not grow.
type Endurance struct {
	Bins     *harness.Bins
	Dir      string // parent of the cluster's directory
	Seed     int64
	Duration time.Duration
	Epoch    time.Duration // default 5 minutes
	// Logf prints progress (an epoch's result, a sample); nil is quiet.
	Logf func(format string, args ...any)
}

// EnduranceSample is the daemons' state at the end of an epoch.
type EnduranceSample struct {
	At         time.Duration
	Goroutines []float64 // per node
	RSS        []float64 // bytes, per node
	Checked    int       // acknowledged writes checked in the epoch
	Faults     int
}

// EnduranceResult is the outcome of a run.
type EnduranceResult struct {
	Samples    []EnduranceSample
	Faults     int
	Checked    int
	Violations []string
	Err        error
	Schedule   []Action // of the epoch that failed
}

// Run runs the endurance cluster until d.Duration has passed (and the
// current epoch ended).
func (d Endurance) Run(ctx context.Context) *EnduranceResult {
	res := &EnduranceResult{}
	logf := d.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	epoch := d.Epoch
	if epoch == 0 {
		epoch = 5 * time.Minute
	}
	dir, err := os.MkdirTemp(d.Dir, "chaos-endurance-")
	if err != nil {
		res.Err = err
		return res
	}
	defer os.RemoveAll(dir)
	c, err := harness.Launch(ctx, d.Bins, dir, clusterOptions(3, "C", 30, d.Seed))
	if err != nil {
		res.Err = err
		return res
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(uint64(d.Seed), 0x656e64))
	p := c.Nodes[0]
	t0 := time.Now()
	for k := 1; ; k++ {
		e := &Env{Ctx: ctx, Rng: rng, C: c, H: &History{}, Res: &Result{Scenario: "endurance", Seed: d.Seed, Protocol: "C"}, start: time.Now()}
		end := time.Now().Add(epoch)
		w := e.workload(p, 2, 1) // lighter than a scenario's: it runs beside them
		for time.Now().Before(end) {
			e.Sleep(2*time.Second, 8*time.Second)
			enduranceFault(e)
		}
		w.Stop()
		for _, px := range c.Proxies {
			px.SetLink(faultnet.Link{}, faultnet.Link{})
			px.Partition(false)
			px.Stall(false)
		}
		e.Act(false, "heal every link")
		err := c.WaitInSync(ctx, 60*time.Second)
		if err == nil {
			_, err = e.Check(p, AllAcked)
		}
		if err == nil {
			err = compareUpToDate(c)
		}
		s := EnduranceSample{At: time.Since(t0), Checked: e.Res.WritesChecked, Faults: e.Res.Faults}
		for _, n := range c.Nodes {
			g, rss, serr := scrape(ctx, n)
			if serr != nil && err == nil {
				err = fmt.Errorf("scrape %s: %w", n.Name, serr)
			}
			s.Goroutines = append(s.Goroutines, g)
			s.RSS = append(s.RSS, rss)
		}
		res.Samples = append(res.Samples, s)
		res.Faults += s.Faults
		res.Checked += s.Checked
		res.Violations = append(res.Violations, e.Res.Violations...)
		logf("endurance epoch %d at %.1fmin: faults=%d checked=%d violations=%d goroutines=%v RSS(MiB)=%s",
			k, s.At.Minutes(), s.Faults, s.Checked, len(e.Res.Violations), s.Goroutines, mib(s.RSS))
		if err != nil || len(e.Res.Violations) > 0 {
			res.Err = err
			res.Schedule = e.Res.Schedule
			for _, n := range c.Nodes {
				logf("log tail of %s:\n%s", n.Name, n.LogTail(3000))
			}
			return res
		}
		if time.Since(t0) >= d.Duration {
			return res
		}
	}
}

func mib(xs []float64) string {
	s := "["
	for i, x := range xs {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%.1f", x/(1<<20))
	}
	return s + "]"
}

// enduranceFault injects one fault on a random link and heals it.
func enduranceFault(e *Env) {
	c := e.C
	i := e.Rng.IntN(len(c.Nodes))
	j := (i + 1 + e.Rng.IntN(len(c.Nodes)-1)) % len(c.Nodes)
	px := c.Proxy(i, j)
	link := c.Nodes[min(i, j)].Name + "|" + c.Nodes[max(i, j)].Name
	switch e.Rng.IntN(5) {
	case 0:
		e.Act(true, "partition %s", link)
		px.Partition(true)
		e.Sleep(500*time.Millisecond, 3*time.Second)
		px.Partition(false)
	case 1:
		e.Act(true, "cut %s", link)
		px.CutAll()
	case 2:
		e.Act(true, "stall %s", link)
		px.Stall(true)
		e.Sleep(time.Second, 3*time.Second)
		px.Stall(false)
	case 3:
		l := faultnet.Link{CorruptProb: 0.02}
		e.Act(true, "corrupt 2%% of chunks on %s", link)
		px.SetLink(l, l)
		e.Sleep(500*time.Millisecond, 2*time.Second)
		px.SetLink(faultnet.Link{}, faultnet.Link{})
	default:
		l := faultnet.Link{Delay: time.Duration(1+e.Rng.IntN(20)) * time.Millisecond, Jitter: time.Millisecond, LossProb: float64(e.Rng.IntN(4)) / 100}
		e.Act(true, "shape %s: delay %v loss %.2f", link, l.Delay, l.LossProb)
		px.SetLink(l, l)
		e.Sleep(time.Second, 3*time.Second)
		px.SetLink(faultnet.Link{}, faultnet.Link{})
	}
	e.Act(false, "heal %s", link)
}

// compareUpToDate reads every running node's device through its NBD
// export and requires them all equal (the workload stopped, the nodes in
// sync).
func compareUpToDate(c *harness.Cluster) error {
	var first []byte
	var firstName string
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		img, err := n.ReadDevice()
		if err != nil {
			return err
		}
		if first == nil {
			first, firstName = img, n.Name
			continue
		}
		if !bytes.Equal(img, first) {
			for b := 0; b < len(img); b += BlockSize {
				if !bytes.Equal(img[b:b+BlockSize], first[b:b+BlockSize]) {
					return fmt.Errorf("%s and %s differ (first at block %d) although both are UpToDate and in sync", firstName, n.Name, b/BlockSize)
				}
			}
		}
	}
	return nil
}
