package replica

import (
	"sync"

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
			q.bm.Set(w.off, w.n)
		}
	}
}

// onPeerSeqs confirms the writes from p that the listed nodes hold.
func (n *Node) onPeerSeqs(p *peer, ps []protocol.PeerSeq) {
	r := &n.applied
	r.mu.Lock()
	defer r.mu.Unlock()
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
	if n.role != Primary || p.ls.features.Load()&protocol.FeatureCluster == 0 {
		return nil
	}
	s.seqs = s.seqs[:0]
	changed := len(s.sentSeqs) != len(n.peers)-1
	for _, q := range n.peers {
		if q == p {
			continue
		}
		i := len(s.seqs)
		s.seqs = append(s.seqs, protocol.PeerSeq{NodeID: q.cfg.ID, Seq: q.haveSeq})
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
