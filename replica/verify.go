package replica

import (
	"context"
	"fmt"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/ctxtime"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/bufpool"
	"github.com/repd/repd/replica/internal/journal"
	"github.com/repd/repd/replica/internal/pace"
)

// Online verify (repctl verify): the verify source walks the whole device
// in batches; each batch is a journal.Verify entry of the journal, so it takes its
// place in the write sequence. The source hashes the batch once every
// earlier overlapping write is local (later ones wait for the read), ships
// the hashes in sequence order, and the target's applier hashes its copy at
// the same point of the sequence (after every earlier overlapping write,
// before every later one). A block written during its comparison therefore
// never shows up as a false difference.
//
// Differences are marked out of sync in both nodes' bitmaps, counted
// (verify_mismatches_kib) and logged with their ranges. DRBD semantics:
// verify finds, resync repairs. When one of the two is Primary, the repair
// starts by itself right after the verify (the Primary becomes SyncSource for
// the marked blocks). Between two Secondaries the marks stay until
// `repctl invalidate` on the node with the bad copy (or invalidate-remote
// from the good one).
//
// A Secondary refuses to verify while a connected peer is Primary (the
// Primary's writes reach it outside the verify's sequence): run it on the
// Primary.

// Verify starts an online verify toward peer name (the first connected
// peer when empty). It returns once started; progress is in Status.
func (n *Node) Verify(name string) error {
	n.mu.Lock()
	defer n.unlock()
	if n.closed {
		return ErrClosed
	}
	p, err := n.connectedPeerLocked(name)
	if err != nil {
		return err
	}
	if n.super.Disk != diskUpToDate || p.peerDisk != diskUpToDate {
		return fmt.Errorf("%w: verify needs both disks UpToDate; %s is %s and peer %s is %s", ErrRefused, n.cfg.Self.Name, n.super.Disk, p.cfg.Name, p.peerDisk)
	}
	if p.repl != api.Established {
		return fmt.Errorf("%w: peer %s is %s; verify runs from Established (wait for it: repctl wait-sync)", ErrRefused, p.cfg.Name, p.repl)
	}
	if n.role != api.Primary {
		for _, q := range n.peers {
			if q.conn == api.Connected && q.peerRole == api.Primary {
				return fmt.Errorf("%w: peer %s is Primary; run verify there (its writes would race a verify from this Secondary)", ErrRefused, q.cfg.Name)
			}
		}
	}
	p.sync.verifyTotal = n.cfg.Size
	p.sync.verifyDone = 0
	p.sync.verifyPending = 0
	p.sync.verifyMismatch = 0
	p.sync.verifyStart = time.Now()
	p.sync.verifyMeter = pace.Meter{}
	p.setReplLocked(api.VerifySource)
	p.sendStateLocked(0)
	select {
	case p.sess.resync <- struct{}{}:
	default:
	}
	n.log.Info("online verify started", "peer", p.cfg.Name, "bytes", n.cfg.Size)
	return nil
}

