// Package faultnet shapes and breaks TCP links between repd peers, for tests
// and benchmarks on machines without netem: one-way delay, jitter, bandwidth
// caps, loss (modelled as a retransmission stall), bit corruption,
// partitions, stalls and resets.
//
// A Proxy listens on one address and forwards each accepted connection to a
// target, shaping each direction independently. A Network hands out one
// Proxy per ordered pair of named in-process nodes and partitions, heals and
// cuts them by name.
//
// # Model of one direction
//
//	src ──Read──▶ reader ──(release, chunk)──▶ queue ──▶ writer ──Write──▶ dst
//	              │ corrupt, pace (bandwidth),           │ waits until release
//	              │ stamp release = sent+delay+jitter    │ and not partitioned
//	              └ blocks while the queue holds         └ CloseWrite on EOF
//	                MaxInFlight bytes, stalled or
//	                partitioned
//
// Each chunk the reader takes from src is given a release time; the writer
// writes it to dst no earlier. Release times never decrease, so jitter never
// reorders bytes. Delay does not cap throughput: up to MaxInFlight bytes per
// direction are in flight at once, like a bandwidth-delay product. Beyond
// that, and while paced by Bandwidth, the reader stops reading, so the
// sender's TCP window fills as it would behind a slow link.
//
// All randomness comes from the seed given to NewProxy or NewNetwork, so a
// failing story can be replayed with the same seed (and the same order of
// connections).
package faultnet

import (
	"math/rand/v2"
	"time"
)

// Link is the shaping of one direction of a connection. The zero Link
// forwards bytes as fast as they come.
type Link struct {
	// Delay is the one-way latency added to every chunk.
	Delay time.Duration
	// Jitter adds a uniform random 0..Jitter to each chunk's delay. Bytes
	// are never reordered: a chunk is not released before the one ahead.
	Jitter time.Duration
	// Bandwidth caps the rate in bytes per second; 0 is unlimited. It is a
	// token bucket holding BurstWindow worth of bytes.
	Bandwidth int64
	// CorruptProb is the probability per chunk of flipping one random bit
	// in it.
	CorruptProb float64
	// LossProb is the probability per chunk that it is "lost". A TCP stream
	// cannot lose bytes, so a loss is what the receiver sees of one: the
	// chunk, and everything behind it, arrives LossPenalty late.
	LossProb float64
	// LossPenalty is the extra delay of a lost chunk; 0 means
	// DefaultLossPenalty (Linux's minimum retransmission timeout).
	LossPenalty time.Duration
}

const (
	// DefaultLossPenalty is the stall of a lost chunk when Link.LossPenalty
	// is 0.
	DefaultLossPenalty = 200 * time.Millisecond
	// burstWindow is how long an idle link saves up bandwidth: after idling
	// it may send Bandwidth*burstWindow bytes at once.
	burstWindow = 10 * time.Millisecond
)

// verdict is what happens to one chunk.
type verdict struct {
	pace    time.Time // the reader may read again at pace (the chunk is "on the wire")
	release time.Time // the writer may write the chunk at release
	flip    int       // index of the bit to flip, or -1
	lost    bool
}

// shaper decides the fate of the chunks of one direction. It does no I/O
// and reads no clock; the caller passes the time the chunk was read.
type shaper struct {
	rng         *rand.Rand
	sendFree    time.Time // when the link has finished sending what it was given
	lastRelease time.Time
}

func newShaper(seed int64, stream uint64) *shaper {
	return &shaper{rng: rand.New(rand.NewPCG(uint64(seed), stream))}
}

// plan decides the fate of a chunk of n > 0 bytes read at now.
func (s *shaper) plan(l Link, now time.Time, n int) verdict {
	v := verdict{pace: now, flip: -1}
	if l.CorruptProb > 0 && s.rng.Float64() < l.CorruptProb {
		v.flip = s.rng.IntN(n * 8)
	}
	sent := now
	if l.Bandwidth > 0 {
		cost := time.Duration(float64(n) * float64(time.Second) / float64(l.Bandwidth))
		if floor := now.Add(-burstWindow); s.sendFree.Before(floor) {
			s.sendFree = floor
		}
		s.sendFree = s.sendFree.Add(cost)
		if s.sendFree.After(now) {
			sent = s.sendFree
			v.pace = sent
		}
	}
	rel := sent
	if l.Delay > 0 {
		rel = rel.Add(l.Delay)
	}
	if l.Jitter > 0 {
		rel = rel.Add(time.Duration(s.rng.Int64N(int64(l.Jitter) + 1)))
	}
	if l.LossProb > 0 && s.rng.Float64() < l.LossProb {
		v.lost = true
		pen := l.LossPenalty
		if pen <= 0 {
			pen = DefaultLossPenalty
		}
		rel = rel.Add(pen)
	}
	if rel.Before(s.lastRelease) {
		rel = s.lastRelease
	}
	s.lastRelease = rel
	v.release = rel
	return v
}

// readSize is how much the reader asks for at once: at most max, and about
// 5ms worth of a capped link so pacing stays smooth.
func readSize(l Link, max int) int {
	if l.Bandwidth <= 0 {
		return max
	}
	n := l.Bandwidth / 200
	if n < 1024 {
		n = 1024
	}
	if n > int64(max) {
		n = int64(max)
	}
	return int(n)
}
