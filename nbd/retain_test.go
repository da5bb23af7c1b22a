package nbd_test

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
)

// replyBatch is the reply batch of srv's only connection.
func replyBatch(t *testing.T, srv *nbd.Server) nbd.ReplyBatch {
	t.Helper()
	b := srv.ReplyBatches()
	if len(b) != 1 {
		t.Fatalf("%d connections, want 1", len(b))
	}
	return b[0]
}

// copiedReply is the size of the reply to a read of nbd.CopyReplyMax
// bytes, which the reply writer copies into its batch.
const copiedReply = nbd.SimpleReplySize + nbd.CopyReplyMax

// copiedReads pipelines n reads of nbd.CopyReplyMax bytes with cookies
// from first.
func copiedReads(t *testing.T, nc net.Conn, first, n int) {
	t.Helper()
	var b []byte
	for i := range n {
		b = append(b, request(nbd.CmdRead, 0, uint64(first+i), uint64(i%32)*nbd.CopyReplyMax, nbd.CopyReplyMax)...)
	}
	if _, err := nc.Write(b); err != nil { // the reader takes requests while replies wait
		t.Fatal(err)
	}
}

// A burst of small replies queued behind a client that does not read grows
// the connection's reply batch beyond maxRetained (1 MiB): once the client
// reads them, the connection does not keep that batch for reuse. It keeps
// at most maxRetained in each of its two batch buffers, the pending one
// and the spare: two batches of just under 1 MiB, the second queued while
// the first is written, leave both kept (doc.go: two reply batches of at
// most 1 MiB each).
func TestReplyBatchRetained(t *testing.T) {
	srv := &nbd.Server{MaxInFlight: 512, WriteTimeout: -1, Exports: []nbd.Export{{Device: newMem(testSize)}}}
	nc, br, _, _ := pipeGo(t, srv)
	all := func(uint64) int { return nbd.CopyReplyMax }
	settled := func(what string, cond func(nbd.ReplyBatch) bool) nbd.ReplyBatch {
		t.Helper()
		var b nbd.ReplyBatch
		waitFor(t, what, 10*time.Second, func() bool { b = replyBatch(t, srv); return cond(b) })
		return b
	}
	idle := func(b nbd.ReplyBatch) bool { return !b.Writing && b.PendingLen == 0 && b.Backlog == 0 }
	check := func(when string) {
		t.Helper()
		b := settled("the writer done "+when, idle)
		t.Logf("%s: keeps a pending batch of %d bytes and a spare of %d", when, b.PendingCap, b.SpareCap)
		if b.PendingCap > nbd.MaxRetained || b.SpareCap > nbd.MaxRetained {
			t.Fatalf("%s: the connection keeps reply batches of %d and %d bytes, over maxRetained (%d)", when, b.PendingCap, b.SpareCap, nbd.MaxRetained)
		}
	}

	// holdWriter sends one read and waits until its reply's writer waits
	// on the pipe (nobody reads) with that reply alone: the replies that
	// follow pile up in the pending batch.
	holdWriter := func(cookie int) {
		t.Helper()
		copiedReads(t, nc, cookie, 1)
		settled("the writer held", func(b nbd.ReplyBatch) bool {
			return b.Writing && b.PendingLen == 0 && b.Backlog > 0
		})
	}

	// 1. A burst of 4 MiB of replies.
	const burst = 256
	holdWriter(0)
	copiedReads(t, nc, 1, burst-1)
	b := settled("the burst queued", func(b nbd.ReplyBatch) bool { return b.PendingLen == (burst-1)*copiedReply })
	t.Logf("burst queued: pending batch of %d bytes in %d (backlog %d)", b.PendingLen, b.PendingCap, b.Backlog)
	if b.PendingCap <= 2*nbd.MaxRetained {
		t.Fatalf("the burst grew the batch to %d bytes only: the test does not reach the bound", b.PendingCap)
	}
	readReplies(t, nc, br, burst, all)
	check("after the 4 MiB burst")

	// 2. Two batches of just under maxRetained each (k replies, the most
	// whose appends from nil leave a batch within it), the second queued
	// while the first is written: both buffers fill up.
	k := 0
	for b := []byte(nil); ; k++ {
		b = append(b, make([]byte, nbd.SimpleReplySize)...)
		b = append(b, make([]byte, nbd.CopyReplyMax)...)
		if cap(b) > nbd.MaxRetained {
			break
		}
	}
	holdWriter(1000)
	copiedReads(t, nc, 1001, k)
	settled("the first batch queued", func(b nbd.ReplyBatch) bool { return b.PendingLen == k*copiedReply })
	readReplies(t, nc, br, 1, all) // the writer takes the batch and waits on the pipe again
	settled("the first batch taken", func(b nbd.ReplyBatch) bool { return b.Writing && b.PendingLen == 0 })
	copiedReads(t, nc, 2000, k)
	settled("the second batch queued", func(b nbd.ReplyBatch) bool { return b.PendingLen == k*copiedReply })
	readReplies(t, nc, br, 2*k, all)
	check(fmt.Sprintf("after two batches of %d replies", k))
}

