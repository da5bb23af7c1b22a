package replica

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/protocol"
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
	n.mu.Lock()
	disk := n.sb.Disk
	n.mu.Unlock()
	if disk == Failed {
		return fmt.Errorf("read on %s: local disk Failed (detached after an I/O error); reads are not served from peers, fail over to an UpToDate node (%w)", n.cfg.Self.Name, syscall.EIO)
	}
	if disk != UpToDate {
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
	var one [1]*entry
	ents := one[:0]
	var err error
	for done := int64(0); done < length && err == nil; {
		c := min(chunk, length-done)
		var data []byte
		if p != nil {
			data = p[done : done+c]
		}
		var e *entry
		e, err = n.start(ctx, kWrite, off+done, c, data, f, 0)
		if err != nil {
			break
		}
		uncounted = n.local(ctx, e, single)
		ents = append(ents, e)
		done += c
	}
	for _, e := range ents {
		if e.err != nil && err == nil {
			err = e.err
		}
		if e.noLocal {
			// Not written here (detached disk): it counts only if a peer
			// acknowledged it, whatever the protocol.
			select {
			case <-n.doneCh(e):
				n.mu.Lock()
				acked := e.acked
				n.mu.Unlock()
				if acked == 0 && err == nil {
					err = n.noCopyError(op, e)
				}
			case <-ctx.Done():
				if err == nil {
					err = ctx.Err()
				}
			}
			continue
		}
		if e.doneCh != nil {
			// Protocol C, shipped: wait for the acks.
			select {
			case <-e.doneCh:
			case <-ctx.Done():
				if err == nil {
					err = ctx.Err()
				}
			}
		}
	}
	return err
}

// start puts an entry into the journal. For kResync the entry goes to peer
// only and is not ready until read by local.
func (n *Node) start(ctx context.Context, k kind, off, length int64, src []byte, f protocol.Flags, only uint64) (*entry, error) {
	if k == kWrite {
		if err := n.meta.Activate(ctx, off, length); err != nil {
			return nil, fmt.Errorf("activity log for %d+%d: %w", off, length, err)
		}
	}
	// Its channels are made when someone waits (localChLocked, doneCh):
	// under protocol A most writes are waited for by nobody, and without
	// peers none are.
	e := &entry{kind: k, flags: f, off: off, n: length}
	if k == kWrite && n.recvAtomic.Load() != 0 {
		// The clock is read only while a peer receives writes: born
		// measures their lag (a zero born is left out), lastAppWrite
		// paces a resync, which runs only towards a receiving peer.
		e.born = time.Now()
		n.lastAppWrite.Store(e.born.UnixNano())
	}
	e.size = entryOverhead + int64(len(src))
	if k == kResync {
		e.size = entryOverhead + length
		e.data, e.buf = getBuf(int(length))
	} else if len(src) > 0 && n.recvAtomic.Load() == 0 {
		// No peer receives writes now: borrow the caller's buffer, which
		// stays valid until the write completes, instead of copying it.
		// Should a peer start receiving before the entry is sequenced,
		// the copy is made below.
		e.data = src
	} else if len(src) > 0 {
		n.copyData(e, src)
	}
	n.mu.Lock()
	for {
		var err error
		switch {
		case n.closed:
			err = ErrClosed
		case k == kWrite && (n.role != api.Primary || n.closed):
			err = n.errNotPrimary("write")
		case (k == kResync || k == kVerify) && n.recvMask&only == 0:
			err = errResyncStopped
		case ctx.Err() != nil:
			err = ctx.Err()
		}
		if err != nil {
			n.mu.Unlock()
			putBuf(e.buf)
			if k == kWrite {
				n.meta.Complete(off, length)
			}
			return nil, err
		}
		if k == kResync || k == kVerify {
			// Resync gets half the journal, so application writes are not
			// starved.
			if n.j.bytes == 0 || n.j.bytes+e.size <= n.j.max/2 {
				break
			}
		} else if !n.j.full(e.size) {
			break
		} else if n.pullAhead && n.cfg.Protocol == api.ProtocolA && n.pullAheadLocked() && !n.j.full(e.size) {
			break
		}
		n.waitRoomLocked(ctx, e.size)
	}
	if k == kWrite && n.recvMask != n.allMask() {
		if err := n.rotateIfNeededLocked(); err != nil {
			n.mu.Unlock()
			putBuf(e.buf)
			n.meta.Complete(off, length)
			return nil, err
		}
	}
	e.seq = n.nextSeq
	n.nextSeq++
	switch k {
	case kWrite:
		e.ship = n.recvMask
		if e.ship != 0 && n.cfg.Protocol == api.ProtocolC {
			e.doneCh = make(chan struct{}) // write waits for the acks
		}
		if e.ship != 0 && len(src) > 0 && e.buf == nil {
			n.copyData(e, src)
		}
		n.writes++
		for _, p := range n.peers {
			if e.ship&p.bit == 0 {
				p.mark(off, length)
			}
		}
		e.ready = true
	case kResync, kVerify:
		e.ship = only
	}
	e.pend = e.ship
	e.deps = n.inflight.overlapping(off, length, e.deps)
	n.inflight.add(e)
	n.j.push(e)
	n.wakeLocked(e.ship)
	n.mu.Unlock()
	return e, nil
}

