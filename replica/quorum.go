package replica

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/config"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/decide"
)

// Quorum, the Primary's lease, and what a voter promises (the argument is
// in docs/quorum.md; the arithmetic in internal/decide).
//
// With Config.Quorum set, a Primary acknowledges a write (or a flush) only
// while it holds a lease: voters enough to make quorum, itself included,
// acknowledged a lease request for its current data generation within the
// last Timeout, counted from the request's send time on the Primary's
// clock. Each voter that acknowledges promises not to help any other node
// to the Primary role (grant a promotion, or promote itself) until
// decide.Promise(Timeout) after it last heard from that Primary, on its own
// clock. Quorums intersect, so a successor cannot be elected before the old
// Primary's lease is over: the old Primary stops acknowledging writes first.
//
// A voter acknowledges only a generation it knows: a data node its own
// current UUID, a witness the newest generation the Primary announced,
// which it keeps in its state file before acknowledging. A Primary that
// writes while a data peer is away starts a new generation and loses its
// lease until a quorum acknowledged it, and drops the away peer's lease
// before any write completes without it: a node that lacks an acknowledged
// write never holds the generation a quorum knows of, and no voter of that
// quorum grants it the Primary role.

// monoBase anchors the monotonic clock of leases and promises.
var monoBase = time.Now()

// mono is the time on the monotonic clock.
func mono() time.Duration { return time.Since(monoBase) }

// quorumState is the node's part in quorum and elections. Fields are
// guarded by Node.mu unless atomic.
type quorumState struct {
	// leaseUntil (Primary): until when, on the monotonic clock, the lease
	// holds (decide.Forever with quorum off); writers read it unlocked.
	leaseUntil atomic.Int64
	// lastPrimary (voter): when this node last heard from a Primary, or
	// started (a promise made before a restart is kept).
	lastPrimary atomic.Int64
	// replaced: this node was Primary without a lease and learned another
	// node is Primary; its suspended I/O fails, its unacknowledged
	// writes are discarded by a resync from the new Primary.
	replaced atomic.Bool

	supports  *peer         // the Primary whose lease requests this voter answers
	known     uint64        // a witness's newest generation announced (witness.go)
	had       bool          // quorum at the last check (for events)
	changed   chan struct{} // closed and remade when the lease or replaced changes
	suspended int           // writes and flushes waiting for quorum
	election  string        // why the last election ended as it did
	// noCandidacyUntil: this node stays out of elections until then (it
	// was demoted by the operator, or its candidacy just failed).
	noCandidacyUntil time.Duration
}

// quorumOn says whether the resource uses quorum.
func (n *Node) quorumOn() bool { return n.cfg.Quorum > 0 }

// voters are this node and every peer, data nodes and witnesses.
func (n *Node) voters() int { return len(n.all) + 1 }

// selfVotes says whether this node's own vote counts: a witness always, a
// data node while its disk is UpToDate or Outdated. n.mu held.
func (n *Node) selfVotes() bool {
	return decide.Votes([]decide.Voter{n.selfVoter()}) == 1
}

func (n *Node) selfVoter() decide.Voter {
	d := n.super.Disk
	if n.detached.Load() {
		d = diskFailed
	}
	return decide.Voter{Present: true, Witness: n.cfg.Self.Witness, Disk: d}
}

// peerVotes says whether p's vote counts now: connected, and a witness or
// a data node whose disk is UpToDate or Outdated. n.mu held.
func (p *peer) peerVotes() bool {
	return decide.Votes([]decide.Voter{{Present: p.conn == api.Connected && p.sess != nil, Witness: p.cfg.Witness, Disk: p.peerDisk}}) == 1
}

// votesLocked counts the votes present. n.mu held.
func (n *Node) votesLocked() int {
	v := 0
	if n.selfVotes() {
		v++
	}
	for _, p := range n.all {
		if p.peerVotes() {
			v++
		}
	}
	return v
}

// hasQuorumLocked says whether this node has quorum now. n.mu held.
func (n *Node) hasQuorumLocked() bool {
	return decide.HasQuorum(n.votesLocked(), n.cfg.Quorum)
}

// leaseHeld says whether the Primary may acknowledge I/O now.
func (n *Node) leaseHeld() bool {
	return !n.quorumOn() || time.Duration(n.quorum.leaseUntil.Load()) > mono()
}

