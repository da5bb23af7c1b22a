package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/internal/loglimit"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/bufpool"
	"github.com/repd/repd/replica/internal/decide"
	"github.com/repd/repd/replica/internal/journal"
)

// Deduplication, the receiver's side (protocol/dedup.go has the wire
// format, internal/dedup the sender's index and encoder).
//
// The receiver resolves references when a write arrives, after every
// earlier write overlapping a source is applied: it reads the source from
// its store and checks the BLAKE3 hash. A miss (a stale index, a
// fingerprint collision, a source the receiver changed while it was
// Primary) is never written: the receiver asks for the data with DataReq
// and holds back every later write, barrier and resync frame until the
// data arrives, so the sequence order and the cumulative ack stay intact.
// The sender answers from its journal (the entry is still there: the peer
// has not acked it) and, since its index proved stale, clears it.
//
// Costs: the shipper fingerprints each 4 KiB block with xxhash64 (~0.4µs)
// and computes a BLAKE3 only for a reference; the receiver reads and
// hashes each referenced block in its receive loop.

// dataReqs is what the receive loop remembers of the peer's DataReqs in
// one session (onDataReq).
type dataReqs struct {
	last uint64           // the seq of the last one accepted; 0: none yet
	log  loglimit.Limiter // its log line
}

// onDataReq answers the peer's request for the data of write seq: the entry
// is queued for the shipper, which resends it.
//
// Each request pins the entry and costs a resend of up to MaxData, so only
// what an honest receiver asks is accepted, and anything else ends the
// session. Its receiver asks only on a link with dedup, only for a write
// it got as a DedupWrite, and holds everything behind that write until the
// data comes (seqFrame): so it asks for one write at a time (none is
// queued here when the next request comes, since the sender takes the
// queue before it writes the resend the receiver waits for), and for each
// write at most once, in sequence order. A request to repeat is therefore
// refused in O(1) with no set of what was asked. That a write went as a
// DedupWrite is known only to the shipper; here the entry must be one it
// ships that way when it can (a write or resync block with data), which
// costs a peer that asks for others at most one resend of each write.
func (s *session) onDataReq(seq uint64, reqs *dataReqs) error {
	p, n := s.p, s.p.n
	refuse := func(format string, args ...any) error {
		return p.readErr("DataReq", fmt.Errorf("%w: DataReq for write %d: "+format, append([]any{protocol.ErrUnexpected, seq}, args...)...))
	}
	// The shipper's condition for dedup (txFor), without its state,
	// which is the sender's.
	if n.cfg.DedupIndexBytes <= 0 || p.features.Load()&protocol.FeatureDedup == 0 {
		return refuse("dedup is off on this link")
	}
	if reqs.last != 0 && seq <= reqs.last {
		return refuse("it follows the one for write %d; a receiver asks for each write once, in sequence order", reqs.last)
	}
	s.dedup.mu.Lock()
	queued := len(s.dedup.resend)
	s.dedup.mu.Unlock()
	if queued != 0 {
		return refuse("write %d is not resent yet; a receiver asks for one write at a time", reqs.last)
	}
	n.mu.Lock()
	found := n.journal.Find(seq, p.progress.AckFrom, p.progress.Next)
	if found == nil || found.Kind == journal.Barrier || found.Pend&p.bit == 0 || found.Data == nil {
		n.mu.Unlock()
		return fmt.Errorf("peer %s asked for the data of write %d, which is no longer in the journal", p.cfg.Name, seq)
	}
	if found.Kind != journal.Write && found.Kind != journal.Resync || len(found.Data) == 0 || found.Flags&(protocol.FlagTrim|protocol.FlagZeroes) != 0 {
		n.mu.Unlock()
		return refuse("it was not sent as a dedup write")
	}
	found.Refs++
	n.mu.Unlock()
	reqs.last = seq
	p.stats.dedupMisses.Add(1)
	// Once per write (above), and at most a line a second: a peer that
	// asks for every write it gets costs the log no more (the status
	// counts them all).
	n.logLimited(&reqs.log, slog.LevelInfo, "peer could not resolve a dedup reference: resending the data", "peer", p.cfg.Name, "seq", seq)
	// Only this goroutine appends: the queue is still empty.
	s.dedup.mu.Lock()
	s.dedup.resend = append(s.dedup.resend, found)
	s.dedup.mu.Unlock()
	s.wakeUp()
	return nil
}

