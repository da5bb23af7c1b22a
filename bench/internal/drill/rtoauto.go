package drill

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/sysinfo"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/config"
	"github.com/repd/repd/harness"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// RTOAutoTimeouts are the rto-auto drill's cases: timeout = "2s" (issue
// 18's target) and repd's default (0: the key left out).
var RTOAutoTimeouts = []time.Duration{2 * time.Second, 0}

// drillRTOAuto runs the rto-auto drill once per timeout.
func drillRTOAuto(ctx context.Context, env target.Env) []result.RTOAutoResult {
	var out []result.RTOAutoResult
	for _, tmo := range RTOAutoTimeouts {
		if ctx.Err() != nil {
			break
		}
		cenv := env
		cenv.Dir = filepath.Join(env.Dir, "timeout-"+timeoutName(tmo))
		if err := os.MkdirAll(cenv.Dir, 0o755); err != nil {
			out = append(out, result.RTOAutoResult{Timeout: timeoutName(tmo), Error: err.Error()})
			continue
		}
		out = append(out, rtoAuto(ctx, cenv, tmo, 4*time.Second))
	}
	return out
}

func timeoutName(d time.Duration) string {
	if d == 0 {
		return "default"
	}
	return d.String()
}

// rtoAuto is one case of the drill: two data nodes (alpha, bravo) and a
// witness (tie), protocol C, quorum majority, auto-promote, on-no-quorum
// suspend-io and the given timeout (0: repd's default); fio 4k randwrite
// QD32 on alpha; alpha's host cut off by a partition at the proxies on
// its peer links (not a TCP close: the others notice only by their
// timeouts); then a failover client, as an application's would, tries
// each surviving data node (connect, one 4 KiB write, a second at most)
// until a write completes. The RTO is from the cut to that write. fio
// runs for ramp before its rate is taken, and then the cut comes.
func rtoAuto(ctx context.Context, env target.Env, timeout, ramp time.Duration) (r result.RTOAutoResult) {
	eff := timeout
	if eff == 0 {
		eff = config.DefaultTimeout
	}
	r.Protocol, r.Link = "C", "loopback, a proxy on every peer link"
	r.Timeout = timeoutName(timeout)
	if timeout == 0 {
		r.Timeout = fmt.Sprintf("default (%v)", eff)
	}
	r.TimeoutMs, r.LeaseMs, r.PromiseMs = ms(eff), ms(eff), ms(eff*9/8)
	r.Quorum = "majority: 2 of 3 votes (alpha, bravo, witness tie)"
	r.OnNoQuorum, r.AutoPromote = "suspend-io", true
	name := "rto-auto-" + timeoutName(timeout)
	c, err := target.StartCluster(ctx, env, target.RepdConfig{
		Name: name, Nodes: []string{"alpha", "bravo", "tie"}, Witnesses: []int{2}, Protocol: "C",
		Proxies: true, Seed: target.SeedOf(name), Timeout: timeout,
		Extra: map[string]string{"quorum": `"majority"`, "auto-promote": "true", "on-no-quorum": `"suspend-io"`},
	})
	if err != nil {
		r.Error = "start: " + err.Error()
		return r
	}
	defer c.Stop()
	alpha, bravo := c.Nodes[0], c.Nodes[1]
	evA, stopA, err := startEvents(ctx, alpha, filepath.Join(env.Dir, "events-alpha.log"))
	if err != nil {
		r.Error = "repctl events on alpha: " + err.Error()
		return r
	}
	defer stopA()
	evB, stopB, err := startEvents(ctx, bravo, filepath.Join(env.Dir, "events-bravo.log"))
	if err != nil {
		r.Error = "repctl events on bravo: " + err.Error()
		return r
	}
	defer stopB()

	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// --thread: fio's job is a thread of the process proc.Run stops; a
	// forked job runs in its own session and would outlive the stop while
	// its writes hang on the cut-off Primary.
	wait := loadFio(lctx, c, env.Dir, 2*time.Minute, "--status-interval=1", "--thread")
	time.Sleep(ramp) // writes in full flow
	st, _ := alpha.Status(ctx)
	before := st.Writes
	time.Sleep(time.Second)
	st, _ = alpha.Status(ctx)
	r.LoadIOPS = float64(st.Writes - before)
	if r.LoadIOPS == 0 {
		r.Error = "fio wrote nothing to alpha before the cut"
		cancel()
		wait()
		return r
	}

	r.LoadAvg = sysinfo.LoadAvg()
	t0 := time.Now()
	for j := 1; j < len(c.Nodes); j++ {
		c.Proxy(0, j).Partition(true)
	}
	leaseEnd := watchLease(ctx, alpha)
	n, attempts, err := failoverWrite(ctx, c.Nodes[1:2], 2*time.Minute)
	r.TotalMs = ms(time.Since(t0))
	if end := leaseEnd(); !end.IsZero() {
		r.LeaseEndMs = ms(end.Sub(t0))
	}
	r.Attempts = attempts
	if n != nil {
		r.Successor = n.Name
	}
	// The events streams may lag: bravo's election came before its
	// write; alpha suspends once its peers' timeouts drop them, which
	// may come after bravo's write on a loaded machine.
	if e, ok := evB.await(ctx, 5*time.Second, func(e api.Event) bool { return e.Kind == "role" && e.New == "Primary" && e.Time.After(t0) }); ok {
		r.ElectedMs = ms(e.Time.Sub(t0))
	}
	if e, ok := evA.await(ctx, 2*eff+5*time.Second, func(e api.Event) bool { return e.Kind == "io" && e.New == "suspended" && e.Time.After(t0) }); ok {
		r.SuspendedMs = ms(e.Time.Sub(t0))
	}
	cancel()
	wait() // fio's writes hang on the cut-off Primary: it is killed
	if err != nil {
		r.Error = err.Error()
		return r
	}
	if r.ElectedMs == 0 {
		r.Error = "bravo acknowledged a write but its events show no election"
		return r
	}

	// Heal: alpha learns it was replaced, steps down and resyncs.
	for j := 1; j < len(c.Nodes); j++ {
		c.Proxy(0, j).Partition(false)
	}
	th := time.Now()
	err = harness.WaitFor(ctx, "alpha an UpToDate Secondary in sync", time.Minute, func() bool {
		sa, err := alpha.Status(ctx)
		if err != nil || sa.Role != api.Secondary || sa.Disk != "UpToDate" {
			return false
		}
		sb, err := bravo.Status(ctx)
		if err != nil {
			return false
		}
		for _, p := range sb.Peers {
			if p.Name == alpha.Name {
				return harness.InSync(p)
			}
		}
		return false
	})
	if err != nil {
		r.Rejoined = err.Error()
	} else {
		r.Rejoined = fmt.Sprintf("an UpToDate Secondary in sync %.1f s after the heal", time.Since(th).Seconds())
	}
	return r
}

