package replica

import (
	"context"
	"fmt"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// Online verify (repctl verify): the verify source walks the whole device
// in batches; each batch is a kVerify entry of the journal, so it takes its
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
	if n.sb.Disk != UpToDate || p.peerDisk != UpToDate {
		return fmt.Errorf("%w: verify needs both disks UpToDate; %s is %s and peer %s is %s", ErrRefused, n.cfg.Self.Name, n.sb.Disk, p.cfg.Name, p.peerDisk)
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
	p.sy.verifyTotal = n.cfg.Size
	p.sy.verifyDone = 0
	p.sy.verifyPending = 0
	p.sy.verifyMismatch = 0
	p.sy.verifyStart = time.Now()
	p.sy.verifyMeter = rateMeter{}
	p.setReplLocked(api.VerifySource)
	p.sendStateLocked(0)
	select {
	case p.sess.resync <- struct{}{}:
	default:
	}
	n.log.Info("online verify started", "peer", p.cfg.Name, "bytes", n.cfg.Size)
	return nil
}

// connectedPeerLocked finds the named peer (or the first connected one) and
// refuses one that is not connected; n.mu held.
func (n *Node) connectedPeerLocked(name string) (*peer, error) {
	if name == "" {
		for _, p := range n.peers {
			if p.conn == api.Connected && p.sess != nil {
				return p, nil
			}
		}
		return nil, fmt.Errorf("%w: no peer is connected", ErrRefused)
	}
	p, err := n.peerByName(name)
	if err != nil {
		return nil, err
	}
	if p.conn != api.Connected || p.sess == nil {
		return nil, fmt.Errorf("%w: peer %s is not connected", ErrRefused, name)
	}
	return p, nil
}

// verifyPass runs on the verify source: one kVerify entry per batch, then
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
		e, err := n.start(s.ctx, kVerify, off, ln, nil, 0, p.bit)
		if err == errResyncStopped {
			return nil
		}
		if err != nil {
			return err
		}
		n.mu.Lock()
		p.sy.verifyPending++
		n.mu.Unlock()
		n.local(s.ctx, e, false)
		if e.err != nil {
			return e.err
		}
	}
	for {
		n.mu.Lock()
		active := p.sess == s && p.repl == api.VerifySource
		pending := p.sy.verifyPending
		if active && pending == 0 {
			p.verifyFinishedLocked()
			n.unlock()
			return nil
		}
		n.mu.Unlock()
		if !active {
			return nil
		}
		if err := waitCtx(s.ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// verifyFinishedLocked ends a verify on either side; n.mu held. A Primary
// with differences marked starts the repair at once.
func (p *peer) verifyFinishedLocked() {
	n := p.n
	msg := fmt.Sprintf("verify with %s finished: %d KiB differ, %d KiB out of sync", p.cfg.Name, p.sy.verifyMismatch/1024, p.bm.DirtyBytes()/1024)
	n.log.Info("online verify finished", "peer", p.cfg.Name, "mismatch_bytes", p.sy.verifyMismatch,
		"seconds", time.Since(p.sy.verifyStart).Seconds())
	n.event("verify", p.cfg.Name, "", "", msg)
	n.meta.FlushBitmaps()
	if n.role == api.Primary && p.bm.Count() > 0 {
		p.setReplLocked(api.SyncSource)
		p.startSyncLocked()
		p.sy.syncStart = time.Now()
		p.sy.meter = rateMeter{}
	} else {
		p.setReplLocked(api.Established)
	}
	p.sendStateLocked(0)
}

// hashLocal is a kVerify entry's local part: read and hash the range. The
// entry's data becomes the Verify payload.
func (n *Node) hashLocal(ctx context.Context, e *entry) error {
	buf, pb := getBuf(int(e.n))
	defer putBuf(pb)
	if err := n.st.ReadAt(ctx, buf, e.off); err != nil {
		return err
	}
	h := protocol.Hashes{Off: uint64(e.off), Len: uint64(e.n)}
	h.Sums = hashBlocks(make([][protocol.SumSize]byte, 0, (e.n+n.cfg.Granularity-1)/n.cfg.Granularity), buf, n.cfg.Granularity)
	e.data = h.Append(make([]byte, 0, 20+len(h.Sums)*protocol.SumSize))
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
	if off < 0 || ln <= 0 || off+ln > a.n.cfg.Size || (ln+gran-1)/gran != int64(len(h.Sums)) {
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
	buf, pb := getBuf(int(it.n))
	defer putBuf(pb)
	if err := n.st.ReadAt(context.Background(), buf, it.off); err != nil {
		return err
	}
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
	p.sy.verifyDone += it.n
	for _, b := range m.Bad {
		p.mark(int64(b.Start), int64(b.Count))
		p.sy.verifyMismatch += int64(b.Count)
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
	if p.sy.verifyPending > 0 {
		p.sy.verifyPending--
	}
	p.sy.verifyDone += int64(m.Len)
	for _, b := range m.Bad {
		p.mark(int64(b.Start), int64(b.Count))
		p.sy.verifyMismatch += int64(b.Count)
		n.log.Warn("online verify: blocks differ; marked out of sync", "peer", p.cfg.Name, "off", b.Start, "len", b.Count)
	}
	return nil
}

// syncStateLocked handles the replication states a peer announces for
// verify and pause-sync; it reports whether it handled r. n.mu held.
func (p *peer) syncStateLocked(r api.Repl) bool {
	switch {
	case r == api.VerifySource && p.repl == api.Established:
		p.sy.verifyTotal = p.n.cfg.Size
		p.sy.verifyDone = 0
		p.sy.verifyMismatch = 0
		p.sy.verifyStart = time.Now()
		p.sy.verifyMeter = rateMeter{}
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

// syncStatusLocked fills the resync and verify progress of ps; n.mu held.
func (p *peer) syncStatusLocked(ps *api.PeerStatus) {
	now := time.Now()
	ps.SyncPausedByUser = p.sy.userPaused
	ps.CSumsEqualBytes = p.sy.csumsEqual.Load()
	ps.VerifyMismatchKiB = p.sy.verifyMismatch / 1024
	switch p.repl {
	case api.SyncSource, api.SyncTarget, api.PausedSync:
		if p.repl == api.PausedSync && !p.sy.userPaused {
			break
		}
		total := max(p.syncTotal, 1)
		left := p.bm.DirtyBytes()
		if p.repl == api.SyncTarget {
			left = max(p.syncTotal-p.sy.recvResync.Load(), 0)
			if left == 0 && p.bm.Count() > 0 {
				left = min(p.bm.DirtyBytes(), p.n.cfg.Granularity)
			}
		}
		left = min(left, total)
		pct := 100 * float64(total-left) / float64(total)
		ps.SyncPercent = &pct
		ps.SyncLeftBytes = left
		if p.repl != api.PausedSync {
			ps.SyncRateBytesPerSec = p.sy.meter.sample(now, total-left)
			ps.SyncETASeconds = int64(ETA(left, ps.SyncRateBytesPerSec).Seconds() + 0.5)
		}
	case api.VerifySource, api.VerifyTarget:
		total := max(p.sy.verifyTotal, 1)
		done := min(p.sy.verifyDone, total)
		pct := 100 * float64(done) / float64(total)
		ps.VerifyPercent = &pct
		ps.VerifiedBytes = done
		ps.VerifyRateBytesSec = p.sy.verifyMeter.sample(now, done)
		ps.SyncLeftBytes = total - done
		ps.SyncETASeconds = int64(ETA(total-done, ps.VerifyRateBytesSec).Seconds() + 0.5)
	}
}
