package replica

import (
	"context"
	"fmt"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/decide"
)

// peerViews builds the promote decision's input; n.mu held.
func (n *Node) peerViews() []decide.PeerView {
	v := make([]decide.PeerView, len(n.peers))
	for i, p := range n.peers {
		v[i] = decide.PeerView{Name: p.cfg.Name, Connected: p.conn == api.Connected, Role: p.peerRole, Repl: p.repl,
			Newer: p.conn == api.Connected && p.verdict.Rel == decide.RelPeerNewer}
	}
	return v
}

// Demote makes this node Secondary: new writes are refused at once,
// in-flight ones complete, everything is flushed (to the peers too), then
// the role changes.
func (n *Node) Demote() error {
	n.mu.Lock()
	if err := decide.CanDemote(n.role); err != nil || n.demoting {
		n.mu.Unlock()
		if err == nil {
			err = fmt.Errorf("%w: a demote is already in progress", ErrRefused)
		}
		return err
	}
	n.demoting = true
	for n.writing > 0 {
		n.cond.Wait()
	}
	n.mu.Unlock()
	ferr := n.flush(context.Background(), true)
	if ferr == nil {
		// No write is in flight: release the activity log (flushing
		// its bits) before the crash flag goes.
		ferr = n.meta.ReleaseIdle(context.Background())
	}
	n.mu.Lock()
	defer n.unlock()
	n.demoting = false
	n.role = api.Secondary
	err := n.persist(func(sb *bitmap.Superblock) {
		if ferr == nil {
			sb.Flags &^= bitmap.FlagPrimary
		}
	})
	n.recomputeLocked()
	n.broadcastLocked()
	n.log.Info("demoted to Secondary")
	n.event("role", "", api.Primary.String(), api.Secondary.String(), "")
	for _, p := range n.peers {
		if p.conn == api.Connected {
			p.sendStateLocked(0)
		}
	}
	if ferr != nil {
		n.log.Warn("flush during demote failed", "err", ferr)
	}
	return err
}

// NewCurrentUUID starts a new data generation. With clearBitmap (DRBD's
// new-current-uuid --clear-bitmap) it declares the data of every connected
// node identical: this node and the connected peers become UpToDate with
// the new UUID and empty bitmaps, skipping the initial full sync of
// brand-new empty disks. Refused on a Primary, and while a peer is syncing.
func (n *Node) NewCurrentUUID(clearBitmap bool) error {
	n.mu.Lock()
	defer n.unlock()
	if n.role == api.Primary && clearBitmap {
		return fmt.Errorf("%w: new-current-uuid --clear-bitmap is for fresh, idle resources; demote first", ErrRefused)
	}
	for _, p := range n.peers {
		if p.conn == api.Connected && p.peerRole == api.Primary {
			return fmt.Errorf("%w: peer %s is Primary; run it there", ErrRefused, p.cfg.Name)
		}
		if p.conn == api.Connected && p.repl != api.Established && p.repl != api.PausedSync {
			return fmt.Errorf("%w: peer %s is %s; wait for it to finish", ErrRefused, p.cfg.Name, p.repl)
		}
	}
	u := newUUID()
	err := n.persist(func(sb *bitmap.Superblock) {
		if sb.GI.Current != 0 {
			sb.GI.History = [2]uint64{sb.GI.Current, sb.GI.History[0]}
		}
		sb.GI.Current = u
		if clearBitmap {
			sb.Disk = diskUpToDate
			for _, p := range n.peers {
				if p.conn == api.Connected {
					sb.GI.Bitmap[p.slot] = 0
				}
			}
		}
	})
	if err != nil {
		return err
	}
	for _, p := range n.peers {
		if p.conn != api.Connected {
			continue
		}
		if clearBitmap {
			p.peerDisk = diskUpToDate
			to := p.repl
			if to == api.PausedSync {
				to = api.Established
			}
			p.settleLocked(to)
		}
		var f uint8
		if clearBitmap {
			f = protocol.StateNewUUID
		}
		p.sendStateLocked(f)
	}
	n.recomputeLocked()
	if err := n.flushBitmapsLocked("new-current-uuid"); err != nil {
		return err
	}
	n.log.Info("new current UUID", "current", api.FormatUUID(u), "clear_bitmap", clearBitmap)
	return nil
}

