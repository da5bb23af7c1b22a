package faultnet

import "sync/atomic"

// Stats counts what a Proxy has done since it was made.
type Stats struct {
	Up, Down   DirStats // client→target, target→client
	Accepted   int64    // connections accepted
	Active     int64    // connections open now (including those waiting for a heal)
	DialErrors int64    // failed dials to the target
	Cut        int64    // connections reset by CutAll
}

// DirStats counts one direction, over all connections.
type DirStats struct {
	Bytes     int64 // bytes written to the destination
	Chunks    int64 // chunks written
	Corrupted int64 // chunks with a bit flipped (one bit each)
	Lost      int64 // chunks delayed by a simulated loss
}

type direction int

const (
	up   direction = 0
	down direction = 1
)

func (d direction) String() string {
	if d == up {
		return "up"
	}
	return "down"
}

type counters struct {
	dir        [2]dirCounters
	accepted   atomic.Int64
	dialErrors atomic.Int64
	cut        atomic.Int64
}

type dirCounters struct {
	bytes, chunks, corrupted, lost atomic.Int64
}

func (c *dirCounters) load() DirStats {
	return DirStats{
		Bytes:     c.bytes.Load(),
		Chunks:    c.chunks.Load(),
		Corrupted: c.corrupted.Load(),
		Lost:      c.lost.Load(),
	}
}
