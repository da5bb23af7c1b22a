package main

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/repd/repd/config"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/replica"
)

// memSlack is what the soft memory limit leaves, besides the journal, the
// dedup indexes and one NBD connection's requests in flight, for the rest:
// the runtime, buffers, bitmaps, metrics.
const memSlack = 48 << 20

// memoryLimit is the soft memory limit repd gives the Go runtime: the
// journal it may fill, each peer's dedup index, one NBD connection's
// payload in flight, and memSlack. Without a limit the collector lets the
// heap grow to twice what was live at its last cycle, and after the
// journal filled (a peer away under protocol A) its freed buffers stay
// pooled for a cycle or two: the chaos soak's daemons (64 MiB journal,
// 32 MiB device) reached 236–315 MiB of RSS in quorum-flap runs under
// protocol A, and 119 MiB with a limit of 112 MiB. The limit is soft: a
// heap that needs more (many NBD connections with deep queues of large
// writes) gets it, and the collector works harder meanwhile (at most
// half the CPU, Go's rule).
func memoryLimit(c *replica.Config) int64 {
	journal := c.JournalBytes
	if journal <= 0 {
		journal = config.DefaultJournalSize
	}
	return journal + int64(len(c.Peers))*c.DedupIndexBytes + nbd.DefaultMaxInFlightBytes + memSlack
}

// setMemoryLimit applies memoryLimit unless GOMEMLIMIT is set in the
// environment (the runtime took that one already; "off" turns the limit
// off), and says which.
func setMemoryLimit(c *replica.Config, log *slog.Logger) {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		log.Info("memory limit from GOMEMLIMIT", "GOMEMLIMIT", v)
		return
	}
	lim := memoryLimit(c)
	debug.SetMemoryLimit(lim)
	log.Debug("soft memory limit", "bytes", lim)
}