// Promotion is a cluster-wide state change in two phases, like DRBD 9's:
// while connected to peers, the node to be promoted asks every connected
// peer (PromoteReq) and becomes Primary only once each granted it. A peer
// grants unless it is Primary, holds a grant for another node, or is
// promoting itself with a lower node id (of two concurrent promotions the
// lower node id wins; the other is refused with "peer X is becoming
// Primary"). A grant is held, so the granting node neither promotes itself
// nor grants another, until the requester says it is done (PromoteEnd,
// after its new State) or the connection ends.
//
// A peer that does not answer within Timeout has its connection dropped,
// like a peer that does not ack writes (DRBD drops a connection whose
// two-phase commit reply times out), and the promotion is refused: a
// retry then promotes without it, and the new generation (the peer is away)
// makes it resync, or report split brain, when it comes back.

// promoteWait is a promotion waiting for its peers' answers; n.mu guards it.
type promoteWait struct {
	token   uint64
	asked   map[*peer]bool
	replies map[*peer]string // "" granted, else the refusal
	done    chan struct{}
}

// grant is a promotion this node granted to peer p.
type grant struct {
	p     *peer
	token uint64
	until time.Time // safety net: a grant lapses after this
}

// grantBlocksLocked refuses while this node holds a grant for another node;
// n.mu held.
func (n *Node) grantBlocksLocked(except *peer) error {
	g := n.grant
	if g == nil || g.p == except {
		return nil
	}
	if time.Now().After(g.until) {
		n.grant = nil
		return nil
	}
	return fmt.Errorf("%w: peer %s is becoming Primary", ErrRefused, g.p.cfg.Name)
}

// Promote makes this node Primary. Without force it refuses a disk that is
// not UpToDate; it always refuses while a connected peer is Primary or is
// becoming Primary (see above).
func (n *Node) Promote(force bool) error {
	n.mu.Lock()
	if err := n.canStartPromoteLocked(force); err != nil || n.role == api.Primary {
		n.unlock()
		return err
	}
	asked := map[*peer]bool{}
	for _, p := range n.peers {
		if p.conn == api.Connected && p.sess != nil && p.features.Load()&protocol.FeatureCluster != 0 {
			asked[p] = true
		}
	}
	if len(asked) == 0 {
		defer n.unlock()
		return n.promoteLocked(force)
	}
	w := &promoteWait{token: newUUID(), asked: asked, replies: map[*peer]string{}, done: make(chan struct{})}
	n.promoting = w
	for p := range asked {
		p.sess.queue(ctrlMsg{t: protocol.TypePromoteReq, seq: w.token})
	}
	n.unlock()

	t := time.NewTimer(n.cfg.Timeout)
	select {
	case <-w.done:
	case <-t.C:
	}
	t.Stop()

	n.mu.Lock()
	defer n.unlock()
	n.promoting = nil
	var err error
	for p := range asked {
		reason, ok := w.replies[p]
		switch {
		case !ok:
			n.log.Warn("peer did not answer the promote request in time: dropping its connection", "peer", p.cfg.Name, "timeout", n.cfg.Timeout)
			if p.sess != nil {
				p.sess.fail(fmt.Errorf("no answer to the promote request within %v", n.cfg.Timeout))
			}
			if err == nil {
				err = fmt.Errorf("%w: peer %s did not answer the promote request within %v; its connection was dropped, retry", ErrRefused, p.cfg.Name, n.cfg.Timeout)
			}
		case reason != "" && err == nil:
			err = fmt.Errorf("%w: %s", ErrRefused, reason)
		}
	}
	if err == nil {
		err = n.canStartPromoteLocked(force)
	}
	if err == nil {
		err = n.promoteLocked(force)
	}
	// Release the grants (after the new State, on the same queue).
	for p := range asked {
		if p.sess != nil {
			p.sess.queue(ctrlMsg{t: protocol.TypePromoteEnd, seq: w.token})
		}
	}
	if err != nil {
		n.log.Info("promote refused", "err", err)
	}
	return err
}

// canStartPromoteLocked checks what Promote checks before and after asking
// the peers; n.mu held.
func (n *Node) canStartPromoteLocked(force bool) error {
	switch {
	case n.closed:
		return ErrClosed
	case n.demoting:
		return fmt.Errorf("%w: a demote is in progress; wait for it to finish", ErrRefused)
	case n.role == api.Primary:
		return nil
	case n.promoting != nil:
		return fmt.Errorf("%w: a promote is already in progress on this node", ErrRefused)
	}
	if err := n.grantBlocksLocked(nil); err != nil {
		return err
	}
	return decide.CanPromote(force, n.super.Disk, n.peerViews())
}