// verifyPass runs on the verify source: one journal.Verify entry per batch, then
// it waits for every reply and ends the verify.
func (s *session) verifyPass() error {
	p, n := s.p, s.p.n
	step := n.sumsBatch() * n.cfg.Granularity
	for off := int64(0); off < n.cfg.Size; off += step {
		n.mu.Lock()
		active := p.sess == s && p.repl == api.VerifySource
		n.mu.Unlock()
		if !active {
			return nil
		}
		ln := min(step, n.cfg.Size-off)
		if err := s.pace(ln); err != nil {
			return err
		}
		prefetch(n.st, off+ln, step) // the next step's, while this one is read
		e, err := n.start(s.ctx, journal.Verify, off, ln, nil, 0, p.bit, nil)
		if err == errResyncStopped {
			return nil
		}
		if err != nil {
			return err
		}
		n.mu.Lock()
		p.sync.verifyPending++
		n.mu.Unlock()
		n.local(s.ctx, e, false)
		if e.Err != nil {
			return e.Err
		}
	}
	for {
		n.mu.Lock()
		active := p.sess == s && p.repl == api.VerifySource
		pending := p.sync.verifyPending
		if active && pending == 0 {
			p.verifyFinishedLocked()
			n.unlock()
			return nil
		}
		n.mu.Unlock()
		if !active {
			return nil
		}
		if err := ctxtime.Sleep(s.ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// verifyFinishedLocked ends a verify on either side; n.mu held. A Primary
// with differences marked starts the repair at once.
func (p *peer) verifyFinishedLocked() {
	n := p.n
	msg := fmt.Sprintf("verify with %s finished: %d KiB differ, %d KiB out of sync", p.cfg.Name, p.sync.verifyMismatch/1024, p.bitmap.DirtyBytes()/1024)
	n.log.Info("online verify finished", "peer", p.cfg.Name, "mismatch_bytes", p.sync.verifyMismatch,
		"seconds", time.Since(p.sync.verifyStart).Seconds())
	n.event("verify", p.cfg.Name, "", "", msg)
	if err := n.flushBitmapsLocked("verify"); err != nil {
		// Detached: no resync from here; the differences stay marked in
		// memory (and on the peer, which marked them too).
		n.log.Error("verify's marks are not durable", "peer", p.cfg.Name, "err", err)
	}
	if n.role == api.Primary && p.bitmap.Count() > 0 && !n.detached.Load() {
		p.setReplLocked(api.SyncSource)
		p.startSyncLocked()
		p.sync.syncStart = time.Now()
		p.sync.meter = pace.Meter{}
	} else {
		p.setReplLocked(api.Established)
	}
	p.sendStateLocked(0)
}

// hashLocal is a journal.Verify entry's local part: read and hash the range. The
// entry's data becomes the Verify payload.
func (n *Node) hashLocal(ctx context.Context, e *journal.Entry) error {
	buf, pb := bufpool.Get(int(e.N))
	defer bufpool.Put(pb)
	if err := scanAt(ctx, n.st, buf, e.Off); err != nil {
		return err
	}
	h := protocol.Hashes{Off: uint64(e.Off), Len: uint64(e.N)}
	h.Sums = hashBlocks(make([][protocol.SumSize]byte, 0, (e.N+n.cfg.Granularity-1)/n.cfg.Granularity), buf, n.cfg.Granularity)
	e.Data = h.Append(e.Data[:0]) // start made it, and counted it
	return nil
}

// verify queues a Verify from the source at its place in the sequence.
func (a *applier) verify(seq uint64, payload []byte) error {
	var h protocol.Hashes
	if err := h.Decode(payload); err != nil {
		return a.s.p.readErr("verify", err)
	}
	gran := a.n.cfg.Granularity
	off, ln := int64(h.Off), int64(h.Len)
	if off < 0 || ln <= 0 || off > a.n.cfg.Size || ln > a.n.cfg.Size-off || (ln+gran-1)/gran != int64(len(h.Sums)) {
		return a.s.p.readErr("verify", fmt.Errorf("%w: Verify %d+%d with %d sums", protocol.ErrCorrupt, off, ln, len(h.Sums)))
	}
	a.submit(&aitem{seq: seq, off: off, n: ln, sums: h.Sums, done: make(chan struct{})}, nil)
	return nil
}

// verifyItem hashes the target's copy of a Verify's range (its turn in the
// sequence has come), marks the differences and answers.
func (a *applier) verifyItem(it *aitem) error {
	n, p := a.n, a.s.p
	gran := n.cfg.Granularity
	buf, pb := bufpool.Get(int(it.n))
	defer bufpool.Put(pb)
	if err := scanAt(context.Background(), n.st, buf, it.off); err != nil {
		return err
	}
	prefetch(n.st, it.off+it.n, it.n) // the source sends its steps in order
	mine := hashBlocks(nil, buf, gran)
	m := protocol.Mismatches{Off: uint64(it.off), Len: uint64(it.n)}
	for i := range mine {
		if mine[i] == it.sums[i] {
			continue
		}
		bo := it.off + int64(i)*gran
		k := min(gran, it.off+it.n-bo)
		if l := len(m.Bad); l > 0 && m.Bad[l-1].Start+m.Bad[l-1].Count == uint64(bo) {
			m.Bad[l-1].Count += uint64(k)
		} else {
			m.Bad = append(m.Bad, protocol.Extent{Start: uint64(bo), Count: uint64(k)})
		}
	}
	n.mu.Lock()
	p.sync.verifyDone += it.n
	for _, b := range m.Bad {
		p.mark(int64(b.Start), int64(b.Count))
		p.sync.verifyMismatch += int64(b.Count)
		n.log.Warn("online verify: blocks differ; marked out of sync", "peer", p.cfg.Name, "off", b.Start, "len", b.Count)
	}
	n.mu.Unlock()
	a.s.queue(ctrlMsg{t: protocol.TypeVerifyReply, seq: it.seq, payload: m.Append(nil)})
	return nil
}

// onVerifyReply runs on the verify source for each answer.
func (s *session) onVerifyReply(payload []byte) error {
	p, n := s.p, s.p.n
	var m protocol.Mismatches
	if err := m.Decode(payload); err != nil {
		return p.readErr("verify reply", err)
	}
	if m.Off+m.Len > uint64(n.cfg.Size) {
		return p.readErr("verify reply", fmt.Errorf("%w: VerifyReply %d+%d beyond the device", protocol.ErrCorrupt, m.Off, m.Len))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if p.sync.verifyPending > 0 {
		p.sync.verifyPending--
	}
	p.sync.verifyDone += int64(m.Len)
	for _, b := range m.Bad {
		p.mark(int64(b.Start), int64(b.Count))
		p.sync.verifyMismatch += int64(b.Count)
		n.log.Warn("online verify: blocks differ; marked out of sync", "peer", p.cfg.Name, "off", b.Start, "len", b.Count)
	}
	return nil
}

// syncStateLocked handles the replication states a peer announces for
// verify and pause-sync; it reports whether it handled r. n.mu held.
func (p *peer) syncStateLocked(r api.Repl) bool {
	switch {
	case r == api.VerifySource && p.repl == api.Established:
		p.sync.verifyTotal = p.n.cfg.Size
		p.sync.verifyDone = 0
		p.sync.verifyMismatch = 0
		p.sync.verifyStart = time.Now()
		p.sync.verifyMeter = pace.Meter{}
		p.setReplLocked(api.VerifyTarget)
		return true
	case r == api.VerifySource:
		return true
	case p.repl == api.VerifyTarget && r != api.SyncSource:
		p.verifyFinishedLocked()
		return true
	case r == api.PausedSync && p.repl == api.SyncTarget:
		p.setReplLocked(api.PausedSync)
		return true
	}
	return false
}
