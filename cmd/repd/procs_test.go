package main

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// The policy: all Ps as soon as a period's CPU reaches busy × the Ps in
// use, one P after quietFor periods in a row below quiet, and no move in
// between.
func TestProcsPolicy(t *testing.T) {
	p := newProcsPolicy(4)
	steps := []struct {
		cpus float64
		want int
	}{
		{0.6, 4}, // between: stays
		{0.4, 4}, // quiet 1
		{0.4, 4}, // quiet 2
		{0.6, 4}, // between: the count starts again
		{0.1, 4},
		{0.1, 4},
		{0.1, 4},
		{0.1, 1},  // fourth in a row: one P
		{0.7, 1},  // below busy × 1
		{0.75, 4}, // busy: all Ps at once
		{3.5, 4},
		{0.49, 4},
		{0.49, 4},
		{0.49, 4},
		{0.49, 1},
		{0.2, 1},
		{1.2, 4}, // a node held to one P uses more than one CPU in system calls
	}
	for i, s := range steps {
		if got := p.next(s.cpus); got != s.want {
			t.Fatalf("step %d: %.2f CPUs: %d Ps, want %d", i, s.cpus, got, s.want)
		}
	}
	one := newProcsPolicy(1)
	for _, c := range []float64{0, 5, 0} {
		if got := one.next(c); got != 1 {
			t.Fatalf("a one-P policy moved to %d at %.1f CPUs", got, c)
		}
	}
}

// A node on all its Ps whose load would fit in one tries one P: it stays
// if one P carries the load (below busy for the try), else it goes back
// at once and lets twice as many such periods pass before the next try.
func TestProcsPolicyTriesOneP(t *testing.T) {
	p := newProcsPolicy(2)
	run := func(what string, cpus float64, n, want int) {
		t.Helper()
		for i := range n {
			if got := p.next(cpus); i == n-1 && got != want {
				t.Fatalf("%s: after %d periods at %.2f CPUs: %d Ps, want %d", what, n, cpus, got, want)
			} else if i < n-1 && got != p.max && got != 1 {
				t.Fatalf("%s: %d Ps", what, got)
			}
		}
	}
	run("a load that would fit in one P, three periods", 0.73, 3, 2)
	run("the fourth: a try", 0.73, 1, 1)
	run("one P carries it", 0.6, 4, 1)
	if p.trying != 0 || p.backoff != procsProbeEvery {
		t.Fatalf("after a try that held: trying %d, backoff %d", p.trying, p.backoff)
	}
	run("busy: all Ps", 0.9, 1, 2)
	run("fits again: a try", 0.78, 4, 1)
	run("one P does not carry it", 0.76, 1, 2)
	if p.wait != procsProbeEvery || p.backoff != 2*procsProbeEvery {
		t.Fatalf("after a failed try: wait %d, backoff %d", p.wait, p.backoff)
	}
	run("the wait", 0.78, procsProbeEvery+procsQuietFor-1, 2)
	run("the next try", 0.78, 1, 1)
	run("fails again", 0.8, 1, 2)
	if p.wait != 2*procsProbeEvery || p.backoff != 4*procsProbeEvery {
		t.Fatalf("after a second failed try: wait %d, backoff %d", p.wait, p.backoff)
	}
	for range 10 {
		p.next(0.78)
		p.backoff = min(2*p.backoff, p.probeMax)
	}
	if p.backoff != procsProbeMax {
		t.Fatalf("backoff %d, want at most %d", p.backoff, procsProbeMax)
	}
	run("busy on all Ps: no try", 1.0, 300, 2)
	run("quiet still goes to one P", 0.3, procsQuietFor, 1)

	// Without a probe threshold (0) the policy never tries.
	q := procsPolicy{max: 2, cur: 2, busy: 0.75, quiet: 0.5, quietFor: 4}
	for range 100 {
		if got := q.next(0.7); got != 2 {
			t.Fatalf("no probe threshold: moved to %d Ps", got)
		}
	}
}

// The daemon's loop on this process: measured by its own CPU time, it
// drops to one P while the test idles, takes both back while two
// goroutines spin, drops again once they stop, and gives the Ps back when
// it ends. The thresholds are lower than the daemon's so that a loaded
// test machine still shows the spinning.
func TestProcsFollowLoad(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	p := procsPolicy{max: 2, cur: 2, busy: 0.3, quiet: 0.15, quietFor: 2}
	done := make(chan struct{})
	go func() { p.follow(ctx, 50*time.Millisecond, log); close(done) }()
	waitProcs := func(want int, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for runtime.GOMAXPROCS(0) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: GOMAXPROCS %d after 10 s, want %d", what, runtime.GOMAXPROCS(0), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitProcs(1, "idle")
	var stop atomic.Bool
	spun := make(chan struct{}, 2)
	for range 2 {
		go func() {
			for !stop.Load() {
				for i := 0; i < 1e5; i++ {
				}
			}
			spun <- struct{}{}
		}()
	}
	waitProcs(2, "two goroutines spinning")
	stop.Store(true)
	<-spun
	<-spun
	waitProcs(1, "spinning stopped")
	cancel()
	<-done
	if n := runtime.GOMAXPROCS(0); n != 2 {
		t.Fatalf("after the loop ended: GOMAXPROCS %d, want 2 back", n)
	}
}

// GOMAXPROCS in the environment is the operator's number: adaptProcs
// leaves it alone, however quiet the process.
func TestProcsEnvStands(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	t.Setenv("GOMAXPROCS", "2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	adaptProcs(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	time.Sleep(procsPeriod*procsQuietFor + 500*time.Millisecond)
	if n := runtime.GOMAXPROCS(0); n != 2 {
		t.Fatalf("GOMAXPROCS=2 in the environment: %d Ps after a quiet second and a half, want 2", n)
	}
}