// seqFrame handles a frame of the write sequence (Write, Barrier,
// ResyncDone) on the receiver, holding it back while a write's data is
// requested.
func (s *session) seqFrame(f protocol.Frame) error {
	rx := &s.dedup.rx
	resend := f.Type == protocol.TypeWrite && f.Flags&protocol.FlagResend != 0
	if rx.hole != 0 && !(resend && f.Seq == rx.hole) {
		if resend {
			return s.p.readErr("write", fmt.Errorf("%w: resent write %d while waiting for %d", protocol.ErrUnexpected, f.Seq, rx.hole))
		}
		// The bound counts the copy's capacity, what it holds: the
		// allocator rounds a payload of 32 KiB and 1 byte up to 40 KiB,
		// so counting lengths let 96 MiB of payloads hold 120 MiB.
		f.Payload = bytes.Clone(f.Payload)
		if rx.heldBytes += int64(cap(f.Payload)); rx.heldBytes > maxHeldBytes || len(rx.held) >= maxHeldFrames {
			return s.p.readErr("write", fmt.Errorf("%w: more than %d frames or %d MiB behind the unresolved write %d", protocol.ErrUnexpected, maxHeldFrames, maxHeldBytes>>20, rx.hole))
		}
		rx.held = append(rx.held, f)
		return nil
	}
	if resend && rx.hole == 0 {
		return s.p.readErr("write", fmt.Errorf("%w: resent write %d nobody asked for", protocol.ErrUnexpected, f.Seq))
	}
	if err := s.applySeq(f); err != nil {
		return err
	}
	if !resend {
		return nil
	}
	rx.hole = 0
	held := rx.held
	rx.held, rx.heldBytes = nil, 0
	for i, h := range held {
		if rx.hole != 0 {
			rx.held = append(rx.held, held[i:]...)
			for _, x := range held[i:] {
				rx.heldBytes += int64(cap(x.Payload))
			}
			break
		}
		if err := s.applySeq(h); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) applySeq(f protocol.Frame) error {
	p, n := s.p, s.p.n
	switch f.Type {
	case protocol.TypeBarrier:
		s.applier.barrier(f.Seq)
		return nil
	case protocol.TypeResyncDone:
		var rd protocol.ResyncDone
		if err := rd.Decode(f.Payload); err != nil {
			return p.readErr("resync done", err)
		}
		s.applier.drain()
		return p.onResyncDone(rd.Current)
	case protocol.TypeVerify:
		return s.applier.verify(f.Seq, f.Payload) // verify.go
	case protocol.TypeSnapshot:
		name, err := protocol.DecodeSnapshotName(f.Payload)
		if err != nil {
			return p.readErr("snapshot", err)
		}
		return s.applier.snapshot(f.Seq, name) // snapshot.go
	}
	flags := f.Flags &^ (protocol.FlagDedup | protocol.FlagResend)
	if f.Flags&protocol.FlagDedup == 0 {
		var w protocol.Write
		if err := w.Decode(f.Payload, f.Flags); err != nil {
			return p.readErr("write", err)
		}
		if w.Off+w.Len > uint64(n.cfg.Size) {
			return p.readErr("write", fmt.Errorf("%w: write %d+%d beyond size %d", protocol.ErrCorrupt, w.Off, w.Len, n.cfg.Size))
		}
		return s.applier.write(f.Seq, flags, int64(w.Off), int64(w.Len), w.Data)
	}
	dw := &s.dedup.rx.dw
	if err := dw.Decode(f.Payload); err != nil {
		return p.readErr("write", err)
	}
	if f.Flags&(protocol.FlagTrim|protocol.FlagZeroes) != 0 || dw.Off+dw.Len > uint64(n.cfg.Size) {
		return p.readErr("write", fmt.Errorf("%w: dedup write %d+%d (flags %#x) on a device of %d bytes", protocol.ErrCorrupt, dw.Off, dw.Len, f.Flags, n.cfg.Size))
	}
	data, buf, ok := s.resolve(dw)
	if !ok {
		bufpool.Put(buf)
		s.dedup.rx.hole = f.Seq
		s.queue(ctrlMsg{t: protocol.TypeDataReq, seq: f.Seq})
		return nil
	}
	err := s.applier.write(f.Seq, flags, int64(dw.Off), int64(dw.Len), data)
	bufpool.Put(buf)
	return err
}

// resolve rebuilds the data of a DedupWrite; false if a reference did not
// resolve.
func (s *session) resolve(dw *protocol.DedupWrite) ([]byte, *[]byte, bool) {
	n := s.p.n
	data, buf := bufpool.Get(int(dw.Len))
	lit := dw.Data
	refs := dw.Refs
	for i, k := range dw.Kinds {
		lo := i * protocol.DedupBlock
		blk := data[lo:min(lo+protocol.DedupBlock, len(data))]
		switch k {
		case protocol.BlockData:
			copy(blk, lit)
			lit = lit[len(blk):]
		case protocol.BlockZero:
			clear(blk)
		case protocol.BlockRef:
			r := refs[0]
			refs = refs[1:]
			src := int64(r.Src)
			if j := src - int64(dw.Off); j >= 0 && j < int64(lo) && j%protocol.DedupBlock == 0 {
				// An earlier block of this very write.
				copy(blk, data[j:j+protocol.DedupBlock])
			} else {
				if src < 0 || src+protocol.DedupBlock > n.cfg.Size {
					return data, buf, false
				}
				s.applier.waitRange(src, protocol.DedupBlock)
				if err := n.st.ReadAt(s.ctx, blk, src); err != nil {
					n.log.Warn("reading a dedup reference failed", "peer", s.p.cfg.Name, "src", src, "err", err)
					return data, buf, false
				}
			}
			if blake3.Sum256(blk) != r.Hash {
				return data, buf, false
			}
		}
	}
	return data, buf, true
}

// receive reads frames until the connection fails.
func (s *session) receive() error {
	p, n := s.p, s.p.n
	c := s.c
	read := c.R.BytesRead()
	var reqs dataReqs
	for {
		if !c.R.FrameBuffered() || s.appliedSinceAck >= ackEvery {
			// The next frame is not here yet (or many were applied):
			// acknowledge what was applied before waiting for it.
			s.ackNow()
		}
		f, err := c.ReadFrame(n.cfg.Timeout)
		if r := c.R.BytesRead(); r != read {
			p.stats.received.Add(r - read)
			read = r
		}
		if err != nil {
			if s.ctx.Err() != nil {
				return s.ctx.Err()
			}
			if errors.Is(err, protocol.ErrCorrupt) {
				n.log.Error("bad frame from peer: closing the connection; resync repairs", "peer", p.cfg.Name, "err", err)
			}
			return p.readErr("receive", err)
		}
		if p.peerRole == api.Primary {
			n.heardFromPrimary() // the promise to a Primary runs from its last message
		}
		if p.voteOnly && isWitnessData(f.Type) {
			return fmt.Errorf("%w: %s frame from %s on a vote-only link (a witness stores no data)", protocol.ErrUnexpected, f.Type, p.cfg.Name)
		}
		switch f.Type {
		case protocol.TypeWrite, protocol.TypeBarrier, protocol.TypeResyncDone, protocol.TypeVerify, protocol.TypeSnapshot:
			// In sequence order, held back while a write's data is
			// requested (dedup.go).
			if err := s.seqFrame(f); err != nil {
				return err
			}
			s.appliedSinceAck++
		case protocol.TypeDataReq:
			if err := s.onDataReq(f.Seq, &reqs); err != nil {
				return err
			}
		case protocol.TypeCsums:
			if err := s.onCsums(f.Payload); err != nil {
				return err
			}
		case protocol.TypeCsumsDone:
			s.onCsumsDone()
		case protocol.TypeVerifyReply:
			if err := s.onVerifyReply(f.Payload); err != nil {
				return err
			}
		case protocol.TypeAck:
			n.onAck(p, f.Seq, false)
		case protocol.TypeBarrierAck:
			n.onAck(p, f.Seq, true)
		case protocol.TypePromoteReq:
			p.onPromoteReq(s, f.Seq, len(f.Payload) == 1 && f.Payload[0] == 1)
		case protocol.TypePromoteReply:
			p.onPromoteReply(f.Seq, protocol.ReasonText(f.Payload))
		case protocol.TypePromoteEnd:
			p.onPromoteEnd(f.Seq)
		case protocol.TypePeerSeqs:
			ps, err := protocol.DecodePeerSeqs(f.Payload, nil)
			if err != nil {
				return p.readErr("PeerSeqs", err)
			}
			if err := n.onPeerSeqs(p, ps); err != nil {
				return err
			}
		case protocol.TypeLease:
			if len(f.Payload) != 8 {
				return p.readErr("lease", fmt.Errorf("%w: Lease payload of %d bytes", protocol.ErrCorrupt, len(f.Payload)))
			}
			s.onLease(f.Seq, binary.LittleEndian.Uint64(f.Payload))
		case protocol.TypeLeaseAck:
			s.onLeaseAck(f.Seq, f.Flags&protocol.FlagLeaseRefused != 0, f.Payload)
		case protocol.TypeSnapshotAck:
			n.onSnapshotAck(p, f.Seq, f.Flags&protocol.FlagSnapshotFailed != 0, protocol.SnapshotReason(f.Payload))
		case protocol.TypeSnapshotReq:
			if err := s.onSnapshotReq(f.Seq, f.Payload); err != nil {
				return err
			}
		case protocol.TypeSnapshotReply:
			n.onSnapshotReply(p, f.Seq, f.Flags&protocol.FlagSnapshotFailed != 0, protocol.SnapshotReason(f.Payload))
		case protocol.TypePing:
			s.queue(ctrlMsg{t: protocol.TypePong, seq: f.Seq})
		case protocol.TypePong:
		case protocol.TypeState:
			var st protocol.State
			if err := st.Decode(f.Payload); err != nil {
				return p.readErr("state", err)
			}
			if st.Flags&protocol.StateOutdated != 0 && api.Role(st.Role) == api.Primary {
				s.leavingSeq = f.Seq // drain.go
			}
			if err := p.onState(&st); err != nil {
				return err
			}
		case protocol.TypeRefuse:
			return &protocol.RefusedError{Reason: protocol.ReasonText(f.Payload)}
		default:
			return fmt.Errorf("%w: %s frame from %s after the handshake", protocol.ErrUnexpected, f.Type, p.cfg.Name)
		}
	}
}

// ackEvery bounds the writes the receiver applies in a row before it
// sends their ack, when frames keep arriving faster than they are applied.
const ackEvery = 32

// ackNow sends the cumulative ack if it advanced since the last one sent
// (by the receiver, in its own goroutine).
func (s *session) ackNow() {
	s.appliedSinceAck = 0
	if a := s.applier; a != nil && a.acked.Load() > s.ackSent.Load() {
		s.pump()
	}
}

// onAck handles a cumulative ack (or barrier ack) of seq from p.
func (n *Node) onAck(p *peer, seq uint64, barrier bool) {
	n.mu.Lock()
	pr := &p.progress
	clear := func(off, length int64) { p.bitmap.Clear(off, length) }
	n.journal.Ack(pr, p.bit, seq, time.Now(), func(e *journal.Entry) {
		switch e.Kind {
		case journal.Resync:
			p.stats.resynced.Add(e.N)
		case journal.Barrier:
			// The peer acks past a barrier only once it made
			// everything before it durable.
			pr.ClearResynced(e.Seq, clear)
		}
		n.maybeDoneLocked(e)
	})
	if p.repl == api.Established && p.bitmap.Count() == 0 {
		pr.Have = pr.AckSeq
	}
	if barrier {
		pr.ClearResynced(seq, clear)
	}
	n.journal.Trim()
	n.unlock() // completes the asynchronous writes acked (async.go)
}

// onState handles a State frame from a connected peer.
func (p *peer) onState(st *protocol.State) error {
	n := p.n
	n.mu.Lock()
	defer n.unlock()
	role, disk := api.Role(st.Role), bitmap.DiskState(st.Disk)
	if role == api.Primary && n.role == api.Primary {
		if n.quorumOn() && !n.leaseHeld() {
			// This node lost its lease and p is Primary now.
			n.stepDownLocked(fmt.Sprintf("%s announced it is Primary", p.cfg.Name))
			return fmt.Errorf("stepped down: %s is Primary", p.cfg.Name)
		}
		err := fmt.Errorf("%w: both %s and %s are Primary; demote one of them", ErrRefused, n.cfg.Self.Name, p.cfg.Name)
		n.log.Error("two primaries", "peer", p.cfg.Name)
		return err
	}
	p.noteStateLocked(st)
	if p.voteOnly {
		return nil
	}
	if (disk == diskFailed || disk == diskless) && role != api.Primary {
		p.peerDiskFailedLocked()
		return nil
	}
	if st.Flags&protocol.StateNewUUID != 0 {
		err := n.persist(func(sb *bitmap.Superblock) {
			if sb.GI.Current != 0 && sb.GI.Current != st.Current {
				sb.GI.History = [2]uint64{sb.GI.Current, sb.GI.History[0]}
			}
			sb.GI.Current = st.Current
			sb.Disk = diskUpToDate
			sb.Flags &^= bitmap.FlagResyncTarget
			for _, q := range n.peers {
				if q.conn == api.Connected {
					sb.GI.Bitmap[q.slot] = 0
				}
			}
		})
		for _, q := range n.peers {
			if q.conn == api.Connected {
				to := q.repl
				if to == api.PausedSync {
					to = api.Established
				}
				q.settleLocked(to)
			}
		}
		if err == nil {
			// A State this node sent before it adopted the UUID may still
			// be on its way and would leave the peers believing it
			// Inconsistent: say UpToDate after it.
			n.broadcastStateLocked(nil)
		}
		return err
	}
	if p.syncStateLocked(api.Repl(st.Repl)) {
		return nil
	}
	switch api.Repl(st.Repl) {
	case api.Ahead:
		if p.repl != api.Behind {
			p.setReplLocked(api.Behind)
			if n.super.Disk == diskUpToDate {
				return n.persist(func(sb *bitmap.Superblock) { sb.Disk = diskOutdated })
			}
		}
		return nil
	case api.SyncSource:
		if p.repl != api.SyncTarget {
			p.setReplLocked(api.SyncTarget)
			p.targetStartLocked(p.sess, int64(st.OutOfSync))
			return n.persist(func(sb *bitmap.Superblock) {
				sb.Disk = diskInconsistent
				sb.Flags |= bitmap.FlagResyncTarget
			})
		}
		return nil
	}
	// Two secondaries that were apart now share a generation (one of them
	// finished a resync from the Primary): they are in sync.
	// Not after a crash as Primary: the activity log's marks must resync.
	if p.repl == api.PausedSync && role == api.Secondary && n.role == api.Secondary && st.Current == n.super.GI.Current &&
		disk == diskUpToDate && n.super.Disk == diskUpToDate && !n.crashedPrimary && st.Flags&protocol.StateCrashedPrim == 0 {
		p.settleLocked(api.Established)
		p.sendStateLocked(0)
		if n.super.GI.Bitmap[p.slot] != 0 {
			return n.persist(func(sb *bitmap.Superblock) { sb.GI.Bitmap[p.slot] = 0 })
		}
		return nil
	}
	// In sync with a Primary that started a new generation: follow it.
	if role == api.Primary && p.repl == api.Established && n.super.Disk == diskUpToDate && st.Current != 0 && st.Current != n.super.GI.Current {
		away := make([]bool, len(n.super.GI.Bitmap))
		for _, q := range n.peers {
			away[q.slot] = q != p && !(q.conn == api.Connected && q.repl == api.Established)
		}
		err := n.persist(func(sb *bitmap.Superblock) {
			sb.GI.Current, sb.GI.History = decide.Rotate(sb.GI.Current, sb.GI.Bitmap, sb.GI.History, away, st.Current)
		})
		n.broadcastStateLocked(p)
		return err
	}
	return nil
}

// onResyncDone ends a resync on the target: every block the source had
// marked is here and durable; take the source's generation.
func (p *peer) onResyncDone(current uint64) error {
	n := p.n
	if n.detached.Load() {
		return nil
	}
	if err := n.st.Flush(context.Background()); err != nil {
		return err
	}
	// The resync's writes are durable: out of the cache with them, so that
	// the writes after it go into 4 KiB pages (FileStore.DropCache).
	dropCache(n.st)
	n.mu.Lock()
	defer n.unlock()
	err := n.persist(func(sb *bitmap.Superblock) {
		if sb.GI.Current != 0 && sb.GI.Current != current {
			sb.GI.History = [2]uint64{sb.GI.Current, sb.GI.History[0]}
		}
		sb.GI.Current = current
		sb.GI.Bitmap[p.slot] = 0
		sb.Disk = diskUpToDate
		sb.Flags &^= bitmap.FlagResyncTarget
	})
	if err != nil {
		return err
	}
	p.bitmap.ClearAll()
	if err := n.flushBitmapsLocked("resync done"); err != nil {
		return err
	}
	if n.quorum.replaced.Swap(false) {
		n.log.Info("resynced from the new Primary: the writes of the replaced Primary are gone", "source", p.cfg.Name)
	}
	// What the activity log marked is repaired now.
	n.crashedPrimary = false
	p.verdict = decide.Verdict{Rel: decide.RelInSync} // the connect-time verdict is history now
	p.setReplLocked(api.Established)
	n.log.Info("resync finished: UpToDate", "source", p.cfg.Name, "current", api.FormatUUID(current))
	n.broadcastStateLocked(nil)
	return nil
}
