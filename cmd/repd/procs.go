package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"syscall"
	"time"
)

// A quiet node runs its Go code on one P. With spare Ps, the runtime
// wakes an idle thread to look for work whenever a goroutine hands work to
// another (a frame to the sender, an ack to the writer), and that thread
// finds none and sleeps again: at low load, those wake-ups are much of
// what a write costs; when a node is busy, the spare Ps do its work. So a
// node uses all its Ps while it is busy and one while it is quiet:
// adaptProcs watches the CPU time the process spends and moves between
// the two. On the bench's 2-vCPU VM, against the build before it in
// alternating pairs: the database job (16 KiB writes at QD1, a flush
// every 8) under protocol C +16 % (the nodes' CPU per write 118 + 73 ->
// 109 + 62 µs), protocol A at 4k QD32 +13 % (its Secondary is quiet),
// protocol C at 4k QD32 -1 %.
//
// A node on all its Ps whose load would fit in one (below probe, about
// what it would use there) tries one P: a protocol-A Primary that came
// into 4k writes at QD32 from a busy job used 0.73 of a CPU on two Ps,
// above quiet, and stayed there at 0.58× of standalone where one P gave
// 0.62–0.92× (session 22). If one P cannot carry the load (busy within
// the try), it goes back at once and waits twice as long before the next
// try (from probeEvery periods up to probeMax), so a load near the
// threshold costs one short try a minute at most.
type procsPolicy struct {
	max, cur int
	busy     float64 // CPUs used per P at which a quiet node takes all its Ps again
	quiet    float64 // CPUs used below which a busy node goes to one P ...
	quietFor int     // ... after this many periods in a row
	calm     int     // periods in a row below quiet

	probe      float64 // CPUs used below which a node on all its Ps tries one P (0: never) ...
	fit        int     // ... after quietFor periods in a row below it
	trying     int     // periods into a try of one P (0: not trying)
	wait       int     // periods below probe to let pass before the next try
	backoff    int     // what wait becomes after a failed try
	probeEvery int     // backoff after a try that held
	probeMax   int     // the largest backoff
}

// The period and thresholds of the daemon: a node goes back to all its Ps
// within a period of becoming busy, and to one P after a second of quiet.
// Between the two thresholds it stays where it is, so that a load near
// one does not flap, except for the backed-off tries of one P below probe.
const (
	procsPeriod     = 250 * time.Millisecond
	procsBusy       = 0.75
	procsQuiet      = 0.5
	procsQuietFor   = 4
	procsProbe      = 0.8
	procsProbeEvery = 8   // 2 s
	procsProbeMax   = 256 // 64 s
)

func newProcsPolicy(max int) procsPolicy {
	return procsPolicy{max: max, cur: max, busy: procsBusy, quiet: procsQuiet, quietFor: procsQuietFor,
		probe: procsProbe, probeEvery: procsProbeEvery, probeMax: procsProbeMax, backoff: procsProbeEvery}
}

// next returns the Ps for the next period, given the CPUs (user and system
// time over wall time) the process used in the last one.
func (p *procsPolicy) next(cpus float64) int {
	if p.cur < p.max {
		if cpus >= p.busy*float64(p.cur) {
			if p.trying > 0 {
				// One P does not carry this load: back, and wait longer.
				p.wait, p.backoff = p.backoff, min(2*p.backoff, p.probeMax)
			}
			p.cur, p.calm, p.fit, p.trying = p.max, 0, 0, 0
		} else if p.trying > 0 {
			if p.trying++; p.trying > p.quietFor {
				p.trying, p.backoff = 0, p.probeEvery // it held
			}
		}
		return p.cur
	}
	switch {
	case p.cur > 1 && cpus < p.quiet:
		p.fit = 0
		p.calm++
		if p.calm >= p.quietFor {
			p.cur, p.calm = 1, 0
		}
	case p.cur > 1 && cpus < p.probe:
		p.calm = 0
		if p.wait > 0 {
			p.wait--
			break
		}
		p.fit++
		if p.fit >= p.quietFor {
			p.cur, p.fit, p.trying = 1, 0, 1
		}
	default:
		p.calm, p.fit = 0, 0
	}
	return p.cur
}

// adaptProcs moves GOMAXPROCS between one and what it was at the call,
// following the load (procsPolicy), until ctx ends. It does nothing if
// GOMAXPROCS is set in the environment (the operator's number stands) or
// the process has one P already.
func adaptProcs(ctx context.Context, log *slog.Logger) {
	max := runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") != "" || max < 2 {
		return
	}
	p := newProcsPolicy(max)
	go p.follow(ctx, procsPeriod, log)
}

// follow applies p every period until ctx ends, then gives the process its
// Ps back.
func (p *procsPolicy) follow(ctx context.Context, period time.Duration, log *slog.Logger) {
	t := time.NewTicker(period)
	defer t.Stop()
	defer runtime.GOMAXPROCS(p.max)
	used, at := cpuTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		u, now := cpuTime(), time.Now()
		cpus := (u - used).Seconds() / now.Sub(at).Seconds()
		used, at = u, now
		if n := p.next(cpus); n != runtime.GOMAXPROCS(0) {
			runtime.GOMAXPROCS(n)
			log.Debug("gomaxprocs follows the load", "gomaxprocs", n, "cpus", cpus)
		}
	}
}

// cpuTime is the user and system time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
