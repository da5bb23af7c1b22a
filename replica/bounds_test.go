package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/journal"
)

// fakePeer plays beta (id 2) toward a real node alpha (id 1): it listens at
// beta's address, accepts alpha's connection with the shared secret, and
// negotiates as an Inconsistent Secondary of no generation, which a fresh
// alpha finds in sync. What it sends afterwards is the attack.
func fakePeer(t *testing.T) (*Node, *protocol.Conn, func()) {
	t.Helper()
	return fakePeerWith(t, nil)
}

// fakePeerWith is fakePeer with mod, if not nil, changing alpha's
// configuration before it starts.
func fakePeerWith(t *testing.T, mod func(*Config)) (*Node, *protocol.Conn, func()) {
	t.Helper()
	return fakePeerStore(t, mod, nil)
}

// fakePeerStore is fakePeerWith with wrap, if not nil, decorating alpha's
// store.
func fakePeerStore(t *testing.T, mod func(*Config), wrap func(Store) Store) (*Node, *protocol.Conn, func()) {
	t.Helper()
	addr := freeAddr(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c := &cluster{t: t, dir: t.TempDir(), logs: &syncBuf{}}
	tn := &tnode{path: c.dir + "/alpha.img", cfg: Config{
		Resource: "r0", Size: testSize, Self: PeerConfig{ID: 1, Name: "alpha", Addr: freeAddr(t)},
		Peers:    []PeerConfig{{ID: 2, Name: "beta", Addr: addr}},
		MetaPath: c.dir + "/alpha.meta", Secret: []byte("s3cret"), Timeout: 5 * time.Second, ConnectInterval: 50 * time.Millisecond,
	}}
	if mod != nil {
		mod(&tn.cfg)
	}
	tn.wrap = wrap
	c.nodes = []*tnode{tn}
	c.start(tn)
	t.Cleanup(func() { c.stop(tn) })
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn := protocol.NewConn(nc)
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	hello := &protocol.Hello{Features: protocol.Features, Size: testSize, Granularity: 4096, NodeID: 2, Resource: "r0", Name: "beta"}
	if _, err := protocol.Accept(conn, hello, []byte("s3cret"), nil); err != nil {
		t.Fatal(err)
	}
	st := protocol.State{Disk: protocol.WireDisk(diskInconsistent)}
	if err := conn.Send(0, protocol.TypeState, 0, 0, st.Append(nil), nil); err != nil {
		t.Fatal(err)
	}
	if err := conn.Send(0, protocol.TypeBitmap, protocol.FlagLast, 0, protocol.AppendExtents(nil, nil), nil); err != nil {
		t.Fatal(err)
	}
	// alpha's State and bitmap.
	for range 2 {
		if _, err := conn.ReadFrame(0); err != nil {
			t.Fatal(err)
		}
	}
	nc.SetDeadline(time.Time{})
	waitFor(t, 10*time.Second, "alpha connected to the fake beta", func() bool {
		return peerState(tn.n, "beta").Connection == api.Connected
	})
	return tn.n, conn, func() { nc.Close() }
}

// An authenticated peer that asks for answers (Pings) and never reads them
// does not make the node queue control frames without bound: the session
// fails, the peer is dropped, and the node keeps running.
func TestPeerThatDoesNotReadIsDropped(t *testing.T) {
	n, conn, closeConn := fakePeer(t)
	defer closeConn()
	start := time.Now()
	var err error
	for i := 0; i < 4*maxCtrlMsgs && err == nil; i++ {
		err = conn.W.WriteFrame(protocol.TypePing, 0, uint64(i), nil, nil)
		if err == nil && i%256 == 0 {
			err = conn.Flush(time.Second)
		}
	}
	waitFor(t, 20*time.Second, "the session dropped", func() bool {
		return strings.Contains(peerState(n, "beta").LastError, "does not read")
	})
	t.Logf("dropped after %v: %s", time.Since(start).Round(time.Millisecond), peerState(n, "beta").LastError)
}

// A peer that sends a write the node cannot resolve (a dedup reference to
// data it does not hold), never answers the request for its data, and
// sends write after write behind it, is dropped once the frames held back
// reach their bound: in bytes, with frames of 1 MiB and with frames of
// 32 KiB and 1 byte, whose copies the allocator rounds up to 40 KiB (the
// bound counts what the copies hold: before, 96 MiB of such payloads held
// 120 MiB, under the bound), and in frames, with small ones.
func TestUnresolvedDedupHoldBounded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload int   // bytes of each Write frame's payload (head and data)
		send    int64 // bytes of payloads sent behind the hole at most
	}{
		{"1MiB", protocol.WriteHeadSize + protocol.MaxData, 2 * maxHeldBytes},
		// Payloads that fit under the bound; their copies do not.
		{"32KiB+1", 32<<10 + 1, maxHeldBytes - 64<<10},
		{"frames", protocol.WriteHeadSize + 512, 2 * maxHeldFrames * int64(protocol.WriteHeadSize+512)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, conn, closeConn := fakePeer(t)
			defer closeConn()
			go func() { // drain what alpha sends (its DataReq): reading is not the attack
				for {
					if _, err := conn.ReadFrame(0); err != nil {
						return
					}
				}
			}()
			dw := protocol.DedupWrite{Off: 0, Len: 4096, Kinds: []protocol.BlockKind{protocol.BlockRef},
				Refs: []protocol.Ref{{Src: 8192, Hash: [32]byte{1}}}}
			if err := conn.Send(time.Second, protocol.TypeWrite, protocol.FlagDedup, 1, dw.AppendHead(nil), dw.Data); err != nil {
				t.Fatal(err)
			}
			data := make([]byte, tc.payload-protocol.WriteHeadSize)
			var err error
			seq := uint64(2)
			for sent := int64(0); sent+int64(tc.payload) <= tc.send && err == nil; sent += int64(tc.payload) {
				w := protocol.Write{Off: 0, Len: uint64(len(data))}
				err = conn.Send(time.Second, protocol.TypeWrite, 0, seq, w.AppendHead(nil), data)
				seq++
			}
			waitFor(t, 20*time.Second, "the session dropped", func() bool {
				return strings.Contains(peerState(n, "beta").LastError, "behind the unresolved write")
			})
			if err != nil && !errors.Is(err, net.ErrClosed) && !isConnReset(err) {
				t.Logf("sender stopped with %v", err)
			}
			t.Logf("%d frames sent behind the hole: %s", seq-2, peerState(n, "beta").LastError)
			if s := n.Status(); s.Disk != "Inconsistent" {
				t.Fatalf("alpha's disk changed: %s", s.Disk)
			}
		})
	}
}

func isConnReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "broken pipe"))
}

// Under protocol A the journal keeps a copy of every write a peer has not
// acknowledged, and journal-size bounds the memory of those copies
// whatever the writes' size: a copy counts its pooled buffer (its size
// rounded up to a power of two, at least 512 bytes), not only its data.
// With the peer cut off, writes of 512 bytes, 4.5 KiB and 68 KiB fill a
// 4 MiB journal until it declines the next; the buffers it then holds,
// and the growth of the heap, stay within the bound. (Before, with 4 KiB,
// 64 KiB and 1 MiB buffers counted at their data's size, the journal held
// 26, 55 and 60 MiB of buffers.)
func TestJournalMemoryBounded(t *testing.T) {
	const max = 4 << 20
	heap := func() int64 {
		runtime.GC()
		runtime.GC() // the second empties the buffer pools' victim caches
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	for _, size := range []int{512, 4608, 68 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c := newCluster(t, 2, func(_ int, cfg *Config) {
				cfg.Protocol = api.ProtocolA
				cfg.JournalBytes = max
			})
			alpha := c.bootstrap()
			c.isolate(1, true)
			defer c.isolate(1, false)
			buf := bytes.Repeat([]byte{0xa5}, size)
			before := heap()
			var started []*asyncResult
			for i := 0; ; i++ {
				r := newAsyncResult()
				off := int64(i) * int64(size) % (testSize - int64(size)) &^ 511
				if !alpha.StartWrite(context.Background(), buf, off, false, false, r.done) {
					break
				}
				started = append(started, r)
				if len(started) > max/512 {
					t.Fatalf("%d writes of %d bytes started into a %d-byte journal", len(started), size, max)
				}
			}
			alpha.Kick()
			for i, r := range started {
				if err := r.wait(t, "write"); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			alpha.mu.Lock()
			var held, data int64
			ents, copies := 0, 0
			for pos := alpha.journal.Base; pos < alpha.journal.End(); pos++ {
				e := alpha.journal.At(pos)
				if e.Closed || e.Kind != journal.Write {
					continue
				}
				ents++
				if e.Buf != nil {
					copies++
				}
				held += int64(cap(e.Data)) + journal.Overhead
				data += int64(len(e.Data))
			}
			counted := alpha.journal.Bytes
			alpha.mu.Unlock()
			grown := heap() - before
			t.Logf("%d writes of %d bytes: %d in the journal (%d copies), %d bytes of data in %d bytes of buffers, counted %d; heap grew %d bytes",
				len(started), size, ents, copies, data, held, counted, grown)
			if ents != len(started) || copies != ents {
				t.Fatalf("%d of %d writes held by the journal, %d as copies: the peer was not cut off", ents, len(started), copies)
			}
			if held < max/2 {
				t.Fatalf("the journal declined holding only %d bytes of buffers", held)
			}
			if held > max {
				t.Fatalf("the journal's copies hold %d bytes, over its %d-byte bound", held, max)
			}
			if grown > max+max/4 {
				t.Fatalf("the heap grew by %d bytes to fill a %d-byte journal", grown, max)
			}
		})
	}
}
