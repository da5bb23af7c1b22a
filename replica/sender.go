package replica

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/dedup"
	"github.com/repd/repd/replica/internal/journal"
)

// txFor returns the shipper's dedup state, nil if dedup is off for this
// session (not configured, or the peer does not resolve references).
func (s *session) txFor() *dedup.Encoder {
	d := &s.dedup
	if !d.txInit {
		d.txInit = true
		n := s.p.n
		if n.cfg.DedupIndexBytes > 0 && s.p.features.Load()&protocol.FeatureDedup != 0 {
			d.tx = dedup.NewEncoder(n.cfg.DedupIndexBytes)
		}
	}
	return d.tx
}

// frame writes one frame into the connection's buffer. The first error
// (a frame the writer refuses: too large, or the encoder failed) is kept
// and ends the session at the next flush: a frame is never silently lost.
func (s *session) frame(t protocol.Type, f protocol.Flags, seq uint64, head, data []byte) {
	if err := s.c.W.WriteFrame(t, f, seq, head, data); err != nil && s.frameErr == nil {
		s.frameErr = fmt.Errorf("write %s frame %d: %w", t, seq, err)
	}
}

// shipWrite writes the frame of write or resync entry e (flags f) into the
// connection's buffer: as a DedupWrite if any of its blocks is zero or
// known to the receiver, else as a plain Write. head is scratch.
func (s *session) shipWrite(e *journal.Entry, f protocol.Flags, head []byte) {
	p := s.p
	tx := s.txFor()
	w := protocol.Write{Off: uint64(e.Off), Len: uint64(e.N)}
	if f&(protocol.FlagTrim|protocol.FlagZeroes) != 0 || len(e.Data) == 0 {
		if tx != nil {
			tx.Index.Invalidate(e.Off, e.N)
		}
		s.frame(protocol.TypeWrite, f, e.Seq, w.AppendHead(head), nil)
		return
	}
	p.stats.logical.Add(e.N)
	if tx == nil {
		s.frame(protocol.TypeWrite, f, e.Seq, w.AppendHead(head), e.Data)
		return
	}
	dw, refs, zeros, ok := tx.Encode(e.Off, e.Data, e.FP)
	if !ok {
		s.frame(protocol.TypeWrite, f, e.Seq, w.AppendHead(head), e.Data)
		return
	}
	p.stats.dedupBlocks.Add(refs)
	p.stats.zeroBlocks.Add(zeros)
	s.dedup.head = dw.AppendHead(s.dedup.head[:0])
	s.frame(protocol.TypeWrite, f|protocol.FlagDedup, e.Seq, s.dedup.head, dw.Data)
}

// shipResends writes the full data of the writes the peer asked for; the
// caller releases the returned entries after the flush.
func (s *session) shipResends(head []byte) []*journal.Entry {
	d := &s.dedup
	d.mu.Lock()
	list := d.resend
	d.resend = nil
	d.mu.Unlock()
	if len(list) == 0 {
		return nil
	}
	if tx := s.txFor(); tx != nil {
		tx.Index.Reset() // it proved stale
	}
	for _, e := range list {
		f := e.Flags | protocol.FlagResend
		if e.Kind == journal.Resync {
			f |= protocol.FlagResync
		}
		w := protocol.Write{Off: uint64(e.Off), Len: uint64(e.N)}
		s.frame(protocol.TypeWrite, f, e.Seq, w.AppendHead(head), e.Data)
	}
	return list
}

// txState is what the session's writer keeps from one pass to the next
// (sendPass); guarded by session.txMu.
type txState struct {
	ctrl     []ctrlMsg
	batch    []*journal.Entry
	head     [protocol.WriteHeadSize]byte
	sentAck  uint64
	lastSend time.Time
	written  int64
}

// send is the session's sender goroutine: it makes a pass (pump) when
// woken and at every tick, for what no other goroutine sends at once:
// control frames, pings, lease requests, the ack timeout, protocol-A
// writes and resync traffic.
func (s *session) send() error {
	n := s.p.n
	tick := time.NewTicker(max(n.cfg.Timeout/8, 10*time.Millisecond))
	defer tick.Stop()
	s.txMu.Lock()
	s.tx.lastSend = time.Now()
	s.tx.written = s.c.W.BytesWritten()
	s.txMu.Unlock()
	s.pump() // what writers journaled before the session ran
	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-s.wake:
			// Let the other goroutines of this wave (writers, appliers)
			// add to the batch: one flush then carries them all.
			runtime.Gosched()
		case <-tick.C:
		}
		s.pump()
	}
}

// pump makes a writer's pass (sendPass) in the calling goroutine, unless
// another goroutine is making one: that one then makes one more pass
// before it stops, which carries what the caller added (flat combining).
// So a write is shipped, an ack sent, by the goroutine that has it ready,
// without waking the sender goroutine, and frames that become ready while
// a pass writes to the socket go out together in the next. A failed pass
// fails the session. The caller holds no lock.
func (s *session) pump() {
	s.txAgain.Store(true)
	for s.txMu.TryLock() {
		for s.txAgain.Swap(false) {
			if err := s.sendPass(); err != nil {
				s.fail(err)
				break
			}
		}
		s.txMu.Unlock()
		// A pump that found the lock taken after the last pass began
		// left its request in txAgain: take the lock again for it.
		if !s.txAgain.Load() || s.ctx.Err() != nil {
			return
		}
	}
}

