package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
)

// Replies from many goroutines at once, small ones (copied into the
// pending batch) and big ones (written from the caller's buffer), arrive
// whole and each exactly once, whatever batches they shared.
func TestRepliesConcurrent(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var gt gate
	gt.init(1<<20, 1<<40, 1<<40)
	var w replies
	w.init(a, &gt, 0, nil)
	const writers, each = 16, 200
	size := func(cookie uint64) int {
		switch cookie % 7 {
		case 0:
			return 0
		case 1:
			return copyReplyMax + 4096 // big: written from the buffer
		}
		return int(cookie%5) * 1024
	}
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				cookie := uint64(g*each + i)
				data := bytes.Repeat([]byte{byte(cookie)}, size(cookie))
				var h [SimpleReplySize]byte
				binary.BigEndian.PutUint32(h[0:], MagicSimpleReply)
				binary.BigEndian.PutUint64(h[8:], cookie)
				gt.acquire(int64(len(data)))
				if err := w.reply(h[:], data, cookie%3 != 0, true, int64(len(data))); err != nil { // both with and without the yield
					t.Error(err)
					return
				}
				// The caller may reuse its buffer at once.
				clear(data)
			}
		}()
	}
	seen := make(map[uint64]bool)
	for len(seen) < writers*each {
		var h [SimpleReplySize]byte
		if _, err := io.ReadFull(b, h[:]); err != nil {
			t.Fatalf("after %d replies: %v", len(seen), err)
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != MagicSimpleReply {
			t.Fatalf("after %d replies: magic %#x", len(seen), m)
		}
		cookie := binary.BigEndian.Uint64(h[8:])
		if seen[cookie] {
			t.Fatalf("cookie %d twice", cookie)
		}
		seen[cookie] = true
		data := make([]byte, size(cookie))
		if _, err := io.ReadFull(b, data); err != nil {
			t.Fatal(err)
		}
		if want := bytes.Repeat([]byte{byte(cookie)}, len(data)); !bytes.Equal(data, want) {
			t.Fatalf("reply %d: data torn or reused", cookie)
		}
	}
	wg.Wait()
	// Every reply gave its budget back once written.
	checkGateEmpty(t, &gt)
	// After the peer is gone every reply fails, none hangs, and each still
	// gives its budget back.
	b.Close()
	var h [SimpleReplySize]byte
	gt.acquire(0)
	if err := w.reply(h[:], nil, false, true, 0); err == nil {
		t.Fatal("reply to a closed peer succeeded")
	}
	gt.acquire(copyReplyMax + 1)
	if err := w.reply(h[:], make([]byte, copyReplyMax+1), true, true, copyReplyMax+1); err == nil {
		t.Fatal("big reply after a failure succeeded")
	}
	checkGateEmpty(t, &gt)
}

func checkGateEmpty(t *testing.T, g *gate) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if n, b, bl := g.n.Load(), g.bytes, g.backlog.Load(); n != 0 || b != 0 || bl != 0 {
		t.Fatalf("gate after the replies: %d requests, %d bytes, backlog %d; want all 0", n, b, bl)
	}
}
