package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/internal/zero"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/bufpool"
	"github.com/repd/repd/replica/internal/decide"
	"github.com/repd/repd/replica/internal/dedup"
	"github.com/repd/repd/replica/internal/journal"
)

// The path of a write on the Primary (see DESIGN.md):
//
//  1. start: make the activity-log extent hot, take the next sequence
//     number, note the earlier in-flight entries it overlaps, append it to
//     the journal (waiting for room, or pulling ahead), mark the bitmap of
//     every peer that does not receive it, and wake the shippers;
//  2. local: wait for the overlapped entries, then write to the store,
//     concurrently with the shippers streaming the journal;
//  3. complete: protocol A once local; protocol C once local and every
//     peer that was sent the write acked it or was dropped (and marked).
//
// The entry leaves the journal, and its activity-log reference is released,
// once it is local and no peer still owes an ack.

// ReadAt reads from the local store. A node whose disk is not UpToDate
// refuses (its data may be a mix of generations).
func (n *Node) ReadAt(ctx context.Context, p []byte, off int64) error {
	if n.cfg.Self.Witness {
		return n.witnessRefusal("read")
	}
	n.mu.Lock()
	disk := n.super.Disk
	n.mu.Unlock()
	if disk == diskFailed {
		return fmt.Errorf("read on %s: local disk Failed (detached after an I/O error); reads are not served from peers, fail over to an UpToDate node (%w)", n.cfg.Self.Name, syscall.EIO)
	}
	if disk != diskUpToDate {
		return fmt.Errorf("read on %s: local disk is %s, its data is not consistent; read from the Primary (%w)", n.cfg.Self.Name, disk, syscall.EIO)
	}
	return n.st.ReadAt(ctx, p, off)
}

// WriteAt writes p at off and replicates it. Only on a Primary.
func (n *Node) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	var f protocol.Flags
	if fua {
		f = protocol.FlagFUA
	}
	return n.write(ctx, "write", off, int64(len(p)), p, f)
}

// Trim discards a range and replicates the discard.
func (n *Node) Trim(ctx context.Context, off, length int64, fua bool) error {
	f := protocol.FlagTrim
	if fua {
		f |= protocol.FlagFUA
	}
	return n.write(ctx, "trim", off, length, nil, f)
}

// WriteZeroes zeroes a range and replicates it.
func (n *Node) WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error {
	f := protocol.FlagZeroes
	if noHole {
		f |= protocol.FlagNoHole
	}
	if fua {
		f |= protocol.FlagFUA
	}
	return n.write(ctx, "write zeroes", off, length, nil, f)
}

// waitLent waits for the completion of a write whose context ended, if it
// borrowed the caller's buffer (lend): a shipper may still read it. The
// peers' ack timeout bounds the wait: a peer that does not answer is
// dropped, which completes the write.
func waitLent(e *journal.Entry) {
	if e.Borrowed {
		<-e.DoneCh
	}
}

// maxRange bounds the range of one trim/zeroes entry (it must fit the
// activity log comfortably).
const maxRange = 64 << 20

func (n *Node) write(ctx context.Context, op string, off, length int64, p []byte, f protocol.Flags) error {
	if off < 0 || length < 0 || off+length > n.cfg.Size {
		return fmt.Errorf("%s %d+%d: beyond the device size %d (%w)", op, off, length, n.cfg.Size, syscall.EINVAL)
	}
	if length == 0 {
		return nil
	}
	if n.cfg.Self.Witness {
		return n.witnessRefusal(op)
	}
	if !n.leaseHeld() {
		// Without quorum a write does not even start (quorum.go).
		if err := n.waitLease(ctx, op); err != nil {
			return err
		}
	}
	n.mu.Lock()
	if n.role != api.Primary || n.demoting || n.closed {
		err := n.errNotPrimary(op)
		n.mu.Unlock()
		return err
	}
	// Counted before the activity log is touched: Close and demote wait
	// for every write that may still change it. A write of one entry that
	// waits for no ack is uncounted by its local, under the lock local
	// takes anyway; any other when it returns.
	n.writing++
	n.mu.Unlock()
	chunk := int64(protocol.MaxData)
	if p == nil {
		chunk = maxRange
	}
	single := length <= chunk
	uncounted := false
	defer func() {
		if !uncounted {
			n.mu.Lock()
			n.endWriteLocked()
			n.mu.Unlock()
		}
	}()
	var one [1]*journal.Entry
	ents := one[:0]
	var err error
	for done := int64(0); done < length && err == nil; {
		c := min(chunk, length-done)
		var data []byte
		if p != nil {
			data = p[done : done+c]
		}
		var e *journal.Entry
		e, err = n.start(ctx, journal.Write, off+done, c, data, f, 0, nil)
		if err != nil {
			break
		}
		uncounted = n.local(ctx, e, single)
		ents = append(ents, e)
		done += c
	}
	for _, e := range ents {
		if e.Err != nil && err == nil {
			err = e.Err
		}
		if e.NoLocal {
			// Not written here (detached disk): it counts only if a peer
			// acknowledged it, whatever the protocol.
			select {
			case <-n.doneCh(e):
				n.mu.Lock()
				acked := e.Acked
				n.mu.Unlock()
				if acked == 0 && err == nil {
					err = n.noCopyError(op, e)
				}
			case <-ctx.Done():
				if err == nil {
					err = ctx.Err()
				}
				waitLent(e)
			}
			continue
		}
		if e.DoneCh != nil {
			// Protocol C, shipped: wait for the acks.
			select {
			case <-e.DoneCh:
			case <-ctx.Done():
				if err == nil {
					err = ctx.Err()
				}
				waitLent(e)
			}
		}
	}
	if err == nil && !n.leaseHeld() {
		// Acknowledged only under the lease: a Primary that lost it may
		// have been replaced already (quorum.go).
		err = n.waitLease(ctx, op)
	}
	return err
}

