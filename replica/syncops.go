package replica

import (
	"fmt"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
)

// Operator verbs on resync: invalidate, invalidate-remote, pause-sync,
// resume-sync. (verify is in verify.go.)

// Invalidate throws this node's copy away: it becomes the sync target of a
// full resync from a connected UpToDate peer (name, or the first such peer
// when empty). Refused on a Primary.
func (n *Node) Invalidate(name string) error {
	n.mu.Lock()
	defer n.unlock()
	if n.role == api.Primary || n.demoting {
		return fmt.Errorf("%w: this node is Primary; demote it before invalidating its data", ErrRefused)
	}
	var p *peer
	if name == "" {
		for _, q := range n.peers {
			if q.conn == api.Connected && q.sess != nil && q.peerDisk == UpToDate {
				p = q
				break
			}
		}
		if p == nil {
			return fmt.Errorf("%w: no connected peer is UpToDate to resync from", ErrRefused)
		}
	} else {
		var err error
		if p, err = n.connectedPeerLocked(name); err != nil {
			return err
		}
		if p.peerDisk != UpToDate {
			return fmt.Errorf("%w: peer %s is %s; a full resync needs an UpToDate source", ErrRefused, name, p.peerDisk)
		}
	}
	if err := n.persist(func(sb *bitmap.Superblock) {
		sb.Disk = Inconsistent
		sb.Flags |= bitmap.FlagResyncTarget
	}); err != nil {
		return err
	}
	p.markAll()
	n.meta.FlushBitmaps()
	// Renegotiate as the node that discards its data: the peer becomes
	// SyncSource whatever its role.
	p.discard = true
	p.restartLocked("invalidate: full resync from " + p.cfg.Name)
	n.log.Warn("invalidated: full resync from peer", "peer", p.cfg.Name)
	return nil
}

// InvalidateRemote makes peer name (or the first connected peer) the sync
// target of a full resync from this node, which must be UpToDate. Refused
// when the peer is Primary.
func (n *Node) InvalidateRemote(name string) error {
	n.mu.Lock()
	defer n.unlock()
	p, err := n.connectedPeerLocked(name)
	if err != nil {
		return err
	}
	if n.sb.Disk != UpToDate {
		return fmt.Errorf("%w: local disk is %s; only an UpToDate node can be a sync source", ErrRefused, n.sb.Disk)
	}
	if p.peerRole == api.Primary {
		return fmt.Errorf("%w: peer %s is Primary; demote it first", ErrRefused, p.cfg.Name)
	}
	switch p.repl {
	case api.Established, api.PausedSync, api.SyncSource:
	default:
		return fmt.Errorf("%w: peer %s is %s; wait for it to finish", ErrRefused, p.cfg.Name, p.repl)
	}
	p.markAll()
	n.meta.FlushBitmaps()
	p.sy.userPaused = false
	if p.repl != api.SyncSource {
		p.setReplLocked(api.SyncSource)
	}
	p.startSyncLocked()
	p.syncStartedLocked()
	p.sendStateLocked(0)
	n.log.Warn("invalidate-remote: full resync to peer", "peer", p.cfg.Name)
	return nil
}

// syncStartedLocked resets the progress meter of a resync this node
// sources; n.mu held.
func (p *peer) syncStartedLocked() {
	p.sy.syncStart = time.Now()
	p.sy.meter = rateMeter{}
}

// PauseSync pauses the resync toward peer name (every peer when empty):
// the replication state becomes PausedSync with sync_paused_by_user set,
// the peer's blocks stay marked, and a resync that would start waits until
// ResumeSync. Run it on the sync source.
func (n *Node) PauseSync(name string) error {
	n.mu.Lock()
	defer n.unlock()
	ps, err := n.peersNamedLocked(name)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if p.repl == api.SyncTarget && name != "" {
			return fmt.Errorf("%w: this node is the sync target of %s; run pause-sync on %s", ErrRefused, p.cfg.Name, p.cfg.Name)
		}
	}
	for _, p := range ps {
		p.sy.userPaused = true
		if p.repl == api.SyncSource {
			p.setReplLocked(api.PausedSync)
			p.sendStateLocked(0)
			n.log.Info("resync paused by the operator", "peer", p.cfg.Name, "left", p.bm.DirtyBytes())
		}
	}
	return nil
}

// ResumeSync undoes PauseSync; a paused resync continues from the bitmap.
func (n *Node) ResumeSync(name string) error {
	n.mu.Lock()
	defer n.unlock()
	ps, err := n.peersNamedLocked(name)
	if err != nil {
		return err
	}
	for _, p := range ps {
		was := p.sy.userPaused
		p.sy.userPaused = false
		if was && p.repl == api.PausedSync {
			p.restartLocked("resume-sync")
		}
	}
	return nil
}

func (n *Node) peersNamedLocked(name string) ([]*peer, error) {
	if name == "" {
		return n.peers, nil
	}
	p, err := n.peerByName(name)
	if err != nil {
		return nil, err
	}
	return []*peer{p}, nil
}

// autoResolve applies Config.AfterSB0Pri to a split-brain verdict: when it
// picks a victim, the sides are compared again as if the victim had
// connected with --discard-my-data. Both nodes reach the same choice.
func (p *peer) autoResolve(v Verdict, me, them *Side, theirChanges int64) Verdict {
	n := p.n
	dm, dp := AutoResolve(n.cfg.AfterSB0Pri, *me, *them, p.bm.DirtyBytes(), theirChanges)
	if !dm && !dp {
		return v
	}
	me.Discard, them.Discard = dm, dp
	victim := n.cfg.Self.Name
	if dp {
		victim = p.cfg.Name
	}
	n.log.Warn("split brain resolved by after-sb-0pri discard-zero-changes", "peer", p.cfg.Name, "victim", victim)
	n.mu.Lock()
	n.event("split-brain", p.cfg.Name, "", "", "resolved automatically (after-sb-0pri discard-zero-changes): "+victim+" discards its data")
	n.unlock()
	return Compare(*me, *them)
}