// grown is the capacity of a batch grown by append from nil for one reply
// of size bytes (as the reply writer appends: the header, then the data).
func grown(size int) int {
	b := append([]byte(nil), make([]byte, nbd.SimpleReplySize)...)
	b = append(b, make([]byte, size-nbd.SimpleReplySize)...)
	return cap(b)
}

// The reply backlog (MaxReplyBacklog) bounds what the queued replies hold,
// not only their length: a client that does not read and sends requests
// the reader refuses itself (16-byte replies, no in-flight budget) fills
// the pending batch to the bound and no further, however append grows it.
// (Before, the backlog counted the replies' length, and a batch of just
// over a capacity step grew by a quarter past the bound: a bound of
// 1,130,528 bytes let the batches hold 1,419,264.)
func TestReplyBacklogHoldsBatchCapacity(t *testing.T) {
	// The batch of 16-byte replies from nil: its first capacity of 1 MiB
	// or more, C, whose next append grows it by a quarter.
	var batch []byte
	for cap(batch) < 1<<20 {
		batch = append(batch, make([]byte, nbd.SimpleReplySize)...)
	}
	c := cap(batch)
	// The writer is held on a first reply; then the bound leaves room
	// for a batch of just over C.
	backlog := copiedReply + c + nbd.SimpleReplySize
	var handled atomic.Int64
	srv := &nbd.Server{MaxReplyBacklog: backlog, WriteTimeout: -1,
		Exports:   []nbd.Export{{Device: newMem(testSize)}},
		OnRequest: func(string, int64, time.Duration, error) { handled.Add(1) }}
	nc, _, _, _ := pipeGo(t, srv)
	copiedReads(t, nc, 0, 1)
	var b nbd.ReplyBatch
	waitFor(t, "the writer held", 10*time.Second, func() bool {
		b = replyBatch(t, srv)
		return b.Writing && b.PendingLen == 0 && b.Backlog > 0
	})
	// The batch being written holds one reply in a buffer grown from nil:
	// what the backlog counts for it, or if more (counting its length)
	// what append grows such a buffer to.
	first := max(int(b.Backlog), grown(copiedReply))
	// Refused requests (an unknown flag), twice what the bound takes.
	n := 2 * backlog / nbd.SimpleReplySize
	reqs := make([]byte, 0, n*nbd.RequestSize)
	for i := 1; i <= n; i++ {
		reqs = append(reqs, request(nbd.CmdRead, 1<<9, uint64(i), 0, 512)...)
	}
	go nc.Write(reqs) // blocks once the reader stops
	got := settle(handled.Load)
	b = replyBatch(t, srv)
	held := first + b.PendingCap // the batch being written and the pending one
	t.Logf("%d refused requests answered: pending batch of %d bytes in %d; held %d bytes of batches, counted %d, bound %d",
		got, b.PendingLen, b.PendingCap, held, b.Backlog, backlog)
	if got >= int64(n) {
		t.Fatal("every request answered: the reader did not stop at the bound")
	}
	if b.PendingLen < c/2 {
		t.Fatalf("the reader stopped with %d bytes of replies pending, far under the bound", b.PendingLen)
	}
	// One reply may go past the bound: the last one the reader admitted.
	if held > backlog+nbd.SimpleReplySize {
		t.Fatalf("the reply batches hold %d bytes, over MaxReplyBacklog (%d)", held, backlog)
	}
	if b.Backlog < int64(held) {
		t.Fatalf("the backlog counts %d bytes for batches of %d", b.Backlog, held)
	}
}