// start puts an entry into the journal. For journal.Resync the entry goes to peer
// only and is not ready until read by local. A write with onDone completes
// through it (StartWrite) and is not shipped until Kick.
func (n *Node) start(ctx context.Context, k journal.Kind, off, length int64, src []byte, f protocol.Flags, only uint64, onDone func(error) func()) (*journal.Entry, error) {
	// Its channels are made when someone waits (LocalChan, doneCh): under
	// protocol A most writes are waited for by nobody, and without peers
	// none are.
	e := &journal.Entry{Kind: k, Flags: f, Off: off, N: length, OnDone: onDone}
	if onDone != nil {
		e.Ctx = ctx
	}
	if k == journal.Write && !n.detached.Load() {
		// A detached disk is not written here: nothing to protect.
		if err := n.meta.Activate(ctx, off, length); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("activity log for %d+%d: %w", off, length, err)
			}
			// The meta file cannot take the transaction (diskfail.go):
			// the write goes on without the local disk.
			n.detach("activity log transaction", err)
		} else {
			e.AL = true
		}
	}
	if k == journal.Write && n.recvAtomic.Load() != 0 {
		// The clock is read only while a peer receives writes: born
		// measures their lag (a zero born is left out), lastAppWrite
		// paces a resync, which runs only towards a receiving peer.
		e.Born = time.Now()
		n.lastAppWrite.Store(e.Born.UnixNano())
	} else if k == journal.Write && n.snapPacing() {
		n.lastAppWrite.Store(time.Now().UnixNano()) // snapshot reads yield to it
	}
	// Under protocol C a write lends its buffer to the journal instead
	// of a copy (see lend). An entry counts against journal-size what it
	// holds: a lent buffer its data; a write that is copied (or may be,
	// below) and a resync read their pooled buffer, under twice the data
	// (bufpool.Cap). So journal-size bounds the memory of the copies
	// whatever the size of the writes (TestJournalMemoryBounded).
	lend := k == journal.Write && n.cfg.Protocol == api.ProtocolC
	switch {
	case k == journal.Verify:
		// The buffer of its hashes (hashLocal): 8 KiB a batch at 4 KiB
		// blocks, counted as the allocator rounds it (slices.Grow).
		e.Data = slices.Grow([]byte(nil), hashesLen(length, n.cfg.Granularity))
		e.Size = journal.Overhead + int64(cap(e.Data))
	case k == journal.Resync:
		e.Size = journal.Overhead + int64(bufpool.Cap(int(length)))
	case len(src) > 0 && !lend:
		e.Size = journal.Overhead + int64(bufpool.Cap(len(src)))
	default:
		e.Size = journal.Overhead + int64(len(src))
	}
	if k == journal.Resync {
		e.Data, e.Buf = bufpool.Get(int(length))
	} else if len(src) > 0 && (lend || n.recvAtomic.Load() == 0) {
		// No peer receives writes now, or the buffer is lent: use the
		// caller's buffer, which stays valid until the write completes,
		// instead of copying it. Should a peer start receiving before
		// the entry is sequenced, the copy is made below unless lent.
		e.Data = src
	} else if len(src) > 0 {
		n.copyData(e, src)
	}
	n.mu.Lock()
	for {
		var err error
		switch {
		case n.closed:
			err = ErrClosed
		case k == journal.Write && (n.role != api.Primary || n.closed):
			err = n.errNotPrimary("write")
		case (k == journal.Resync || k == journal.Verify) && n.recvMask&only == 0:
			err = errResyncStopped
		case ctx.Err() != nil:
			err = ctx.Err()
		}
		if err != nil {
			n.unlockDone()
			bufpool.Put(e.Buf)
			if e.AL {
				n.meta.Complete(off, length)
			}
			return nil, err
		}
		if k == journal.Resync || k == journal.Verify {
			// Resync gets half the journal, so application writes are not
			// starved.
			if n.journal.Bytes == 0 || n.journal.Bytes+e.Size <= n.journal.Max/2 {
				break
			}
		} else if !n.journal.Full(e.Size) {
			break
		} else if n.pullAhead && n.cfg.Protocol == api.ProtocolA && n.pullAheadLocked() && !n.journal.Full(e.Size) {
			break
		} else if onDone != nil {
			// An asynchronous write must not wait here: the room may be
			// held by the writes its caller started and has not kicked
			// yet. The caller makes it with WriteAt, after a Kick.
			err = errNoRoom
		}
		if err != nil {
			n.unlockDone()
			bufpool.Put(e.Buf)
			if e.AL {
				n.meta.Complete(off, length)
			}
			return nil, err
		}
		n.waitRoomLocked(ctx, e.Size)
	}
	if k == journal.Write && n.recvMask != n.allMask() {
		if err := n.rotateIfNeededLocked(); err != nil {
			n.unlockDone()
			bufpool.Put(e.Buf)
			if e.AL {
				n.meta.Complete(off, length)
			}
			return nil, err
		}
	}
	e.Seq = n.nextSeq
	n.nextSeq++
	switch k {
	case journal.Write:
		e.Ship = n.recvMask
		if e.Ship != 0 && n.cfg.Protocol == api.ProtocolC && onDone == nil {
			e.DoneCh = make(chan struct{}) // write waits for the acks
		}
		if e.Ship != 0 && len(src) > 0 && e.Buf == nil {
			if lend {
				n.lend(e)
			} else {
				n.copyData(e, src)
			}
		}
		n.writes++
		for _, p := range n.peers {
			if e.Ship&p.bit == 0 {
				p.mark(off, length)
			}
		}
		e.Ready = true
	case journal.Resync, journal.Verify:
		e.Ship = only
	}
	e.Pend = e.Ship
	e.Deps = n.inflight.Overlapping(off, length, e.Deps)
	n.inflight.Add(e)
	n.journal.Push(e)
	if onDone != nil {
		// Shipped at Kick, with the writes started after it.
		n.unlockDone()
		return e, nil
	}
	if k != journal.Write || n.cfg.Protocol != api.ProtocolC {
		n.wakeLocked(e.Ship)
		n.unlockDone()
		return e, nil
	}
	var ss sessions
	n.sessionsLocked(e.Ship, &ss)
	n.unlockDone()
	// Protocol C: the write waits for the peers' acks, so it goes out
	// now, from this goroutine, before the local write.
	ss.pump()
	return e, nil
}

