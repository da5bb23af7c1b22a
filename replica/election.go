package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/replica/internal/decide"
)

// Automatic failover (Config.AutoPromote). Every data node watches, a few
// times per timeout, whether the resource has lost its Primary: no
// connected peer is Primary, this node has quorum, and its promise to the
// last Primary it heard from is over (so that Primary's lease is over
// too). Then the best candidate it can see (decide.Best: UpToDate, newest
// data generation, most of the old Primary's writes applied, priority,
// node id) promotes itself through the ordinary two-phase promotion, which
// every connected voter must grant (decide.MayGrant) and a quorum of votes
// must carry. A voter that is itself a better candidate refuses, so the
// best node the quorum can see is elected; two candidates cannot both
// collect a quorum of grants, since a voter holds one grant at a time.
//
// With AutoFailback a Primary steps down (an ordinary demote) for a
// connected, in-sync node of higher priority, which the next election then
// promotes.

// electRetry is how long a node that lost an election, or was demoted by
// the operator, keeps out of the next one.
func (n *Node) electRetry() time.Duration { return 2 * n.cfg.Timeout }

// elect runs the election checks until ctx ends.
func (n *Node) elect(ctx context.Context) {
	t := time.NewTicker(max(n.cfg.Timeout/4, 20*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.failBackIfDue()
		why, ok := n.candidacy()
		if !ok {
			continue
		}
		n.log.Info("election: promoting this node", "why", why)
		err := n.promote(false, true)
		n.mu.Lock()
		if err != nil {
			n.quorum.election = fmt.Sprintf("%s: this node's candidacy failed: %v", time.Now().UTC().Format(time.RFC3339), err)
			n.quorum.noCandidacyUntil = mono() + n.electRetry()/2
			n.event("election", "", "", "failed", err.Error())
		} else {
			n.quorum.election = fmt.Sprintf("%s: elected %s: %s", time.Now().UTC().Format(time.RFC3339), n.cfg.Self.Name, why)
			n.event("election", "", "", "won", n.quorum.election)
		}
		n.unlock()
		if err != nil {
			n.log.Info("election: candidacy refused", "err", err)
		}
	}
}

// candidateLocked is this node as a candidate. n.mu held.
func (n *Node) candidateLocked() decide.Candidate {
	d := n.super.Disk
	if n.detached.Load() {
		d = diskFailed
	}
	return decide.Candidate{ID: n.cfg.Self.ID, Name: n.cfg.Self.Name, Priority: n.cfg.Self.Priority, Disk: d,
		Current: n.super.GI.Current, History: n.super.GI.History,
		AppliedFrom: uint8(n.lastAppliedBy.Load()), Applied: n.lastApplied.Load()}
}

// candidate is p as a candidate, from its last State. n.mu held.
func (p *peer) candidate() decide.Candidate {
	st := &p.state
	return decide.Candidate{ID: p.cfg.ID, Name: p.cfg.Name, Priority: p.cfg.Priority, Disk: p.peerDisk,
		Current: st.Current, History: st.History, AppliedFrom: st.AppliedFrom, Applied: st.Applied}
}

// candidacy says whether this node should stand for Primary now, and why.
func (n *Node) candidacy() (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := mono()
	switch {
	case n.closed, n.role == api.Primary, n.demoting, n.promoting != nil, n.detached.Load():
		return "", false
	case n.super.Disk != diskUpToDate, now < n.quorum.noCandidacyUntil:
		return "", false
	case n.grantBlocksLocked(nil) != nil:
		return "", false
	case now < time.Duration(n.quorum.lastPrimary.Load())+decide.Promise(n.cfg.Timeout):
		return "", false
	case !n.hasQuorumLocked():
		return "", false
	}
	me := n.candidateLocked()
	cands := []decide.Candidate{me}
	for _, p := range n.all {
		if p.conn != api.Connected || p.sess == nil {
			continue
		}
		if p.peerRole == api.Primary {
			return "", false
		}
		if !p.voteOnly && p.peerDisk == diskUpToDate {
			cands = append(cands, p.candidate())
		}
	}
	if best := decide.Best(cands); best.ID != me.ID {
		return "", false
	}
	return fmt.Sprintf("no Primary among the %d of %d voters present (%d needed); best of %d candidates", n.votesLocked(), n.voters(), n.cfg.Quorum, len(cands)), true
}

// betterCandidateLocked says whether this node would rank before cand in
// an election it could stand in. n.mu held.
func (n *Node) betterCandidateLocked(cand decide.Candidate) bool {
	if !n.cfg.AutoPromote || n.cfg.Self.Witness || n.super.Disk != diskUpToDate || n.detached.Load() || mono() < n.quorum.noCandidacyUntil {
		return false
	}
	return decide.Better(n.candidateLocked(), cand)
}

// failBackIfDue demotes this Primary for a connected, in-sync node of
// higher priority (AutoFailback).
func (n *Node) failBackIfDue() {
	if !n.cfg.AutoFailback {
		return
	}
	n.mu.Lock()
	var to *peer
	if n.role == api.Primary && !n.demoting {
		for _, p := range n.peers {
			if p.conn == api.Connected && p.sess != nil && p.repl == api.Established && p.peerDisk == diskUpToDate &&
				p.bitmap.Count() == 0 && p.cfg.Priority > n.cfg.Self.Priority && (to == nil || p.cfg.Priority > to.cfg.Priority) {
				to = p
			}
		}
	}
	n.mu.Unlock()
	if to == nil {
		return
	}
	n.log.Info("auto-failback: stepping down for a node of higher priority that is in sync", "to", to.cfg.Name)
	err := n.demote(false)
	n.mu.Lock()
	if err == nil {
		n.quorum.election = fmt.Sprintf("%s: failed back to %s (priority %d > %d)", time.Now().UTC().Format(time.RFC3339), to.cfg.Name, to.cfg.Priority, n.cfg.Self.Priority)
		n.event("election", to.cfg.Name, "", "failback", n.quorum.election)
	}
	n.unlock()
	if err != nil && !errors.Is(err, ErrRefused) {
		n.log.Warn("auto-failback: demote failed", "err", err)
	}
}
