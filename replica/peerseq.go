package replica

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// What a Secondary knows of the other Secondaries (DRBD's "peer in sync"
// information). A Secondary applying the Primary's writes does not know
// whether a third node got them too: that node may have died with them in
// flight, the Primary marking them only in its own bitmap. If the Primary
// is lost next and this node is promoted, its bitmap toward the third node
// must cover those writes.
//
// So the Secondary keeps the range of every application write it applied
// (appliedRing) until the Primary reports, per other node, a sequence number
// up to which that node holds every write (PeerSeqs; the Primary's haveSeq:
// its cumulative ack, while nothing is marked out of sync toward it). When
// the connection to the Primary ends first, the writes still unconfirmed
// for a node are marked out of sync toward it. The ring is bounded: when
// full, its oldest writes are marked the same way.

//
// Those marks (and the ones an applier makes toward a node it does not
// ship to, apply.go) are "soft": they only say that the other node may lack
// writes of the Primary. Once the Primary reports that node holding every
// write up to a sequence number at or past the newest soft mark, they are
// stale and are cleared (clearSoftLocked), unless bits were also set for
// any other reason since the bitmap was last clear ("hard": a bitmap
// exchange, a crash, verify, invalidate...). Without this, a Secondary
// that lost its connection to a living Primary kept marks toward the other
// Secondary forever.

// markOrigin records why a peer's bitmap holds bits on a Secondary.
type markOrigin struct {
	hard atomic.Bool // bits set for another reason since the last clear

	mu   sync.Mutex
	from *peer  // the sender whose writes the soft marks came from
	seq  uint64 // the highest of its sequence numbers marked
}

// setHard notes bits set for a reason other than a soft mark. Cheap when
// already set (a degraded Primary marks on every write).
func (m *markOrigin) setHard() {
	if !m.hard.Load() {
		m.hard.Store(true)
	}
}

// soft records a soft mark of from's write seq; dirty: the bitmap held
// bits before it.
func (m *markOrigin) soft(from *peer, seq uint64, dirty bool) {
	m.mu.Lock()
	switch {
	case m.from != nil && m.from != from:
		m.setHard() // marks of two senders' sequence spaces
	case m.from == nil && dirty:
		m.setHard() // bits of unknown origin (loaded from the meta file)
	}
	m.from = from
	m.seq = max(m.seq, seq)
	m.mu.Unlock()
}

func (m *markOrigin) reset() {
	m.mu.Lock()
	m.from, m.seq = nil, 0
	m.hard.Store(false)
	m.mu.Unlock()
}

// maxApplied bounds the applied ring (entries).
const maxApplied = 1 << 16

type appliedWrite struct {
	from        *peer // the Primary that sent it (its sequence space)
	seq         uint64
	off, n      int64
	unconfirmed uint64 // peers (bits) that may lack it
}

type appliedRing struct {
	mu   sync.Mutex
	ents []appliedWrite
}

// add records a write from p before it is applied.
func (n *Node) noteApplied(p *peer, seq uint64, off, length int64) {
	others := n.allMask() &^ p.bit
	if others == 0 {
		return
	}
	r := &n.applied
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ents) >= maxApplied {
		k := len(r.ents) / 4
		for _, w := range r.ents[:k] {
			n.markUnconfirmed(w)
		}
		r.ents = append(r.ents[:0], r.ents[k:]...)
	}
	r.ents = append(r.ents, appliedWrite{from: p, seq: seq, off: off, n: length, unconfirmed: others})
}

func (n *Node) markUnconfirmed(w appliedWrite) {
	for _, q := range n.peers {
		if w.unconfirmed&q.bit != 0 {
			q.marks.soft(w.from, w.seq, q.bitmap.Count() > 0)
			q.bitmap.Set(w.off, w.n)
		}
	}
}