// sessions is a small set of sessions to pump once n.mu is released.
type sessions struct {
	k    int
	ss   [4]*session
	more []*session
}

// sessionsLocked adds the sessions of the peers in mask to ss; n.mu held.
func (n *Node) sessionsLocked(mask uint64, ss *sessions) {
	for _, p := range n.peers {
		if mask&p.bit == 0 || p.sess == nil {
			continue
		}
		if ss.k < len(ss.ss) {
			ss.ss[ss.k] = p.sess
			ss.k++
		} else {
			ss.more = append(ss.more, p.sess)
		}
	}
}

// pump makes each session write what is due (session.pump).
func (ss *sessions) pump() {
	for _, s := range ss.ss[:ss.k] {
		s.pump()
	}
	for _, s := range ss.more {
		s.pump()
	}
}

// copyData gives e its own copy of a write's data, which the shippers may
// still read after the caller's write has completed (protocol A).
func (n *Node) copyData(e *journal.Entry, src []byte) {
	e.Data, e.Buf = bufpool.Get(len(src))
	copy(e.Data, src)
	n.fingerprint(e)
}

// lend keeps the caller's buffer as e's data (e.Data is src already): a
// protocol-C write to peers completes only once they acknowledged it,
// and, lent, only once no shipper holds it either (maybeDoneLocked), so
// nothing reads the buffer after the caller got it back. It saves a copy
// of every byte written (1 MiB writes: a sixth of the Primary's CPU per
// write, +10 % IOPS here). WriteAt's caller waits for the completion even if its
// context ends (write); StartWrite's keeps the buffer until done is
// called (nbd.AsyncWriter).
func (n *Node) lend(e *journal.Entry) {
	e.Borrowed = true
	n.fingerprint(e)
}

