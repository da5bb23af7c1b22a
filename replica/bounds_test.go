package replica

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// fakePeer plays beta (id 2) toward a real node alpha (id 1): it listens at
// beta's address, accepts alpha's connection with the shared secret, and
// negotiates as an Inconsistent Secondary of no generation, which a fresh
// alpha finds in sync. What it sends afterwards is the attack.
func fakePeer(t *testing.T) (*Node, *protocol.Conn, func()) {
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
// reach their bound.
func TestUnresolvedDedupHoldBounded(t *testing.T) {
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
	data := make([]byte, protocol.MaxData)
	var err error
	seq := uint64(2)
	for sent := int64(0); sent < 2*maxHeldBytes && err == nil; sent += int64(len(data)) {
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
	if s := n.Status(); s.Disk != "Inconsistent" {
		t.Fatalf("alpha's disk changed: %s", s.Disk)
	}
}

func isConnReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "broken pipe"))
}