// watchLease polls n's status every 20 ms from now on, and returns a
// function that stops it and says by when n's lease was over at the
// latest: no acknowledgement reaches n after the cut, so every answer
// that says "held, left L" bounds the end by its arrival plus L; the
// earliest bound is kept. Zero if no answer said held.
func watchLease(ctx context.Context, n *harness.Node) func() time.Time {
	stop := make(chan struct{})
	done := make(chan struct{})
	var end time.Time
	go func() {
		defer close(done)
		for {
			st, err := n.Status(ctx)
			at := time.Now()
			if err == nil && st.Lease == "held" {
				if e := at.Add(time.Duration(st.LeaseLeftMS) * time.Millisecond); end.IsZero() || e.Before(end) {
					end = e
				}
			}
			if err == nil && st.Lease == "expired" {
				return
			}
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() time.Time {
		close(stop)
		<-done
		return end
	}
}

// failoverWrite is a failover client: it tries each node in turn (connect,
// one 4 KiB write, a second at most for its reply) until a write
// completes, and returns that node and how many connections it opened.
func failoverWrite(ctx context.Context, nodes []*harness.Node, limit time.Duration) (*harness.Node, int, error) {
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	deadline := time.Now().Add(limit)
	attempts := 0
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, n := range nodes {
			attempts++
			err := tryWrite(n, buf, time.Second)
			if err == nil {
				return n, attempts, nil
			}
			last = fmt.Errorf("%s: %w", n.Name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if last == nil {
		last = ctx.Err()
	}
	return nil, attempts, fmt.Errorf("no write completed on %d surviving node(s) within %v: %v", len(nodes), limit, last)
}

// tryWrite connects to n and writes buf at offset 0, waiting up to d for
// the reply.
func tryWrite(n *harness.Node, buf []byte, d time.Duration) error {
	cl, err := n.DialNBD()
	if err != nil {
		return err
	}
	defer cl.Close()
	call, err := cl.Start(nbdtest.Request{Type: nbd.CmdWrite, Length: uint32(len(buf)), Payload: buf})
	if err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-call.Done:
		rep, err := call.Wait()
		if err == nil && rep.Error != 0 {
			err = &nbdtest.Error{Code: rep.Error}
		}
		return err
	case <-t.C:
		return errors.New("no reply within " + d.String())
	}
}