// copyData gives e its own copy of a write's data, which the shippers may
// still read after the caller's write has completed (protocol A).
func (n *Node) copyData(e *entry, src []byte) {
	e.data, e.buf = getBuf(len(src))
	copy(e.data, src)
	if n.cfg.DedupIndexBytes > 0 {
		// Here, in the writer's goroutine, rather than in the peers'
		// shippers.
		e.fp = fingerprints(e.data)
	}
}

var errResyncStopped = fmt.Errorf("resync stopped")

func (n *Node) allMask() uint64 {
	return uint64(1)<<uint(len(n.peers)) - 1
}

// rotateIfNeededLocked starts a new current UUID if a peer that will miss
// this write has no bitmap UUID yet; n.mu held.
func (n *Node) rotateIfNeededLocked() error {
	bms := n.sb.GI.Bitmap
	recv := make([]bool, len(bms))
	for i := range recv {
		recv[i] = true
	}
	for _, p := range n.peers {
		recv[p.slot] = n.recvMask&p.bit != 0
	}
	if !NeedRotate(bms, recv) {
		return nil
	}
	away := make([]bool, len(recv))
	for i := range recv {
		away[i] = !recv[i]
	}
	err := n.persist(func(sb *bitmap.Superblock) {
		sb.GI.Current, sb.GI.History = Rotate(sb.GI.Current, sb.GI.Bitmap, sb.GI.History, away, newUUID())
	})
	if err != nil {
		return err
	}
	n.log.Info("new current UUID: writing while a peer is away", "current", uuidString(n.sb.GI.Current))
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
func (n *Node) local(ctx context.Context, e *entry, uncount bool) (uncounted bool) {
	for _, d := range e.deps {
		<-d.localCh
	}
	e.deps = nil
	var err error
	fua := e.flags&protocol.FlagFUA != 0
	detached := n.detached.Load()
	switch {
	case detached && e.kind == kWrite:
		// The local disk failed: the peers' copies are the copies.
		e.noLocal = true
	case detached && e.kind == kResync:
		err = fmt.Errorf("resync read %d+%d on %s: local disk Failed", e.off, e.n, n.cfg.Self.Name)
	case e.kind == kVerify:
		err = n.hashLocal(ctx, e)
	case e.kind == kResync:
		err = n.st.ReadAt(ctx, e.data, e.off)
		if err == nil && allZero(e.data) {
			// All-zero blocks travel as a zeroes range, without data.
			e.flags |= protocol.FlagZeroes
			putBuf(e.buf)
			e.data, e.buf = nil, nil
		}
	case e.flags&protocol.FlagTrim != 0:
		err = n.st.Trim(ctx, e.off, e.n, fua)
	case e.flags&protocol.FlagZeroes != 0:
		err = n.st.WriteZeroes(ctx, e.off, e.n, e.flags&protocol.FlagNoHole != 0, fua)
	default:
		err = n.st.WriteAt(ctx, e.data, e.off, fua)
	}
	n.mu.Lock()
	if err != nil && e.kind == kWrite && n.diskError(err) {
		n.log.Error("local write failed", "off", e.off, "len", e.n, "err", err)
		n.detachLocked("write", err)
		e.noLocal, e.localErr, err = true, err, nil
	}
	if e.noLocal {
		// This disk lacks the write: whoever resyncs with us later must
		// take it.
		for _, p := range n.peers {
			p.mark(e.off, e.n)
		}
	}
	if err != nil {
		e.err = err
		n.log.Error("local I/O failed", "off", e.off, "len", e.n, "err", err)
	}
	if e.kind == kResync && e.data == nil && e.size > entryOverhead {
		n.j.bytes -= e.size - entryOverhead
		e.size = entryOverhead
		n.wakeRoomLocked(false)
	}
	e.local = true
	e.ready = true
	if e.localCh != nil {
		close(e.localCh)
	}
	n.inflight.remove(e)
	n.maybeDoneLocked(e)
	n.j.trim()
	if e.kind == kResync || e.kind == kVerify {
		n.wakeLocked(e.ship)
	}
	if uncount && e.kind == kWrite && !e.noLocal && e.doneCh == nil {
		n.endWriteLocked()
		uncounted = true
	}
	n.mu.Unlock()
	return uncounted
}

// endWriteLocked ends a write counted in n.writing; n.mu held.
func (n *Node) endWriteLocked() {
	n.writing--
	if n.writing == 0 {
		n.cond.Broadcast()
	}
}

var zeros = make([]byte, protocol.MaxData)

func allZero(b []byte) bool {
	for len(b) > 0 {
		c := min(len(b), len(zeros))
		if !bytes.Equal(b[:c], zeros[:c]) {
			return false
		}
		b = b[c:]
	}
	return true
}

// maybeDoneLocked completes an entry that is local and owes no acks, and
// frees it once no shipper holds it; n.mu held. The caller trims the
// journal.
func (n *Node) maybeDoneLocked(e *entry) {
	if !e.closed && e.local && e.pend == 0 {
		e.closed = true
		if e.doneCh != nil {
			close(e.doneCh)
		}
		// Its room in the journal is free now, even if a shipper is
		// still writing its data out (that memory is bounded by the
		// shippers' batch size).
		n.j.bytes -= e.size
		if e.kind == kWrite {
			n.meta.Complete(e.off, e.n)
		}
		n.wakeRoomLocked(false)
	}
	if e.closed && e.refs == 0 && !e.freed {
		e.freed = true
		putBuf(e.buf)
		e.buf, e.data = nil, nil
	}
}

// pullAheadLocked stops shipping to the peers that hold the oldest journal
// entries (protocol A, on-congestion pull-ahead): their share is marked in
// their bitmaps and they are resynced once the journal drains. It reports
// whether it freed anything; n.mu held.
func (n *Node) pullAheadLocked() bool {
	for pos := n.j.base; pos < n.j.end(); pos++ {
		e := n.j.at(pos)
		if e.freed || e.pend == 0 {
			continue
		}
		for _, p := range n.peers {
			if e.pend&p.bit != 0 && p.repl != api.Ahead {
				p.goAheadLocked()
			}
		}
		n.j.trim()
		return true
	}
	return false
}

// Flush makes every write completed before it durable: locally, and under
// protocol C on every peer that receives writes (a barrier each peer acks
// after its own fdatasync). Under protocol A the barrier is sent but not
// awaited: a flush is local only. On a Secondary it flushes the store.
func (n *Node) Flush(ctx context.Context) error {
	n.mu.Lock()
	primary := n.role == api.Primary
	n.mu.Unlock()
	if !primary {
		return n.st.Flush(ctx)
	}
	return n.flush(ctx, n.cfg.Protocol == api.ProtocolC)
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
			case <-b.doneCh:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return err
	}
	// Detached: the flush holds if a peer made everything durable.
	if b != nil {
		select {
		case <-b.doneCh:
		case <-ctx.Done():
			return ctx.Err()
		}
		n.mu.Lock()
		acked := b.acked
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
func (n *Node) barrier(only uint64) *entry {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	return n.barrierLocked(only)
}

// barrierLocked is barrier with n.mu held, also while closing.
func (n *Node) barrierLocked(only uint64) *entry {
	mask := n.recvMask
	if only != 0 {
		mask &= only
	}
	if mask == 0 {
		return nil
	}
	e := &entry{kind: kBarrier, seq: n.nextSeq, ship: mask, pend: mask, ready: true, local: true,
		size: entryOverhead, localCh: closedCh, doneCh: make(chan struct{})}
	n.nextSeq++
	n.j.push(e)
	n.wakeLocked(mask)
	return e
}

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// localChLocked returns a channel closed once e is local, making it if
// nobody waited before; n.mu held (local closes it under n.mu).
func (e *entry) localChLocked() chan struct{} {
	if e.local {
		return closedCh
	}
	if e.localCh == nil {
		e.localCh = make(chan struct{})
	}
	return e.localCh
}

// doneCh returns a channel closed once e is done (maybeDoneLocked).
func (n *Node) doneCh(e *entry) chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if e.closed {
		return closedCh
	}
	if e.doneCh == nil {
		e.doneCh = make(chan struct{})
	}
	return e.doneCh
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
	n.mu.Unlock()
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
	free := n.j.max - n.j.bytes
	keep := n.roomq[:0]
	for _, w := range n.roomq {
		if all || n.j.bytes == 0 || w.size <= free {
			free -= w.size
			close(w.ch)
			continue
		}
		keep = append(keep, w)
	}
	clear(n.roomq[len(keep):])
	n.roomq = keep
}

// broadcastLocked wakes everyone waiting on the node's state: the writes
// draining (Close, demote) and the starts waiting for journal room.
func (n *Node) broadcastLocked() {
	n.cond.Broadcast()
	n.wakeRoomLocked(true)
}

// Quick reports whether a read or write completes without waiting for a
// peer (nbd.Quick): reads always (they are local), writes while no peer
// receives them. Under protocol A a write may wait for journal room.
func (n *Node) Quick(write bool, length int64) bool {
	return !write || n.recvAtomic.Load() == 0
}
