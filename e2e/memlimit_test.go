package e2e

import (
	"context"
	"testing"
)

// The daemon gives the Go runtime a soft memory limit of its journal, its
// peers' dedup indexes, one NBD connection's payload in flight and 48 MiB
// (cmd/repd memoryLimit), so a heap that a filled journal left behind
// does not double; GOMEMLIMIT in its environment wins.
func TestDaemonMemoryLimit(t *testing.T) {
	limit := func(n *node) float64 {
		t.Helper()
		m, err := n.h.Scrape(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		v, ok := m["go_gc_gomemlimit_bytes"]
		if !ok {
			t.Fatal("no go_gc_gomemlimit_bytes in /metrics")
		}
		return v
	}
	c := newCluster(t, clusterOpts{nodes: 2, protocol: "A", extra: "journal-size = \"8MiB\"\ndedup-index-size = \"4MiB\""})
	alpha := c.nodes[0]
	alpha.start()
	// 8 MiB journal + 1 peer × 4 MiB dedup index + 64 MiB NBD in flight + 48 MiB.
	if got, want := limit(alpha), float64((8+4+64+48)<<20); got != want {
		t.Fatalf("soft memory limit %.0f bytes, want %.0f", got, want)
	}
	t.Setenv("GOMEMLIMIT", "300MiB")
	beta := c.nodes[1]
	beta.start()
	if got, want := limit(beta), float64(300<<20); got != want {
		t.Fatalf("with GOMEMLIMIT=300MiB: soft memory limit %.0f bytes, want %.0f", got, want)
	}
}