// recomputeLeaseLocked sets the lease from the peers' acknowledgements for
// the current generation, and reports quorum changes. n.mu held.
func (n *Node) recomputeLeaseLocked() {
	if !n.quorumOn() {
		n.quorum.leaseUntil.Store(int64(decide.Forever))
		return
	}
	var until time.Duration
	if n.role == api.Primary && !n.quorum.replaced.Load() {
		var exp []time.Duration
		for _, p := range n.all {
			if p.leaseExpiry > 0 && p.conn == api.Connected {
				exp = append(exp, p.leaseExpiry)
			}
		}
		self := 0
		if n.selfVotes() {
			self = 1
		}
		until = decide.LeaseUntil(exp, self, n.cfg.Quorum)
	}
	old := time.Duration(n.quorum.leaseUntil.Swap(int64(until)))
	if (old > mono()) != (until > mono()) {
		n.quorumChangedLocked()
	}
	n.noteQuorumLocked()
}

// noteQuorumLocked emits an event when this node gains or loses quorum.
// n.mu held.
func (n *Node) noteQuorumLocked() {
	if !n.quorumOn() {
		return
	}
	have := n.hasQuorumLocked()
	if have == n.quorum.had {
		return
	}
	n.quorum.had = have
	msg := fmt.Sprintf("%d of %d votes present, %d needed", n.votesLocked(), n.voters(), n.cfg.Quorum)
	if have {
		n.log.Info("quorum regained", "votes", n.votesLocked(), "needed", n.cfg.Quorum)
		n.event("quorum", "", "lost", "regained", msg)
	} else {
		n.log.Warn("quorum lost", "votes", n.votesLocked(), "needed", n.cfg.Quorum)
		n.event("quorum", "", "regained", "lost", msg)
	}
}

// quorumChangedLocked wakes the I/O waiting for the lease. n.mu held.
func (n *Node) quorumChangedLocked() {
	if n.quorum.changed != nil {
		close(n.quorum.changed)
	}
	n.quorum.changed = make(chan struct{})
}

// resetLeaseLocked forgets every acknowledgement: the generation changed,
// or the node stopped being Primary. The next lease requests go at once.
// n.mu held.
func (n *Node) resetLeaseLocked() {
	for _, p := range n.all {
		p.leaseExpiry = 0
		if p.sess != nil {
			p.sess.leaseDue = true
			p.sess.wakeUp()
		}
	}
	n.recomputeLeaseLocked()
}

// dropLeaseLocked forgets p's acknowledgement: p stops receiving writes (a
// disconnect, a timeout, a failed disk). Called before any entry is
// dropped for p, so that no write completes without p on the strength of
// p's promise. n.mu held.
func (n *Node) dropLeaseLocked(p *peer) {
	if p.leaseExpiry != 0 {
		p.leaseExpiry = 0
		n.recomputeLeaseLocked()
	}
	if n.role == api.Primary && n.quorumOn() {
		// The writes p misses from now on belong to a generation p
		// does not hold.
		if err := n.rotateIfNeededLocked(); err != nil {
			n.log.Error("starting a new generation for a peer that left failed", "peer", p.cfg.Name, "err", err)
		}
	}
}