// fingerprint hashes e's data blocks for dedup, here in the writer's
// goroutine rather than in the peers' shippers.
func (n *Node) fingerprint(e *journal.Entry) {
	if n.cfg.DedupIndexBytes > 0 {
		e.FP = dedup.Fingerprints(e.Data)
	}
}

var errResyncStopped = fmt.Errorf("resync stopped")

// errNoRoom: an asynchronous write found the journal full (StartWrite
// declines it).
var errNoRoom = errors.New("journal full")

// rotateIfNeededLocked starts a new current UUID if a peer that will miss
// this write has no bitmap UUID yet; n.mu held.
func (n *Node) rotateIfNeededLocked() error {
	bms := n.super.GI.Bitmap
	recv := make([]bool, len(bms))
	for i := range recv {
		recv[i] = true
	}
	for _, p := range n.peers {
		recv[p.slot] = n.recvMask&p.bit != 0
	}
	if !decide.NeedRotate(bms, recv) {
		return nil
	}
	away := make([]bool, len(recv))
	for i := range recv {
		away[i] = !recv[i]
	}
	err := n.persist(func(sb *bitmap.Superblock) {
		sb.GI.Current, sb.GI.History = decide.Rotate(sb.GI.Current, sb.GI.Bitmap, sb.GI.History, away, newUUID())
	})
	if err != nil {
		return err
	}
	n.log.Info("new current UUID: writing while a peer is away", "current", api.FormatUUID(n.super.GI.Current))
	for _, p := range n.peers {
		if p.conn == api.Connected {
			p.sendStateLocked(0)
		}
	}
	return nil
}

// wakeLocked wakes the shippers of the peers in mask.
func (n *Node) wakeLocked(mask uint64) {
	for _, p := range n.peers {
		if mask&p.bit != 0 && p.sess != nil {
			p.sess.wakeUp()
		}
	}
}

// local performs an entry's local part: wait for the earlier entries it
// overlaps, then write (or, for resync, read) the store. With uncount (the
// write's only entry), a write entry that is done once local (no ack to
// wait for, written here) ends its write in n.writing; local reports
// whether it did.
func (n *Node) local(ctx context.Context, e *journal.Entry, uncount bool) (uncounted bool) {
	for _, d := range e.Deps {
		<-d.LocalCh
	}
	e.Deps = nil
	var err error
	fua := e.Flags&protocol.FlagFUA != 0
	detached := n.detached.Load()
	if e.Kind == journal.Write && !detached {
		n.preserve(e.Off, e.N) // what the snapshots need of the range first
	}
	switch {
	case detached && e.Kind == journal.Write:
		// The local disk failed: the peers' copies are the copies.
		e.NoLocal = true
	case detached && e.Kind == journal.Resync:
		err = fmt.Errorf("resync read %d+%d on %s: local disk Failed", e.Off, e.N, n.cfg.Self.Name)
	case e.Kind == journal.Verify:
		err = n.hashLocal(ctx, e)
	case e.Kind == journal.Resync:
		err = scanAt(ctx, n.st, e.Data, e.Off)
		if err == nil && zero.Is(e.Data) {
			// All-zero blocks travel as a zeroes range, without data.
			e.Flags |= protocol.FlagZeroes
			bufpool.Put(e.Buf)
			e.Data, e.Buf = nil, nil
		}
	case e.Flags&protocol.FlagTrim != 0:
		err = n.st.Trim(ctx, e.Off, e.N, fua)
	case e.Flags&protocol.FlagZeroes != 0:
		err = n.st.WriteZeroes(ctx, e.Off, e.N, e.Flags&protocol.FlagNoHole != 0, fua)
	default:
		err = n.st.WriteAt(ctx, e.Data, e.Off, fua)
	}
	n.mu.Lock()
	if err != nil && e.Kind == journal.Write && n.diskError(err) {
		n.log.Error("local write failed", "off", e.Off, "len", e.N, "err", err)
		n.detachLocked("write", err)
		e.NoLocal, e.LocalErr, err = true, err, nil
	}
	if e.NoLocal {
		// This disk lacks the write: whoever resyncs with us later must
		// take it.
		for _, p := range n.peers {
			p.mark(e.Off, e.N)
		}
	}
	if err != nil {
		e.Err = err
		n.log.Error("local I/O failed", "off", e.Off, "len", e.N, "err", err)
	}
	if e.Kind == journal.Resync && e.Data == nil && e.Size > journal.Overhead {
		n.journal.Shrink(e, journal.Overhead)
		n.wakeRoomLocked(false)
	}
	e.Local = true
	e.Ready = true
	if e.LocalCh != nil {
		close(e.LocalCh)
	}
	n.inflight.Remove(e)
	n.maybeDoneLocked(e)
	n.journal.Trim()
	if e.Kind == journal.Resync || e.Kind == journal.Verify {
		n.wakeLocked(e.Ship)
	}
	if e.OnDone != nil && !e.NoLocal && !n.waitsAcks(e) {
		// Done once local (protocol A, or no peer receives it).
		n.completeLocked(e)
	}
	if uncount && e.Kind == journal.Write && !e.NoLocal && e.DoneCh == nil && e.OnDone == nil {
		n.endWriteLocked()
		uncounted = true
	}
	n.unlockDone()
	return uncounted
}

