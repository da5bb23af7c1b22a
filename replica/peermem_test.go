package replica

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/journal"
)

// An authenticated peer that streams FUA writes of a whole frame to one
// range (each waits for the one before it and for an fdatasync, so they
// queue for the workers) makes the node hold no more than journal-size of
// copies: the receiver stops reading at the budget. Before the budget the
// queue was bounded by count alone: 321 copies, +339 MiB of heap. The
// store takes 20 ms per FUA write, as a slow disk's flush does: the queue
// fills up whatever the machine's disk and the race detector (with an
// idle disk, under -race, the workers kept up and nothing queued).
func TestApplierQueueBytesBounded(t *testing.T) {
	n, conn, closeConn := fakePeerStore(t, nil, func(s Store) Store { return slowFUAStore{s} })
	defer closeConn()
	go func() { // drain alpha's acks: reading them is not the attack
		for {
			if _, err := conn.ReadFrame(0); err != nil {
				return
			}
		}
	}()
	p, _ := n.peerByName("beta")
	var a *applier
	waitFor(t, 10*time.Second, "the session's applier", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		if p.sess != nil && p.sess.running.Load() { // set after the applier
			a = p.sess.applier
		}
		return a != nil
	})
	budget := n.cfg.JournalBytes
	heap := func() int64 { // what is live, the pools' buffers included
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	base := heap()
	data := make([]byte, protocol.MaxData)
	const writes = 150
	done := make(chan error, 1)
	go func() {
		for seq := uint64(1); seq <= writes; seq++ {
			w := protocol.Write{Off: 0, Len: uint64(len(data))}
			if err := conn.Send(10*time.Second, protocol.TypeWrite, protocol.FlagFUA, seq, w.AppendHead(nil), data); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var peakHeld, peakHeap int64
	peakCopies, samples := 0, 0
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	sample := func() {
		a.mu.Lock()
		held, copies := a.held, 0
		for _, it := range a.active {
			if it.cost > 0 {
				copies++
			}
		}
		a.mu.Unlock()
		peakHeld, peakCopies = max(peakHeld, held), max(peakCopies, copies)
		if samples++; samples%20 == 0 {
			peakHeap = max(peakHeap, heap()-base)
		}
	}
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("sending: %v", err)
			}
			waiting = false
		case <-tick.C:
			sample()
		}
	}
	waitFor(t, 60*time.Second, "every write applied", func() bool {
		sample()
		return a.acked.Load() == writes
	})
	t.Logf("%d FUA writes of %d bytes: at most %d copies queued, %d bytes counted (budget %d), live heap +%d bytes (sampled)",
		writes, len(data), peakCopies, peakHeld, budget, peakHeap)
	if int64(peakCopies)*int64(len(data)) < budget/2 {
		t.Fatalf("at most %d copies queued: the writes did not queue for the workers up to the budget", peakCopies)
	}
	if peakHeld > budget || int64(peakCopies)*int64(len(data)) > budget {
		t.Fatalf("the applier held %d copies (%d bytes counted) over its %d-byte budget", peakCopies, peakHeld, budget)
	}
	if peakHeap > budget+budget/4 {
		t.Fatalf("the heap grew by %d bytes, over the %d-byte budget and a quarter", peakHeap, budget)
	}
}

// slowFUAStore makes every FUA write take 20 ms more.
type slowFUAStore struct{ Store }

func (s slowFUAStore) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if fua {
		time.Sleep(20 * time.Millisecond)
	}
	return s.Store.WriteAt(ctx, p, off, fua)
}

// slowReadStore makes every read wait: a verify target hashes its copy
// late, and the source's Verify entries wait for its answers.
type slowReadStore struct {
	Store
	slow *atomic.Bool
}

func (s *slowReadStore) ReadAt(ctx context.Context, p []byte, off int64) error {
	if s.slow.Load() {
		time.Sleep(20 * time.Millisecond)
	}
	return s.Store.ReadAt(ctx, p, off)
}

// A verify source's journal counts each Verify entry's hashes (about 8 KiB
// a batch) against journal-size, so the half of the journal a verify may
// use bounds what its entries hold while the target answers late. Counted
// at 384 bytes each, the half of a 64 MiB journal admitted 87,381 of them.
func TestVerifyEntriesCountTheirHashes(t *testing.T) {
	var slow atomic.Bool
	const journalMax = 1 << 20
	c := newClusterWrap(t, 2, func(_ int, cfg *Config) { cfg.JournalBytes = journalMax }, func(i int, s Store) Store {
		if i == 1 {
			return &slowReadStore{Store: s, slow: &slow}
		}
		return s
	})
	alpha := c.bootstrap()
	waitFor(t, 10*time.Second, "alpha sees beta UpToDate", func() bool {
		ps := peerState(alpha, "beta")
		return ps.Disk == "UpToDate" && ps.Replication == api.Established
	})
	slow.Store(true)
	defer slow.Store(false)
	if err := alpha.Verify("beta"); err != nil {
		t.Fatal(err)
	}
	var peakHeld, peakEnts int64
	for running := true; running; {
		alpha.mu.Lock()
		var held, ents int64
		for pos := alpha.journal.Base; pos < alpha.journal.End(); pos++ {
			// Its hashes are in once hashed (Local, set under mu
			// after hashLocal, which writes e.Data without it).
			if e := alpha.journal.At(pos); !e.Closed && e.Kind == journal.Verify && e.Local {
				held += int64(cap(e.Data)) + journal.Overhead
				ents++
			}
		}
		counted := alpha.journal.Bytes
		alpha.mu.Unlock()
		running = peerState(alpha, "beta").Replication == api.VerifySource
		if held > counted {
			t.Fatalf("%d Verify entries hold %d bytes, the journal counts %d", ents, held, counted)
		}
		peakHeld, peakEnts = max(peakHeld, held), max(peakEnts, ents)
		time.Sleep(time.Millisecond)
	}
	t.Logf("verify of %d bytes: at most %d Verify entries open, holding %d bytes (journal %d)", testSize, peakEnts, peakHeld, journalMax)
	if peakEnts < 2 {
		t.Fatalf("at most %d Verify entry open: the target answered too soon to test", peakEnts)
	}
	if peakHeld > journalMax/2 {
		t.Fatalf("Verify entries held %d bytes, over half the %d-byte journal", peakHeld, journalMax)
	}
}
