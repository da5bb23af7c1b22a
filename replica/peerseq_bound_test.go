package replica

import (
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// fakePeerOf3 is fakePeer with a third node, gamma (id 3), in alpha's
// configuration: alpha keeps the writes the fake sends in its applied ring
// until the fake confirms gamma holds them (gamma never runs).
func fakePeerOf3(t *testing.T) (*Node, *protocol.Conn, func()) {
	t.Helper()
	n, conn, closeConn := fakePeerWith(t, func(c *Config) {
		c.Peers = append(c.Peers, PeerConfig{ID: 3, Name: "gamma", Addr: freeAddr(t)})
	})
	go func() { // drain alpha's acks: reading is not the attack
		for {
			if _, err := conn.ReadFrame(0); err != nil {
				return
			}
		}
	}()
	return n, conn, closeConn
}

// appliedRing reports the applied ring's entries and capacity.
func appliedRingSize(n *Node) (int, int) {
	n.applied.mu.Lock()
	defer n.applied.mu.Unlock()
	return len(n.applied.ents), cap(n.applied.ents)
}

// sendWrites sends writes first..last (sequence numbers) of 512 bytes,
// all to the same block, calling each every 256 writes, and waits until
// alpha applied them.
func sendWrites(t *testing.T, n *Node, conn *protocol.Conn, first, last uint64, each func()) {
	t.Helper()
	data := make([]byte, 512)
	head := (&protocol.Write{Off: 0, Len: 512}).AppendHead(nil)
	for seq := first; seq <= last; seq++ {
		if err := conn.W.WriteFrame(protocol.TypeWrite, 0, seq, head, data); err != nil {
			t.Fatal(err)
		}
		if seq%256 == 0 || seq == last {
			if err := conn.Flush(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			if each != nil {
				each()
			}
		}
	}
	waitFor(t, 30*time.Second, "alpha applied the writes", func() bool { return n.lastApplied.Load() >= last })
}

// A peer that streams writes whose copies on a third node it never
// confirms (no PeerSeqs) makes the node keep their ranges in the applied
// ring; the ring stays within maxApplied entries (it marks its oldest
// quarter out of sync toward the third node when full), whatever the
// number of writes: here three times the bound.
func TestAppliedRingBounded(t *testing.T) {
	n, conn, closeConn := fakePeerOf3(t)
	defer closeConn()
	const writes = 3 * maxApplied
	peakLen, peakCap := 0, 0
	watch := func() {
		l, c := appliedRingSize(n)
		peakLen, peakCap = max(peakLen, l), max(peakCap, c)
	}
	start := time.Now()
	sendWrites(t, n, conn, 1, writes, watch)
	watch()
	l, c := appliedRingSize(n)
	t.Logf("%d writes in %v: the ring holds %d entries (capacity %d); peak %d entries, capacity %d (bound %d)",
		writes, time.Since(start).Round(time.Millisecond), l, c, peakLen, peakCap, maxApplied)
	if st := peerState(n, "beta"); st.Connection != api.Connected {
		t.Fatalf("the fake was dropped: %s", st.LastError)
	}
	if peakLen > maxApplied {
		t.Fatalf("the applied ring reached %d entries, over maxApplied (%d)", peakLen, maxApplied)
	}
	if l < maxApplied*3/4 {
		t.Fatalf("the ring holds %d entries after %d unconfirmed writes: the test did not fill it", l, writes)
	}
	// The slice the ring is kept in: append may round it up, but it is
	// trimmed in place, never regrown past the bound.
	if peakCap > maxApplied+maxApplied/4 {
		t.Fatalf("the applied ring's slice grew to %d entries (bound %d)", peakCap, maxApplied)
	}
	if peerState(n, "gamma").OutOfSyncKiB == 0 {
		t.Fatal("no writes marked out of sync toward gamma")
	}
}

// PeerSeqs lists each node at most once (an honest Primary sends one entry
// per other node, peerSeqsLocked), and each entry costs a scan of the
// applied ring (up to maxApplied entries) under the node's lock: a frame
// that names a node twice is refused as a protocol error (before, a peer
// could make every frame cost 64 scans). A frame with distinct nodes is
// taken: it confirms the writes.
func TestPeerSeqsDuplicateNodeRefused(t *testing.T) {
	n, conn, closeConn := fakePeerOf3(t)
	defer closeConn()
	const writes = 1000
	sendWrites(t, n, conn, 1, writes, nil)
	if l, _ := appliedRingSize(n); l != writes {
		t.Fatalf("the ring holds %d entries after %d writes", l, writes)
	}
	// An honest frame: gamma holds the writes up to 600; alpha's own id
	// and the sender's are ignored.
	ok := protocol.AppendPeerSeqs(nil, []protocol.PeerSeq{{NodeID: 1, Seq: 900}, {NodeID: 2, Seq: 900}, {NodeID: 3, Seq: 600}})
	if err := conn.Send(time.Second, protocol.TypePeerSeqs, 0, 0, ok, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the writes confirmed", func() bool {
		l, _ := appliedRingSize(n)
		return l == writes-600
	})
	if st := peerState(n, "beta"); st.Connection != api.Connected {
		t.Fatalf("an honest PeerSeqs frame dropped the peer: %s", st.LastError)
	}
	// gamma twice (the most a frame holds: 64 times).
	dup := make([]protocol.PeerSeq, protocol.MaxPeerSeqs)
	for i := range dup {
		dup[i] = protocol.PeerSeq{NodeID: 3, Seq: 700}
	}
	if err := conn.Send(time.Second, protocol.TypePeerSeqs, 0, 0, protocol.AppendPeerSeqs(nil, dup), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the session dropped", func() bool {
		return strings.Contains(peerState(n, "beta").LastError, "PeerSeqs")
	})
	t.Logf("dropped: %s", peerState(n, "beta").LastError)
	if l, _ := appliedRingSize(n); l != 0 {
		// The session's end marks the unconfirmed writes toward gamma
		// and empties the ring of the fake's writes (appliedLost).
		t.Fatalf("%d entries left in the ring after the session ended", l)
	}
}