// waitLease returns once this Primary holds its lease, or the error that
// I/O without quorum gets: EIO at once with on-no-quorum io-error, or once
// this node learns it was replaced; ctx's error if it ends first.
func (n *Node) waitLease(ctx context.Context, op string) error {
	if n.leaseHeld() {
		return nil
	}
	counted := false
	waitStart := mono()
	defer func() {
		if counted {
			n.mu.Lock()
			n.quorum.suspended--
			n.mu.Unlock()
		}
	}()
	for {
		n.mu.Lock()
		switch {
		case n.leaseHeld():
			n.mu.Unlock()
			return nil
		case n.closed:
			n.mu.Unlock()
			return fmt.Errorf("%s on %s: %w (%w): the node is shutting down", op, n.cfg.Self.Name, ErrClosed, syscall.ESHUTDOWN)
		case n.quorum.replaced.Load():
			n.mu.Unlock()
			return fmt.Errorf("%s on %s: another node became Primary while this one had no quorum; the write was not acknowledged and will be overwritten by the resync from the new Primary (%w)", op, n.cfg.Self.Name, syscall.EIO)
		case n.role != api.Primary:
			err := n.errNotPrimary(op)
			n.mu.Unlock()
			return err
		case n.cfg.OnNoQuorum == config.NoQuorumIOError && (!n.hasQuorumLocked() || mono() > waitStart+n.cfg.Timeout):
			// With quorum present, a lease that is being acknowledged
			// (a new Primary, a new generation) is waited for a while.
			v := n.votesLocked()
			n.mu.Unlock()
			return fmt.Errorf("%s on %s: no lease: %d votes present, %d needed, and on-no-quorum is io-error (%w)", op, n.cfg.Self.Name, v, n.cfg.Quorum, syscall.EIO)
		}
		if !counted {
			counted = true
			n.quorum.suspended++
			if n.quorum.suspended == 1 {
				n.log.Warn("I/O suspended until the lease is acknowledged by a quorum (on-no-quorum suspend-io)", "votes", n.votesLocked(), "needed", n.cfg.Quorum)
				n.event("io", "", "", "suspended", fmt.Sprintf("%s waits for the Primary's lease (%d of %d votes present, %d needed)", op, n.votesLocked(), n.voters(), n.cfg.Quorum))
			}
		}
		ch := n.quorum.changed
		left := time.Duration(n.quorum.leaseUntil.Load()) - mono()
		n.mu.Unlock()
		// The lease may also come back without a change being
		// signalled only through a new acknowledgement, which signals:
		// wait for it, or poll in case the clock crossed an expiry.
		t := time.NewTimer(max(left, 50*time.Millisecond))
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
}

// tellVotersLocked sends this node's State to its vote-only peers, which
// hear of disk, generation and role changes only this way (data peers get
// theirs where each change is made). n.mu held.
func (n *Node) tellVotersLocked() {
	for _, p := range n.all {
		if p.voteOnly && p.sess != nil {
			p.sendStateLocked(0)
		}
	}
}

// The voter's side.

// heardFromPrimary notes a message from p while p is Primary: this node's
// promise to p runs from now.
func (n *Node) heardFromPrimary() { n.quorum.lastPrimary.Store(int64(mono())) }

// onLease answers a lease request from p, the Primary: an acknowledgement
// when this node supports p and knows generation gen, else a refusal that
// says why. Called by p's receiver.
func (s *session) onLease(token, gen uint64) {
	p, n := s.p, s.p.n
	n.heardFromPrimary()
	n.mu.Lock()
	reason, err := n.leaseAnswerLocked(p, gen)
	n.unlock()
	if err != nil {
		n.log.Error("lease request: cannot record the generation", "peer", p.cfg.Name, "err", err)
		return // no answer: the Primary's lease lapses, safe
	}
	if reason == "" {
		s.queue(ctrlMsg{t: protocol.TypeLeaseAck, seq: token, payload: binary.LittleEndian.AppendUint64(nil, gen)})
		return
	}
	s.queue(ctrlMsg{t: protocol.TypeLeaseAck, f: protocol.FlagLeaseRefused, seq: token, payload: []byte(reason)})
}

// replacedPrefix starts a lease refusal from a voter that supports another
// node as Primary: the requester, if its lease is over, was replaced.
const replacedPrefix = "replaced: "

// leaseAnswerLocked decides the answer to p's lease request for gen: "" to
// acknowledge, else the reason of a refusal. n.mu held.
func (n *Node) leaseAnswerLocked(p *peer, gen uint64) (string, error) {
	if n.grant != nil && n.grant.p == p && p.peerRole == api.Primary {
		n.quorum.supports = p // it was elected with this node's grant
	}
	switch {
	case n.role == api.Primary:
		return fmt.Sprintf("%s is Primary itself", n.cfg.Self.Name), nil
	case n.quorum.supports != nil && n.quorum.supports != p && n.quorum.supports.peerRole == api.Primary:
		return fmt.Sprintf("%s%s supports %s as Primary now", replacedPrefix, n.cfg.Self.Name, n.quorum.supports.cfg.Name), nil
	case n.grant != nil && n.grant.p != p:
		return fmt.Sprintf("%s granted %s the Primary role", n.cfg.Self.Name, n.grant.p.cfg.Name), nil
	case p.peerRole != api.Primary:
		return fmt.Sprintf("%s does not know %s as Primary", n.cfg.Self.Name, p.cfg.Name), nil
	}
	if n.cfg.Self.Witness {
		// A Primary that lacks the newest generation this witness was
		// told of was replaced while it could not hear of it (a
		// partition): it must not win its lease back here.
		switch ok, replaced := decide.WitnessLease(n.quorum.known, gen, p.state.Current, p.state.History); {
		case replaced:
			return fmt.Sprintf("%s%s knows a newer data generation (%s) than %s's (%s): another node was Primary since", replacedPrefix,
				n.cfg.Self.Name, api.FormatUUID(n.quorum.known), p.cfg.Name, api.FormatUUID(gen)), nil
		case !ok:
			return fmt.Sprintf("%s has not seen generation %s in %s's State yet", n.cfg.Self.Name, api.FormatUUID(gen), p.cfg.Name), nil
		}
		if err := n.learnGenerationLocked(gen); err != nil {
			return "", err
		}
	} else if n.super.GI.Current != gen || !n.selfVotes() {
		// Not (yet) in the Primary's generation, or no vote: no
		// acknowledgement; the State that brings it comes first.
		return fmt.Sprintf("%s is at generation %s (%s), not %s", n.cfg.Self.Name, api.FormatUUID(n.super.GI.Current), n.super.Disk, api.FormatUUID(gen)), nil
	}
	if n.quorum.supports != p {
		n.quorum.supports = p
		n.log.Info("supporting the Primary's lease", "primary", p.cfg.Name)
	}
	return "", nil
}

// onLeaseAck records a voter's answer to this Primary's lease request sent
// at token (monotonic nanoseconds).
func (s *session) onLeaseAck(token uint64, refused bool, payload []byte) {
	p, n := s.p, s.p.n
	n.mu.Lock()
	defer n.unlock()
	if n.role != api.Primary || !n.quorumOn() {
		return
	}
	if refused {
		reason := protocol.ReasonText(payload)
		n.log.Debug("lease refused", "peer", p.cfg.Name, "reason", reason)
		if p.leaseExpiry != 0 {
			p.leaseExpiry = 0
			n.recomputeLeaseLocked()
		}
		if !n.leaseHeld() && (p.peerRole == api.Primary || strings.HasPrefix(reason, replacedPrefix)) {
			n.stepDownLocked(fmt.Sprintf("%s answered: %s", p.cfg.Name, reason))
		}
		return
	}
	sent := time.Duration(token)
	if len(payload) != 8 || binary.LittleEndian.Uint64(payload) != n.super.GI.Current || sent > mono() {
		return // an answer for an older generation
	}
	if exp := sent + n.cfg.Timeout; exp > p.leaseExpiry {
		p.leaseExpiry = exp
		n.recomputeLeaseLocked()
	}
}

// stepDownLocked is what a Primary without a lease does when it learns
// another node is Primary: it is Secondary from now on, its disk Outdated
// (it may hold writes nobody acknowledged), its suspended I/O fails with
// EIO, and the next connection to the new Primary discards its changes.
// n.mu held.
func (n *Node) stepDownLocked(why string) {
	if n.role != api.Primary || n.leaseHeld() {
		return
	}
	n.log.Warn("replaced while without quorum: stepping down to Secondary; unacknowledged writes are discarded by the resync from the new Primary", "why", why)
	n.quorum.replaced.Store(true)
	n.role = api.Secondary
	n.event("role", "", api.Primary.String(), api.Secondary.String(), "replaced: "+why)
	if err := n.persist(func(sb *bitmap.Superblock) {
		sb.Disk = diskOutdated
		sb.Flags &^= bitmap.FlagPrimary
	}); err != nil {
		n.log.Error("recording the step-down failed", "err", err)
	}
	n.quorum.election = "stepped down: " + why
	n.resetLeaseLocked()
	n.recomputeLocked()
	n.quorumChangedLocked()
	for _, p := range n.all {
		if p.sess != nil {
			p.restartLocked("stepped down after being replaced")
		}
	}
}

// notePrimaryLocked follows the roles peers announce: a voter supports a
// Primary it granted the role, or one when it supports no connected
// Primary; a supported Primary that demoted releases the voter's promise.
// n.mu held.
func (n *Node) notePrimaryLocked(p *peer) {
	if p.peerRole == api.Primary {
		n.heardFromPrimary()
		cur := n.quorum.supports
		if cur == nil || cur == p || n.grant != nil && n.grant.p == p || cur.peerRole != api.Primary || cur.sess == nil {
			n.quorum.supports = p
		}
		return
	}
	n.releaseSupportLocked(p)
}

// releaseSupportLocked forgets the Primary this voter supported, when it
// demoted itself (its lease ended with its role) or the voter granted
// another node. n.mu held.
func (n *Node) releaseSupportLocked(p *peer) {
	if n.quorum.supports == p {
		n.quorum.supports = nil
		if p != nil && p.peerRole != api.Primary {
			// A Primary that demoted acknowledges nothing more: the
			// promise to it is void.
			n.quorum.lastPrimary.Store(0)
		}
	}
}

// quorumStatusLocked fills the quorum fields of a status. n.mu held.
func (n *Node) quorumStatusLocked(s *api.Status) {
	s.Voters = n.voters()
	s.Witness = n.cfg.Self.Witness
	s.AutoPromote = n.cfg.AutoPromote
	if !n.quorumOn() {
		return
	}
	s.Votes = n.votesLocked()
	s.VotesNeeded = n.cfg.Quorum
	s.Quorum = decide.HasQuorum(s.Votes, s.VotesNeeded)
	s.SuspendedIO = n.quorum.suspended
	s.LastElection = n.quorum.election
	if n.role == api.Primary {
		left := time.Duration(n.quorum.leaseUntil.Load()) - mono()
		if left > 0 {
			s.Lease = "held"
			s.LeaseLeftMS = left.Milliseconds()
		} else {
			s.Lease = "expired"
		}
	}
}