// endWriteLocked ends a write counted in n.writing; n.mu held.
func (n *Node) endWriteLocked() {
	n.writing--
	if n.writing == 0 {
		n.cond.Broadcast()
	}
}

// maybeDoneLocked completes an entry that is local and owes no acks, and
// frees it once no shipper holds it; n.mu held. The caller trims the
// journal.
func (n *Node) maybeDoneLocked(e *journal.Entry) {
	if !e.Closed && e.Local && e.Pend == 0 && (!e.Borrowed || e.Refs == 0) {
		// Its room in the journal is free now, even if a shipper is
		// still writing its data out (that memory is bounded by the
		// shippers' batch size); a lent write waits for the shipper,
		// as its caller reuses the buffer once it completes (lend).
		n.journal.Close(e)
		if e.DoneCh != nil {
			close(e.DoneCh)
		}
		if e.OnDone != nil {
			n.completeLocked(e)
		}
		if e.AL {
			n.meta.Complete(e.Off, e.N)
		}
		n.wakeRoomLocked(false)
	}
	if e.Closed && e.Refs == 0 && !e.Freed {
		e.Freed = true
		bufpool.Put(e.Buf)
		e.Buf, e.Data = nil, nil
	}
}

// pullAheadLocked stops shipping to the peers that hold the oldest journal
// entries (protocol A, on-congestion pull-ahead): their share is marked in
// their bitmaps and they are resynced once the journal drains. It reports
// whether it freed anything; n.mu held.
func (n *Node) pullAheadLocked() bool {
	for pos := n.journal.Base; pos < n.journal.End(); pos++ {
		e := n.journal.At(pos)
		if e.Freed || e.Pend == 0 {
			continue
		}
		for _, p := range n.peers {
			if e.Pend&p.bit != 0 && p.repl != api.Ahead {
				p.goAheadLocked()
			}
		}
		n.journal.Trim()
		return true
	}
	return false
}

// Flush makes every write completed before it durable: locally, and under
// protocol C on every peer that receives writes (a barrier each peer acks
// after its own fdatasync). Under protocol A the barrier is sent but not
// awaited: a flush is local only. On a Secondary it flushes the store.
func (n *Node) Flush(ctx context.Context) error {
	if n.cfg.Self.Witness {
		return n.witnessRefusal("flush")
	}
	n.mu.Lock()
	primary := n.role == api.Primary
	n.mu.Unlock()
	if !primary {
		return n.st.Flush(ctx)
	}
	if err := n.flush(ctx, n.cfg.Protocol == api.ProtocolC); err != nil {
		return err
	}
	if !n.leaseHeld() {
		return n.waitLease(ctx, "flush")
	}
	return nil
}

