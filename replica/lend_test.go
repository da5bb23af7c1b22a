package replica

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/repd/repd/replica/internal/journal"
)

// A protocol-C write lends its buffer to the journal (lend). When its
// context ends while the peer has not answered, WriteAt returns only once
// the write completed (here: the peer dropped after the ack timeout), so
// the caller may reuse the buffer: what it writes there afterwards reaches
// neither node.
func TestLentWriteReturnsOnlyWhenDone(t *testing.T) {
	c := newCluster(t, 2, nil)
	n := c.bootstrap()
	r := rand.New(rand.NewPCG(c.seed, 7))
	buf := randBlock(r, 1<<20)
	want := bytes.Clone(buf)
	const off = 3 << 20

	c.proxy(0, 1).Stall(true)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	start := time.Now()
	go func() { res <- n.WriteAt(ctx, buf, off, false) }()
	time.Sleep(150 * time.Millisecond) // shipped, waiting for the ack
	cancel()
	var err error
	select {
	case err = <-res:
	case <-time.After(20 * time.Second):
		t.Fatal("WriteAt did not return within 20s of its context's end")
	}
	n.mu.Lock()
	held := n.journal.Bytes
	n.mu.Unlock()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteAt: %v, want context.Canceled", err)
	}
	if held != 0 {
		t.Fatalf("WriteAt returned after %v with %d bytes still in the journal: a shipper may still read the caller's buffer", time.Since(start), held)
	}
	t.Logf("WriteAt returned %v after it started (the ack timeout is %v)", time.Since(start), c.nodes[0].cfg.Timeout)
	for i := range buf {
		buf[i] = 0xA5 // the caller reuses its buffer
	}
	c.proxy(0, 1).Stall(false)
	c.waitSynced(20 * time.Second)
	for _, tn := range c.nodes {
		if got := readFileAt(t, tn.path, off, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("%s holds other data than the write's at %d", tn.cfg.Self.Name, off)
		}
	}
	c.assertEqualStores()
}

// A write that lent its buffer does not complete while a shipper holds its
// entry (a peer dropped while its sender writes the data out), and
// completes when the shipper lets go.
func TestLentEntryWaitsForShippers(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.nodes[0].n
	n.mu.Lock()
	e := pushShipped(n, true)
	n.maybeDoneLocked(e)
	closed := e.Closed
	n.mu.Unlock()
	if closed {
		t.Fatal("a lent write completed while a shipper held it")
	}
	select {
	case <-e.DoneCh:
		t.Fatal("a lent write's waiter was released while a shipper held it")
	default:
	}
	n.mu.Lock()
	e.Refs--
	n.maybeDoneLocked(e)
	n.journal.Trim()
	closed, freed := e.Closed, e.Freed
	n.mu.Unlock()
	if !closed || !freed {
		t.Fatalf("the shipper let go, yet closed=%v freed=%v", closed, freed)
	}
	<-e.DoneCh

	// The same entry, not lent, completes at once: its data is a copy.
	n.mu.Lock()
	e2 := pushShipped(n, false)
	n.maybeDoneLocked(e2)
	closed = e2.Closed
	e2.Refs--
	n.maybeDoneLocked(e2)
	n.journal.Trim()
	n.mu.Unlock()
	if !closed {
		t.Fatal("a write with its own copy waited for the shipper")
	}
}

// pushShipped puts in n's journal a 4 KiB write that is local and owes no
// ack, with one shipper holding it; n.mu held.
func pushShipped(n *Node, borrowed bool) *journal.Entry {
	e := &journal.Entry{Kind: journal.Write, Seq: n.nextSeq, N: 4096, Data: make([]byte, 4096), Size: journal.Overhead + 4096,
		Borrowed: borrowed, Ready: true, Local: true, Refs: 1, DoneCh: make(chan struct{})}
	n.nextSeq++
	n.journal.Push(e)
	return e
}
