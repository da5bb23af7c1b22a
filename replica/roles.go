package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
func (n *Node) Demote() error { return n.demote(true) }

// demote is Demote; byOperator keeps this node out of elections for a
// while, so that auto-promote hands the role to another node.
func (n *Node) demote(byOperator bool) error {
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
	if byOperator {
		n.quorum.noCandidacyUntil = mono() + n.electRetry()
	}
	err := n.persist(func(sb *bitmap.Superblock) {
		if ferr == nil {
			sb.Flags &^= bitmap.FlagPrimary
		}
	})
	n.recomputeLocked()
	n.resetLeaseLocked()
	n.broadcastLocked()
	n.log.Info("demoted to Secondary")
	n.event("role", "", api.Primary.String(), api.Secondary.String(), "")
	n.broadcastStateLocked(nil)
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
	if n.cfg.Self.Witness {
		return n.witnessRefusal("new-current-uuid")
	}
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
// not UpToDate, and with quorum it needs quorum and waits until the lease
// of a Primary it heard from must be over; it always refuses while a
// connected peer is Primary or is becoming Primary (see above). With force
// the quorum checks are skipped: the operator takes the risk of two
// Primaries.
func (n *Node) Promote(force bool) error { return n.promote(force, false) }

// errPromiseWait marks a refusal that goes away by itself: a voter's
// promise to an earlier Primary still runs.
var errPromiseWait = errors.New("a promise to an earlier Primary still runs")

// waitPrefix starts a PromoteReply refusal for the same reason.
const waitPrefix = "wait: "

// promote is Promote; auto marks an election, where a voter that would
// rank better refuses.
func (n *Node) promote(force, auto bool) error {
	deadline := mono() + 2*decide.Promise(n.cfg.Timeout)
	for {
		err := n.promoteOnce(force, auto)
		if !errors.Is(err, errPromiseWait) || mono() > deadline || auto {
			return err
		}
		t := time.NewTimer(min(n.cfg.Timeout/4, 250*time.Millisecond))
		<-t.C
	}
}

func (n *Node) promoteOnce(force, auto bool) error {
	n.mu.Lock()
	if err := n.canStartPromoteLocked(force); err != nil || n.role == api.Primary {
		n.unlock()
		return err
	}
	asked := map[*peer]bool{}
	for _, p := range n.all {
		if p.conn == api.Connected && p.sess != nil && p.features.Load()&protocol.FeatureCluster != 0 {
			asked[p] = true
		}
	}
	if len(asked) == 0 {
		defer n.unlock()
		if err := n.quorumVerdictLocked(force, nil); err != nil {
			return err
		}
		return n.promoteLocked(force)
	}
	w := &promoteWait{token: newUUID(), asked: asked, replies: map[*peer]string{}, done: make(chan struct{})}
	n.promoting = w
	var payload []byte
	if auto {
		payload = []byte{1}
	}
	for p := range asked {
		p.sess.queue(ctrlMsg{t: protocol.TypePromoteReq, seq: w.token, payload: payload})
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
	wait := false
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
		case strings.HasPrefix(reason, waitPrefix):
			wait = true
			if err == nil {
				err = fmt.Errorf("%w: peer %s refused for now: %s", ErrRefused, p.cfg.Name, strings.TrimPrefix(reason, waitPrefix))
			}
		case reason != "" && err == nil:
			err = fmt.Errorf("%w: %s", ErrRefused, reason)
		}
	}
	if err == nil {
		err = n.canStartPromoteLocked(force)
	}
	if err == nil {
		err = n.quorumVerdictLocked(force, w)
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
		if wait {
			err = fmt.Errorf("%w (%w)", err, errPromiseWait)
		}
	}
	return err
}