// onPromoteReq answers a peer's promote request.
func (p *peer) onPromoteReq(s *session, token uint64) {
	n := p.n
	n.mu.Lock()
	defer n.unlock()
	var reason string
	switch {
	case n.role == api.Primary:
		reason = fmt.Sprintf("peer %s is Primary; demote it first or disconnect", n.cfg.Self.Name)
	case n.grantBlocksLocked(p) != nil:
		reason = fmt.Sprintf("peer %s is becoming Primary", n.grant.p.cfg.Name)
	case n.promoting != nil && n.cfg.Self.ID < p.cfg.ID:
		reason = fmt.Sprintf("peer %s is becoming Primary", n.cfg.Self.Name)
	}
	if reason == "" {
		n.grant = &grant{p: p, token: token, until: time.Now().Add(3 * n.cfg.Timeout)}
		n.log.Info("granted promote request", "peer", p.cfg.Name)
	} else {
		n.log.Info("refused promote request", "peer", p.cfg.Name, "reason", reason)
	}
	s.queue(ctrlMsg{t: protocol.TypePromoteReply, seq: token, payload: []byte(reason)})
}

// onPromoteReply records a peer's answer to our promote request.
func (p *peer) onPromoteReply(token uint64, reason string) {
	n := p.n
	n.mu.Lock()
	defer n.mu.Unlock()
	w := n.promoting
	if w == nil || w.token != token || !w.asked[p] {
		return
	}
	if _, dup := w.replies[p]; dup {
		return
	}
	w.replies[p] = reason
	if len(w.replies) == len(w.asked) {
		close(w.done)
	}
}

// onPromoteEnd releases the grant held for p.
func (p *peer) onPromoteEnd(token uint64) {
	n := p.n
	n.mu.Lock()
	if g := n.grant; g != nil && g.p == p && g.token == token {
		n.grant = nil
	}
	n.mu.Unlock()
}

// promoteLostLocked cleans up after p's session ended: a grant held for it
// lapses, and a promotion waiting for its answer takes the loss as a
// refusal; n.mu held.
func (p *peer) promoteLostLocked() {
	n := p.n
	if g := n.grant; g != nil && g.p == p {
		n.grant = nil
	}
	if w := n.promoting; w != nil && w.asked[p] {
		if _, ok := w.replies[p]; !ok {
			w.replies[p] = fmt.Sprintf("the connection to %s was lost during the promote; retry", p.cfg.Name)
			if len(w.replies) == len(w.asked) {
				close(w.done)
			}
		}
	}
}

// promoteLocked makes this node Primary once the peers agreed; n.mu held.
func (n *Node) promoteLocked(force bool) error {
	wasConsistent := n.super.Disk == diskUpToDate
	away := make([]bool, len(n.super.GI.Bitmap))
	rotate := !wasConsistent || n.super.GI.Current == 0
	for _, p := range n.peers {
		if !decide.Receiving(p.conn, p.repl) || !wasConsistent {
			away[p.slot] = true
			rotate = true
		}
	}
	err := n.persist(func(sb *bitmap.Superblock) {
		if rotate {
			sb.GI.Current, sb.GI.History = decide.Rotate(sb.GI.Current, sb.GI.Bitmap, sb.GI.History, away, newUUID())
		}
		sb.Disk = diskUpToDate
		sb.Flags |= bitmap.FlagPrimary
		sb.Flags &^= bitmap.FlagResyncTarget
	})
	if err != nil {
		return err
	}
	if !wasConsistent {
		// Our data is now the truth: every peer needs all of it.
		for _, p := range n.peers {
			p.markAll()
		}
		if err := n.flushBitmapsLocked("promote"); err != nil {
			return err
		}
	}
	n.role = api.Primary
	n.recomputeLocked()
	n.log.Info("promoted to Primary", "force", force, "current", api.FormatUUID(n.super.GI.Current))
	n.event("role", "", api.Secondary.String(), api.Primary.String(), "")
	for _, p := range n.peers {
		if p.conn != api.Connected {
			continue
		}
		if p.repl == api.PausedSync || !wasConsistent || (p.repl == api.Established && p.bitmap.Count() > 0) {
			// Re-plan the connection with this node as Primary.
			p.restartLocked("re-planning the connection after promote")
			continue
		}
		p.sendStateLocked(0)
	}
	return nil
}