// onPeerSeqs confirms the writes from p that the listed nodes hold, and
// clears soft marks toward them that those confirmations make stale.
//
// Each entry costs a scan of the ring under n.mu, and an honest Primary
// lists each other node once (peerSeqsLocked): a frame that names a node
// twice is a protocol error, which ends the session (its 64 entries for one
// node held n.mu for 64 scans of a full ring, 3.5 ms, per frame of 577
// bytes).
func (n *Node) onPeerSeqs(p *peer, ps []protocol.PeerSeq) error {
	var seen [256]bool
	for _, e := range ps {
		if seen[e.NodeID] {
			return p.readErr("PeerSeqs", fmt.Errorf("%w: node %d listed twice; a Primary lists each node once", protocol.ErrUnexpected, e.NodeID))
		}
		seen[e.NodeID] = true
	}
	n.mu.Lock()
	defer n.unlock()
	n.markMu.Lock()
	defer n.markMu.Unlock()
	r := &n.applied
	r.mu.Lock()
	defer r.mu.Unlock()
	n.clearSoftLocked(p, ps)
	for _, e := range ps {
		var q *peer
		for _, x := range n.peers {
			if x.cfg.ID == e.NodeID {
				q = x
			}
		}
		if q == nil || q == p {
			continue
		}
		for i := range r.ents {
			if w := &r.ents[i]; w.from == p && w.seq <= e.Seq {
				w.unconfirmed &^= q.bit
			}
		}
	}
	k := 0
	for _, w := range r.ents {
		if w.unconfirmed != 0 {
			r.ents[k] = w
			k++
		}
	}
	clear(r.ents[k:])
	r.ents = r.ents[:k]
	return nil
}

// appliedLost marks, after the connection to p ended, every write from p
// not confirmed on another node out of sync toward that node.
func (n *Node) appliedLost(p *peer) int {
	r := &n.applied
	r.mu.Lock()
	defer r.mu.Unlock()
	k, lost := 0, 0
	for _, w := range r.ents {
		if w.from == p {
			n.markUnconfirmed(w)
			lost++
			continue
		}
		r.ents[k] = w
		k++
	}
	clear(r.ents[k:])
	r.ents = r.ents[:k]
	return lost
}

// peerSeqsLocked is the PeerSeqs payload for p, or nil if it did not change
// since last; n.mu held.
func (s *session) peerSeqsLocked() []byte {
	p, n := s.p, s.p.n
	if n.role != api.Primary || p.voteOnly || p.features.Load()&protocol.FeatureCluster == 0 {
		return nil
	}
	s.seqs = s.seqs[:0]
	changed := len(s.sentSeqs) != len(n.peers)-1
	for _, q := range n.peers {
		if q == p {
			continue
		}
		i := len(s.seqs)
		s.seqs = append(s.seqs, protocol.PeerSeq{NodeID: q.cfg.ID, Seq: q.progress.Have})
		if !changed && s.sentSeqs[i] != s.seqs[i] {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	s.sentSeqs = append(s.sentSeqs[:0], s.seqs...)
	return protocol.AppendPeerSeqs(nil, s.seqs)
}

// clearSoftLocked clears this Secondary's bitmap toward every node that the
// Primary p reports holding all of p's writes up to a sequence number at or
// past the newest soft mark, if the bitmap holds soft marks of p only.
// n.mu, n.markMu (for writing: no applier marks meanwhile) and the applied
// ring's lock held.
func (n *Node) clearSoftLocked(p *peer, ps []protocol.PeerSeq) {
	if n.role != api.Secondary || p.peerRole != api.Primary {
		return
	}
	for _, e := range ps {
		var q *peer
		for _, x := range n.peers {
			if x.cfg.ID == e.NodeID {
				q = x
			}
		}
		if q == nil || q == p || e.Seq == 0 {
			continue
		}
		m := &q.marks
		m.mu.Lock()
		stale := !m.hard.Load() && m.from == p && m.seq <= e.Seq
		m.mu.Unlock()
		if !stale || q.bitmap.Count() == 0 {
			continue
		}
		n.log.Info("cleared marks toward a node the Primary reports holding those writes", "peer", q.cfg.Name, "primary", p.cfg.Name, "up_to_seq", e.Seq, "bytes", q.bitmap.DirtyBytes())
		q.bitmap.ClearAll()
		m.reset()
		if q.sess != nil {
			q.sendStateLocked(0)
		}
	}
}