// sendPass writes what is due, batched into one flush: control frames,
// the cumulative ack, the journal entries for this peer, lease requests
// and pings. s.txMu held.
func (s *session) sendPass() error {
	if s.ctx.Err() != nil || !s.running.Load() {
		return nil
	}
	p, n := s.p, s.p.n
	c := s.c
	tx := &s.tx
	now := time.Now()
	// The ack is read before the control frames are taken: an answer
	// queued before the applier acknowledged past it (SnapshotAck) goes
	// out before, or with, the ack that covers it.
	var ack uint64
	if s.applier != nil {
		ack = s.applier.acked.Load()
	}
	n.mu.Lock()
	if p.sess != s {
		// Torn down (or not yet attached): the journal's progress for
		// p belongs to no session, or to the next one.
		n.mu.Unlock()
		return nil
	}
	// Taken under n.mu: a State queued with a change of role or
	// generation goes before a lease request that follows it.
	s.ctrlMu.Lock()
	ctrl := s.ctrl
	s.ctrl = tx.ctrl[:0]
	tx.ctrl = ctrl
	s.ctrlSending, s.ctrlBytes = s.ctrlBytes, 0
	s.ctrlMu.Unlock()
	maxBytes := int(min(4<<20, n.journal.Max/4))
	batch, more := n.journal.Ship(&p.progress, p.bit, tx.batch[:0], func(k, bytes int) bool { return k >= 1024 || bytes >= maxBytes })
	tx.batch = batch
	if more {
		// Entries wait behind a full batch: go round again without
		// waiting for a wake (theirs came when they became ready and
		// is spent).
		s.txAgain.Store(true)
	}
	if len(batch) > 0 {
		p.progress.Shipped(batch[len(batch)-1].Seq, now)
	}
	var lease []byte
	if n.role == api.Primary && n.quorumOn() && (s.leaseDue || now.Sub(s.lastLease) >= n.cfg.Timeout/4) {
		lease = binary.LittleEndian.AppendUint64(nil, n.super.GI.Current)
		s.leaseDue, s.lastLease = false, now
	}
	var timeout error
	if p.progress.Overdue(now, n.cfg.Timeout) {
		timeout = fmt.Errorf("peer %s did not acknowledge writes within %v; dropping it (its bitmap covers what it missed)", p.cfg.Name, n.cfg.Timeout)
	}
	peerSeqs := s.peerSeqsLocked()
	if p.repl == api.Ahead && n.journal.Bytes <= n.journal.Max/4 {
		p.setReplLocked(api.SyncSource)
		p.startSyncLocked()
		p.sendStateLocked(0)
	}
	n.unlock()
	if timeout != nil {
		s.release(batch)
		return timeout
	}
	for _, m := range ctrl {
		s.frame(m.t, m.f, m.seq, m.payload, nil)
	}
	if len(ctrl) > 0 {
		clear(ctrl) // their payloads are not kept past the pass
		s.ctrlMu.Lock()
		s.ctrlSending = 0
		s.ctrlMu.Unlock()
	}
	if lease != nil {
		s.frame(protocol.TypeLease, 0, uint64(mono()), lease, nil)
	}
	if peerSeqs != nil {
		s.frame(protocol.TypePeerSeqs, 0, 0, peerSeqs, nil)
	}
	head := tx.head[:0]
	resent := s.shipResends(head)
	if ack > tx.sentAck {
		s.frame(protocol.TypeAck, 0, ack, nil, nil)
		tx.sentAck = ack
		s.ackSent.Store(ack)
	}
	for _, e := range batch {
		switch e.Kind {
		case journal.Barrier:
			s.frame(protocol.TypeBarrier, 0, e.Seq, nil, nil)
		case journal.Verify:
			s.frame(protocol.TypeVerify, 0, e.Seq, e.Data, nil)
		case journal.Snapshot:
			s.frame(protocol.TypeSnapshot, 0, e.Seq, []byte(e.Name), nil)
		default:
			f := e.Flags
			if e.Kind == journal.Resync {
				f |= protocol.FlagResync
			}
			s.shipWrite(e, f, head)
		}
	}
	if c.W.Buffered() == 0 && now.Sub(tx.lastSend) > n.cfg.Timeout/4 {
		s.frame(protocol.TypePing, 0, uint64(now.UnixNano()), nil, nil)
	}
	err := s.frameErr
	if err == nil && c.W.Buffered() > 0 {
		err = c.Flush(n.cfg.Timeout)
		tx.lastSend = now
	}
	s.release(batch)
	clear(batch)
	s.release(resent)
	if w := c.W.BytesWritten(); w != tx.written {
		p.stats.sent.Add(w - tx.written)
		tx.written = w
	}
	if err != nil {
		return fmt.Errorf("send to %s: %w", p.cfg.Name, err)
	}
	return nil
}

func (s *session) release(batch []*journal.Entry) {
	if len(batch) == 0 {
		return
	}
	n := s.p.n
	n.mu.Lock()
	for _, e := range batch {
		e.Refs--
		n.maybeDoneLocked(e)
	}
	n.journal.Trim()
	n.unlock()
}
