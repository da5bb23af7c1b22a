package replica

import (
	"fmt"

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
			if q.conn == api.Connected && q.sess != nil && q.peerDisk == diskUpToDate {
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
		if p.peerDisk != diskUpToDate {
			return fmt.Errorf("%w: peer %s is %s; a full resync needs an UpToDate source", ErrRefused, name, p.peerDisk)
		}
	}
	if err := n.persist(func(sb *bitmap.Superblock) {
		sb.Disk = diskInconsistent
		sb.Flags |= bitmap.FlagResyncTarget
	}); err != nil {
		return err
	}
	p.markAll()
	if err := n.flushBitmapsLocked("invalidate"); err != nil {
		return err
	}
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
	if n.super.Disk != diskUpToDate {
		return fmt.Errorf("%w: local disk is %s; only an UpToDate node can be a sync source", ErrRefused, n.super.Disk)
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
	if err := n.flushBitmapsLocked("invalidate-remote"); err != nil {
		return err
	}
	p.sync.userPaused = false
	if p.repl != api.SyncSource {
		p.setReplLocked(api.SyncSource)
	}
	p.startSyncLocked()
	p.syncStartedLocked()
	p.sendStateLocked(0)
	n.log.Warn("invalidate-remote: full resync to peer", "peer", p.cfg.Name)
	return nil
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
		p.sync.userPaused = true
		if p.repl == api.SyncSource {
			p.setReplLocked(api.PausedSync)
			p.sendStateLocked(0)
			n.log.Info("resync paused by the operator", "peer", p.cfg.Name, "left", p.bitmap.DirtyBytes())
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
		was := p.sync.userPaused
		p.sync.userPaused = false
		if was && p.repl == api.PausedSync {
			p.restartLocked("resume-sync")
		}
	}
	return nil
}
