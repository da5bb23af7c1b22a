package replica

import (
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/protocol"
)

// drainLocked is a leaving Primary's last act toward its peers (Close): a
// final barrier after everything in the journal, waited for up to Timeout,
// so that under protocol A the writes still in the journal reach the peers
// before the connections go. Each peer is told first (State with
// StateOutdated, frame seq = the final barrier's) that unless it
// acknowledges that barrier before the connection ends, its data lacks
// writes: it then marks its disk Outdated instead of claiming UpToDate (the
// Primary's bitmap records the gap; a resync repairs it). n.mu held;
// released while waiting.
func (n *Node) drainLocked() {
	b := n.barrierLocked(0)
	if b == nil {
		return
	}
	for _, p := range n.peers {
		if b.Ship&p.bit != 0 && p.sess != nil && p.features.Load()&protocol.FeatureCluster != 0 {
			st := p.stateLocked(protocol.StateOutdated)
			p.sess.queue(ctrlMsg{t: protocol.TypeState, seq: b.Seq, payload: st.Append(nil)})
		}
	}
	n.mu.Unlock()
	t := time.NewTimer(n.cfg.Timeout)
	select {
	case <-b.DoneCh:
	case <-t.C:
	}
	t.Stop()
	n.mu.Lock()
	for _, p := range n.peers {
		if b.Ship&p.bit != 0 && b.Acked&p.bit == 0 {
			n.log.Warn("peer did not acknowledge the final barrier: it marks its disk Outdated", "peer", p.cfg.Name)
		}
	}
}

// leftLocked runs when the session s with a Primary that announced its
// final barrier ended: without that barrier acknowledged, this node's data
// lacks writes; n.mu held.
func (p *peer) leftLocked(s *session) error {
	n := p.n
	if s.leavingSeq == 0 || s.applier.acked.Load() >= s.leavingSeq || n.role != api.Secondary || n.super.Disk != diskUpToDate {
		return nil
	}
	n.log.Warn("the Primary left before its last writes were applied here: disk Outdated", "peer", p.cfg.Name)
	return n.persist(func(sb *bitmap.Superblock) { sb.Disk = diskOutdated })
}