// quorumVerdictLocked checks, with quorum on and no force, that the votes
// granted (this node's and its connected voters' in w, nil when none was
// asked) make quorum. n.mu held.
func (n *Node) quorumVerdictLocked(force bool, w *promoteWait) error {
	if force || !n.quorumOn() {
		return nil
	}
	votes := 0
	if n.selfVotes() {
		votes++
	}
	if w != nil {
		for p := range w.asked {
			if reason, ok := w.replies[p]; ok && reason == "" && p.peerVotes() {
				votes++
			}
		}
	}
	if votes < n.cfg.Quorum {
		return fmt.Errorf("%w: no quorum: %d of the %d votes needed (of %d voters) granted the promotion; repctl primary --force promotes anyway and risks two Primaries writing apart (split brain) if the others can still reach each other", ErrRefused, votes, n.cfg.Quorum, n.voters())
	}
	return nil
}

// canStartPromoteLocked checks what Promote checks before and after asking
// the peers; n.mu held.
func (n *Node) canStartPromoteLocked(force bool) error {
	switch {
	case n.cfg.Self.Witness:
		return fmt.Errorf("%w: %s is a witness: it holds no data and is never Primary", ErrRefused, n.cfg.Self.Name)
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
	if err := decide.CanPromote(force, n.super.Disk, n.peerViews()); err != nil {
		return err
	}
	if !force && n.quorumOn() {
		if !n.hasQuorumLocked() {
			return fmt.Errorf("%w: no quorum: %d of %d votes present, %d needed; repctl primary --force promotes anyway and risks two Primaries writing apart (split brain) if the others can still reach each other", ErrRefused, n.votesLocked(), n.voters(), n.cfg.Quorum)
		}
		if wait := time.Duration(n.quorum.lastPrimary.Load()) + decide.Promise(n.cfg.Timeout) - mono(); wait > 0 {
			return fmt.Errorf("%w: this node heard from a Primary (or started) %v ago; that Primary's lease may run for up to %v more (%w)", ErrRefused, (mono() - time.Duration(n.quorum.lastPrimary.Load())).Round(time.Millisecond), wait.Round(time.Millisecond), errPromiseWait)
		}
	}
	return nil
}

// onPromoteReq answers a peer's promote request.
func (p *peer) onPromoteReq(s *session, token uint64, election bool) {
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
	case n.quorumOn():
		reason = n.grantReasonLocked(p, election)
	}
	if reason == "" {
		n.grant = &grant{p: p, token: token, until: time.Now().Add(3 * n.cfg.Timeout)}
		n.log.Info("granted promote request", "peer", p.cfg.Name, "election", election)
	} else {
		n.log.Info("refused promote request", "peer", p.cfg.Name, "reason", reason)
	}
	s.queue(ctrlMsg{t: protocol.TypePromoteReply, seq: token, payload: []byte(reason)})
}

// grantReasonLocked is a voter's answer to p's promotion request with
// quorum on: "" to grant, else why not (decide.MayGrant; in an election a
// voter that would rank better refuses too). n.mu held.
func (n *Node) grantReasonLocked(p *peer, election bool) string {
	cand := p.candidate()
	if p.cfg.Witness {
		return fmt.Sprintf("%s is a witness: it is never Primary", p.cfg.Name)
	}
	for _, q := range n.all {
		if q != p && q.conn == api.Connected && q.peerRole == api.Primary {
			return fmt.Sprintf("peer %s is Primary", q.cfg.Name)
		}
	}
	g := decide.GrantCheck{Now: mono(), LastPrimary: time.Duration(n.quorum.lastPrimary.Load()), Promise: decide.Promise(n.cfg.Timeout),
		Witness: n.cfg.Self.Witness, Known: n.quorum.known, Me: n.candidateLocked(), MeVotes: n.selfVotes()}
	if err := decide.MayGrant(g, cand); err != nil {
		if g.Now < g.LastPrimary+g.Promise {
			return waitPrefix + fmt.Sprintf("%s: %v", n.cfg.Self.Name, err)
		}
		return fmt.Sprintf("%s: %v", n.cfg.Self.Name, err)
	}
	if election && n.betterCandidateLocked(cand) {
		return fmt.Sprintf("%s is a better successor than %s", n.cfg.Self.Name, p.cfg.Name)
	}
	return ""
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
	n.quorum.replaced.Store(false)
	n.quorum.supports = nil
	n.recomputeLocked()
	n.resetLeaseLocked()
	n.tellVotersLocked()
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
