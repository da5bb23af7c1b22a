package replica

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/config"
	"github.com/repd/repd/replica/internal/journal"
)

// The local disk failure policy, DRBD's on-io-error (Config.OnIOError):
//
//   - "detach" (the default, as in DRBD): the first write or flush error of
//     the backing store (not a caller error such as EINVAL, not a cancelled
//     context) marks the local disk Failed — in the meta superblock too, if
//     the meta file still works — and the store is not written again. The
//     peers are told (State: disk Failed).
//     A Secondary stops applying: it acks nothing more; its Primary drops
//     what it still owed, marks its bitmap, stops shipping to it and shows
//     it Connected/Off with disk Failed (no reconnect storm).
//     A Primary goes on without its disk: a write completes successfully if
//     at least one peer acknowledged it (the peer's copy is the copy), and
//     fails (EIO, or ENOSPC if that was the disk's error) only when no copy
//     could be written. Reads on it are refused with EIO (they are not
//     served from a peer over the replication link): fail over. A detached
//     node is never a resync source or target.
//   - "pass-on": the error goes to the caller (the NBD client), the disk
//     state is unchanged. On a Secondary the error ends the connection; the
//     Primary marks what was not acknowledged and resyncs it after the
//     reconnect.
//
// A meta file that cannot be written (a superblock update or the
// out-of-sync bitmaps) detaches the disk under either policy: without it
// the node can record neither its state nor what its peers miss, and a
// resync after a crash would trust marks that never reached disk.
//
// There is no attach verb: restart repd with a working disk. A disk that
// was Failed opens as Outdated (never promotable without --force, never a
// sync source for an UpToDate peer) and is resynced from the Primary by its
// bitmap; run `repctl invalidate` for a full resync if the disk was
// replaced or its content is in doubt.

// flushBitmapsLocked makes the in-memory out-of-sync bitmaps durable for
// op. A mark must be on disk before anything relies on it: after a crash a
// resync covers only what the meta file holds. When the meta file cannot be
// written the node cannot keep that promise, so, as DRBD does on a
// meta-data I/O error, it detaches its disk whatever on-io-error says
// (reads EIO, a Primary writes through its peers only, never a sync
// source; restart repd with a working meta file to attach again) and
// returns the error. n.mu held.
func (n *Node) flushBitmapsLocked(op string) error {
	err := n.meta.FlushBitmaps()
	if err == nil {
		return nil
	}
	n.detachLocked(op+": write the out-of-sync bitmaps to the meta file", err)
	return fmt.Errorf("%s on %s: the meta file %s cannot be written (%w); the local disk is detached", op, n.cfg.Self.Name, n.cfg.MetaPath, err)
}

// flushBitmaps is flushBitmapsLocked without n.mu held: the flush runs
// unlocked, the detach on failure locked.
func (n *Node) flushBitmaps(op string) error {
	err := n.meta.FlushBitmaps()
	if err == nil {
		return nil
	}
	n.mu.Lock()
	n.detachLocked(op+": write the out-of-sync bitmaps to the meta file", err)
	n.unlock()
	return fmt.Errorf("%s on %s: the meta file %s cannot be written (%w); the local disk is detached", op, n.cfg.Self.Name, n.cfg.MetaPath, err)
}

// diskError says whether err from the local store is a failure of the disk
// that the detach policy acts on.
func (n *Node) diskError(err error) bool {
	if err == nil || n.cfg.OnIOError == config.IOErrorPassOn {
		return false
	}
	return !errors.Is(err, syscall.EINVAL) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, ErrClosed)
}

// detach marks the local disk Failed after err (see above).
func (n *Node) detach(op string, err error) {
	n.mu.Lock()
	n.detachLocked(op, err)
	n.unlock()
}

func (n *Node) detachLocked(op string, err error) {
	if n.detached.Load() {
		return
	}
	n.detached.Store(true)
	n.log.Error("local disk failed: detaching it (on-io-error detach); restart repd with a working disk to attach one", "op", op, "err", err)
	old := n.super.Disk
	if e := n.persist(func(*bitmap.Superblock) {}); e != nil {
		n.log.Error("could not record the failed disk in the meta data", "err", e)
	}
	n.super.Disk = diskFailed
	if old != diskFailed && n.super.Disk == diskFailed {
		n.event("disk", "", old.String(), diskFailed.String(), fmt.Sprintf("%s: %v", op, err))
	}
	for _, p := range n.peers {
		if p.conn != api.Connected {
			continue
		}
		switch {
		case p.repl == api.SyncSource || p.repl == api.SyncTarget || p.repl == api.VerifySource || p.repl == api.VerifyTarget:
			// This disk can be neither read nor written for a resync.
			p.restartLocked("local disk failed")
		case n.role != api.Primary:
			p.setReplLocked(api.ReplOff)
			p.sendStateLocked(0)
		default:
			p.sendStateLocked(0)
		}
	}
	n.recomputeLocked()
}

// peerDiskFailedLocked handles a peer (not Primary) whose disk failed: it
// receives nothing more; what it still owed is marked in its bitmap; n.mu
// held.
func (p *peer) peerDiskFailedLocked() {
	n := p.n
	if p.repl == api.ReplOff {
		return
	}
	p.setReplLocked(api.ReplOff)
	n.dropLeaseLocked(p)
	n.journal.Drop(&p.progress, p.bit, p.lostLocked)
	n.journal.Trim()
	n.log.Warn("peer's disk failed: not replicating to it until it comes back with a working disk", "peer", p.cfg.Name)
}

// noCopyError is the error of a write on a detached Primary that no peer
// acknowledged.
func (n *Node) noCopyError(op string, e *journal.Entry) error {
	cause := e.LocalErr
	if cause == nil {
		cause = syscall.EIO
	}
	return fmt.Errorf("%s %d+%d on %s: local disk Failed (detached) and no peer acknowledged the write: %w", op, e.Off, e.N, n.cfg.Self.Name, cause)
}