func (n *Node) flush(ctx context.Context, wait bool) error {
	b := n.barrier(0)
	var err error
	if !n.detached.Load() {
		err = n.st.Flush(ctx)
		if n.diskError(err) {
			n.detach("flush", err)
		}
	}
	if !n.detached.Load() {
		if wait && b != nil {
			select {
			case <-b.DoneCh:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return err
	}
	// Detached: the flush holds if a peer made everything durable.
	if b != nil {
		select {
		case <-b.DoneCh:
		case <-ctx.Done():
			return ctx.Err()
		}
		n.mu.Lock()
		acked := b.Acked
		n.mu.Unlock()
		if acked != 0 {
			return nil
		}
	}
	cause := err
	if cause == nil {
		cause = syscall.EIO
	}
	return fmt.Errorf("flush on %s: local disk Failed (detached) and no peer made the data durable: %w", n.cfg.Self.Name, cause)
}

// barrier appends a barrier for the receiving peers (or for only, if not
// zero); nil if no peer would get it.
func (n *Node) barrier(only uint64) *journal.Entry {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	b := n.pushBarrierLocked(only)
	var ss sessions
	if b != nil {
		n.sessionsLocked(b.Ship, &ss)
	}
	n.mu.Unlock()
	// Sent from here, at once: the peers' flushes run while ours does.
	ss.pump()
	return b
}

// barrierLocked is barrier with n.mu held, also while closing; it wakes
// the senders.
func (n *Node) barrierLocked(only uint64) *journal.Entry {
	b := n.pushBarrierLocked(only)
	if b != nil {
		n.wakeLocked(b.Ship)
	}
	return b
}

// pushBarrierLocked appends a barrier for the receiving peers (or for
// only); n.mu held. The caller sends it (wake or pump).
func (n *Node) pushBarrierLocked(only uint64) *journal.Entry {
	mask := n.recvMask
	if only != 0 {
		mask &= only
	}
	if mask == 0 {
		return nil
	}
	e := &journal.Entry{Kind: journal.Barrier, Seq: n.nextSeq, Ship: mask, Pend: mask, Ready: true, Local: true,
		Size: journal.Overhead, LocalCh: journal.ClosedCh, DoneCh: make(chan struct{})}
	n.nextSeq++
	n.journal.Push(e)
	return e
}

// doneCh returns a channel closed once e is done (maybeDoneLocked).
func (n *Node) doneCh(e *journal.Entry) chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if e.Closed {
		return journal.ClosedCh
	}
	if e.DoneCh == nil {
		e.DoneCh = make(chan struct{})
	}
	return e.DoneCh
}

// roomWaiter is a start waiting for room in the journal.
type roomWaiter struct {
	size int64
	ch   chan struct{}
}

// waitRoomLocked waits, n.mu held and released meanwhile, until room for
// size bytes may have been freed, the node's state changed or ctx ended;
// the caller checks its conditions again. Only waiters that fit are woken
// when room is freed (wakeRoomLocked), instead of every waiter at every
// completed write: with the journal full (protocol A when the peer lags),
// waking all 32 writers for one freed slot cost more CPU than the writes.
// A session's resync waits here too: it must see its context end, or the
// session's teardown, which waits for it, would never come.
func (n *Node) waitRoomLocked(ctx context.Context, size int64) {
	w := &roomWaiter{size: size, ch: make(chan struct{})}
	n.roomq = append(n.roomq, w)
	n.unlock()
	select {
	case <-w.ch:
		n.mu.Lock()
	case <-ctx.Done():
		n.mu.Lock()
		if i := slices.Index(n.roomq, w); i >= 0 {
			n.roomq = slices.Delete(n.roomq, i, i+1)
		}
	}
}

// wakeRoomLocked wakes, in order, the waiters whose sizes fit into the free
// room (all of them if the journal is empty or all is set); n.mu held.
func (n *Node) wakeRoomLocked(all bool) {
	if len(n.roomq) == 0 {
		return
	}
	free := n.journal.Max - n.journal.Bytes
	keep := n.roomq[:0]
	for _, w := range n.roomq {
		if all || n.journal.Bytes == 0 || w.size <= free {
			free -= w.size
			close(w.ch)
			continue
		}
		keep = append(keep, w)
	}
	clear(n.roomq[len(keep):])
	n.roomq = keep
}

// Quick reports whether a read or write completes without waiting for a
// peer (nbd.Quick): reads always (they are local), writes while no peer
// receives them. Under protocol A a write may wait for journal room.
func (n *Node) Quick(write bool, length int64) bool {
	return !write || n.recvAtomic.Load() == 0 && n.leaseHeld()
}

// hashesLen is the length of a Verify payload for length bytes (hashLocal
// makes it): its header and one sum per block.
func hashesLen(length, gran int64) int {
	return 20 + int((length+gran-1)/gran)*protocol.SumSize
}
