package replica

import (
	"context"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/journal"
)

// Writes without a waiting goroutine (nbd.AsyncWriter). The NBD server's
// reader starts a small write itself (StartWrite): the write is journaled
// and written to the local store at once, in the reader's goroutine; after
// a run of such writes the reader calls Kick, which ships them to the
// peers in one pass of each session's writer. The write completes where
// its last condition is met: under protocol C in the goroutine that
// receives the last ack, which then queues the NBD reply itself; under
// protocol A (or with no peer receiving) at once, after the local write.
// Compared with WriteAt in a worker goroutine, which waits for the acks,
// this saves two hand-offs between goroutines per write (reader to worker,
// ack receiver to worker), each a wake-up of a sleeping thread when the
// machine is not saturated.

// doneWrite is a write completed under n.mu, reported once it is released.
type doneWrite struct {
	fn  func(error) func()
	err error
	ctx context.Context // set: the lease must be waited for first
}

// StartWrite starts writing p at off on a Primary (nbd.AsyncWriter): done
// is called once with the result WriteAt would return, from the goroutine
// that completes the write, and p must stay unchanged until then (under
// protocol C the journal ships it from p, see lend; under protocol A it
// holds a copy while a peer may need it). False, with nothing
// started, for the writes WriteAt must make: FUA writes (an fdatasync
// would hold up the reader), writes of more than one journal entry, and
// any write on a node that is not a Primary holding its lease or whose
// disk failed (WriteAt waits or says why), and a write whose range a
// snapshot still needs copied (the copy's two fdatasyncs would hold up
// the reader and every write behind it; WriteAt's callers share them).
//
// With last (nbd.AsyncWriter) it kicks the writes started, this one with
// them, between journaling it and writing it locally: under protocol C
// the local write then overlaps the round trip, as WriteAt's does.
func (n *Node) StartWrite(ctx context.Context, p []byte, off int64, fua, last bool, done func(error) func()) bool {
	length := int64(len(p))
	if fua || length == 0 || length > protocol.MaxData || off < 0 || off > n.cfg.Size-length ||
		n.cfg.Self.Witness || n.detached.Load() || !n.leaseHeld() || n.preserveCopies(off, length) {
		return false
	}
	n.mu.Lock()
	if n.role != api.Primary || n.demoting || n.closed {
		n.mu.Unlock()
		return false
	}
	n.writing++ // until completeLocked (or the lease wait after it)
	n.mu.Unlock()
	e, err := n.start(ctx, journal.Write, off, length, p, 0, 0, done)
	if err != nil {
		n.mu.Lock()
		n.endWriteLocked()
		n.unlock()
		if err == errNoRoom {
			return false
		}
		if last {
			n.Kick() // the writes started before it
		}
		if flush := done(err); flush != nil {
			flush()
		}
		return true
	}
	if last {
		n.Kick()
	}
	n.local(ctx, e, false)
	return true
}

// Kick ships the writes started since the last Kick (nbd.AsyncWriter):
// under protocol C from the caller's goroutine, under protocol A by the
// senders (a peer that is slow to take data must not hold up the reader).
func (n *Node) Kick() {
	var ss sessions
	n.mu.Lock()
	if n.cfg.Protocol == api.ProtocolC {
		n.sessionsLocked(n.recvMask, &ss)
	} else {
		n.wakeLocked(n.recvMask)
	}
	n.mu.Unlock()
	ss.pump()
}

// waitsAcks reports whether write entry e completes only once the peers it
// was shipped to acknowledged it; n.mu held.
func (n *Node) waitsAcks(e *journal.Entry) bool {
	return e.Ship != 0 && n.cfg.Protocol == api.ProtocolC
}

// completeLocked queues the completion of e, an asynchronous write that is
// done (once); n.mu held. The result is what WriteAt returns: the local
// error, or, for a write the failed disk did not take, an error unless a
// peer acknowledged it. A write completes only under the lease: without
// it the report waits for the lease (in a goroutine of its own).
func (n *Node) completeLocked(e *journal.Entry) {
	if e.Completed {
		return
	}
	e.Completed = true
	d := doneWrite{fn: e.OnDone, err: e.Err}
	if d.err == nil && e.NoLocal && e.Acked == 0 {
		d.err = n.noCopyError("write", e)
	}
	if d.err == nil && !n.leaseHeld() {
		d.ctx = e.Ctx
	} else {
		n.endWriteLocked()
	}
	e.OnDone, e.Ctx = nil, nil
	n.done = append(n.done, d)
}

// unlockDone releases n.mu and reports the writes completed under it,
// then calls the functions their reports returned (nbd: send the replies
// queued meanwhile), each once.
func (n *Node) unlockDone() {
	ds := n.done
	n.done = nil
	if len(n.evq) != 0 {
		n.unlockEvents()
	} else {
		n.mu.Unlock()
	}
	if len(ds) == 0 {
		return
	}
	var after [4]func()
	more := after[:0]
	for i := range ds {
		d := &ds[i]
		if d.ctx != nil {
			go n.completeAfterLease(*d)
			continue
		}
		if f := d.fn(d.err); f != nil {
			more = append(more, f)
		}
	}
	for _, f := range more {
		f()
	}
}

// completeAfterLease reports a write that completed while this Primary
// did not hold its lease, once it does (or with the reason it will not).
func (n *Node) completeAfterLease(d doneWrite) {
	err := n.waitLease(d.ctx, "write")
	n.mu.Lock()
	n.endWriteLocked()
	n.mu.Unlock()
	if f := d.fn(err); f != nil {
		f()
	}
}
