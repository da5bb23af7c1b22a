package replica

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"github.com/zeebo/blake3"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// Deduplication (see protocol/dedup.go for the wire side).
//
// The sender of a session keeps a dedupIndex: content fingerprint → offset
// on the receiver's disk known to hold that content. Only the shipper
// feeds and invalidates it, in sequence order, from exactly the entries it
// ships: every shipped write or resync block first looks its 4 KiB blocks
// up (a hit becomes a reference to a source the receiver holds *before*
// this write), then invalidates the index over the write's range, then
// indexes the write's own aligned blocks. Entries not shipped to the peer
// do not change its disk, so they do not touch its index. The index starts
// empty with each session (the receiver may have changed while we were
// apart).
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

// dedupEntryBytes is what one index entry costs, roughly (two map entries
// and a ring slot): the index of DedupIndexBytes holds DedupIndexBytes /
// dedupEntryBytes blocks.
const dedupEntryBytes = 128

// linkStats are a peer's transport counters.
type linkStats struct {
	features     atomic.Uint64 // the peer's Hello features (last handshake)
	logical      atomic.Int64  // data bytes of the writes and resync blocks shipped
	dedupBlocks  atomic.Int64  // blocks sent as references
	zeroBlocks   atomic.Int64  // blocks sent as zero markers
	dedupMisses  atomic.Int64  // references the peer could not resolve (DataReq)
	authFailures atomic.Int64  // handshakes refused for a failed authentication
}

func (l *linkStats) fill(ps *api.PeerStatus) {
	ps.LogicalBytes = l.logical.Load()
	ps.DedupBlocks = l.dedupBlocks.Load()
	ps.DedupBytesSaved = ps.DedupBlocks * protocol.DedupBlock
	ps.ZeroBlocks = l.zeroBlocks.Load()
	ps.DedupMisses = l.dedupMisses.Load()
	ps.AuthFailures = l.authFailures.Load()
	if ps.BytesSent > 0 {
		ps.CompressionRatio = float64(ps.LogicalBytes) / float64(ps.BytesSent)
	}
}

// dedupIndex maps a block's fingerprint (xxhash64: cheap, and a collision
// only costs a miss, since the receiver checks the BLAKE3 the reference
// carries) to an offset on the receiver, for aligned 4 KiB blocks, bounded
// to max entries (oldest evicted first). Owned by one shipper goroutine.
type dedupIndex struct {
	max  int
	fwd  map[uint64]int64 // hash → offset
	rev  map[int64]uint64 // offset → hash, for the entries of fwd
	ring []int64          // offsets in insertion order, for eviction
	pos  int
}

func newDedupIndex(max int) *dedupIndex {
	return &dedupIndex{max: max, fwd: map[uint64]int64{}, rev: map[int64]uint64{}}
}

func (x *dedupIndex) reset() {
	clear(x.fwd)
	clear(x.rev)
	x.ring, x.pos = x.ring[:0], 0
}

func (x *dedupIndex) lookup(h uint64) (int64, bool) {
	off, ok := x.fwd[h]
	return off, ok
}

func (x *dedupIndex) drop(off int64) {
	if h, ok := x.rev[off]; ok {
		delete(x.rev, off)
		if x.fwd[h] == off {
			delete(x.fwd, h)
		}
	}
}

// invalidate forgets every indexed block overlapping [off, off+n).
func (x *dedupIndex) invalidate(off, n int64) {
	if len(x.rev) == 0 {
		return
	}
	first := off &^ (protocol.DedupBlock - 1)
	if (off+n-first)/protocol.DedupBlock > int64(len(x.rev)) {
		for o := range x.rev {
			if o < off+n && off < o+protocol.DedupBlock {
				x.drop(o)
			}
		}
		return
	}
	for o := first; o < off+n; o += protocol.DedupBlock {
		x.drop(o)
	}
}

// insert records that the receiver holds content h at off (aligned), unless
// another place with it is known already. The caller invalidated off.
func (x *dedupIndex) insert(off int64, h uint64) {
	if _, ok := x.fwd[h]; ok {
		return
	}
	if len(x.ring) < x.max {
		x.ring = append(x.ring, off)
	} else {
		x.drop(x.ring[x.pos]) // may be stale: then an early eviction, harmless
		x.ring[x.pos] = off
		x.pos = (x.pos + 1) % x.max
	}
	x.fwd[h] = off
	x.rev[off] = h
}

// dedupTx is the sender's side: the index and the encoder's scratch. Owned
// by the session's shipper.
type dedupTx struct {
	idx  *dedupIndex
	dw   protocol.DedupWrite
	head []byte
	same map[uint64]int // within one write: hash → first block index
	ins  []dedupIns
}

type dedupIns struct {
	off int64
	h   uint64
}

// dedupState is a session's dedup state.
type dedupState struct {
	tx     *dedupTx // shipper only
	txInit bool

	rx dedupRx // receiver only

	mu     sync.Mutex
	resend []*entry // writes whose data the peer asked for; refs held
}

// dedupRx is the receiver's side: the hole (the seq of a write whose data
// was requested) and the sequence frames held back behind it.
type dedupRx struct {
	hole uint64
	held []protocol.Frame
	dw   protocol.DedupWrite
}

// txFor returns the shipper's dedup state, nil if dedup is off for this
// session (not configured, or the peer does not resolve references).
func (s *session) txFor() *dedupTx {
	d := &s.dd
	if !d.txInit {
		d.txInit = true
		n := s.p.n
		if n.cfg.DedupIndexBytes > 0 && s.p.ls.features.Load()&protocol.FeatureDedup != 0 {
			d.tx = &dedupTx{idx: newDedupIndex(max(int(n.cfg.DedupIndexBytes/dedupEntryBytes), 16)), same: map[uint64]int{}}
		}
	}
	return d.tx
}

// shipWrite writes the frame of write or resync entry e (flags f) into the
// connection's buffer: as a DedupWrite if any of its blocks is zero or
// known to the receiver, else as a plain Write. head is scratch.
func (s *session) shipWrite(e *entry, f protocol.Flags, head []byte) {
	p, c := s.p, s.c
	tx := s.txFor()
	w := protocol.Write{Off: uint64(e.off), Len: uint64(e.n)}
	if f&(protocol.FlagTrim|protocol.FlagZeroes) != 0 || len(e.data) == 0 {
		if tx != nil {
			tx.idx.invalidate(e.off, e.n)
		}
		c.W.WriteFrame(protocol.TypeWrite, f, e.seq, w.AppendHead(head), nil)
		return
	}
	p.ls.logical.Add(e.n)
	if tx == nil || !tx.encode(e, &p.ls) {
		c.W.WriteFrame(protocol.TypeWrite, f, e.seq, w.AppendHead(head), e.data)
		return
	}
	tx.head = tx.dw.AppendHead(tx.head[:0])
	c.W.WriteFrame(protocol.TypeWrite, f|protocol.FlagDedup, e.seq, tx.head, tx.dw.Data)
}

// encode fills tx.dw for e and updates the index; false if no block was
// saved (send e plain).
func (tx *dedupTx) encode(e *entry, ls *linkStats) bool {
	dw := &tx.dw
	dw.Off, dw.Len = uint64(e.off), uint64(e.n)
	dw.Kinds, dw.Refs, dw.Data = dw.Kinds[:0], dw.Refs[:0], dw.Data[:0]
	tx.ins = tx.ins[:0]
	nb := protocol.DedupBlocks(uint64(e.n))
	if nb > 1 {
		clear(tx.same)
	}
	var refs, zeros int64
	for i := range nb {
		blk := e.data[i*protocol.DedupBlock : min((i+1)*protocol.DedupBlock, len(e.data))]
		o := e.off + int64(i)*protocol.DedupBlock
		if len(blk) == protocol.DedupBlock {
			if allZero(blk) {
				dw.Kinds = append(dw.Kinds, protocol.BlockZero)
				zeros++
				continue
			}
			// The index is keyed by a cheap fingerprint; the BLAKE3 the
			// receiver verifies is computed only for a reference.
			var h uint64
			if e.fp != nil {
				h = e.fp[i]
			} else {
				h = xxhash.Sum64(blk)
			}
			src, ok := tx.idx.lookup(h)
			if j := src - e.off; ok && j >= 0 && j < int64(i)*protocol.DedupBlock && j%protocol.DedupBlock == 0 {
				// The receiver would read that as a block of this
				// write, not as what is there before it.
				ok = false
			}
			if !ok && nb > 1 {
				// An earlier block of this write: the receiver has it
				// once the write is applied, so the reference points
				// into the write itself (resolved from its own data).
				if j, dup := tx.same[h]; dup {
					src, ok = e.off+int64(j)*protocol.DedupBlock, true
				} else {
					tx.same[h] = i
				}
			}
			if ok {
				dw.Kinds = append(dw.Kinds, protocol.BlockRef)
				dw.Refs = append(dw.Refs, protocol.Ref{Src: uint64(src), Hash: blake3.Sum256(blk)})
				refs++
				continue
			}
			if o%protocol.DedupBlock == 0 {
				tx.ins = append(tx.ins, dedupIns{o, h})
			}
		}
		dw.Kinds = append(dw.Kinds, protocol.BlockData)
	}
	tx.idx.invalidate(e.off, e.n)
	for _, in := range tx.ins {
		tx.idx.insert(in.off, in.h)
	}
	if refs+zeros == 0 {
		return false
	}
	for i, k := range dw.Kinds {
		if k == protocol.BlockData {
			dw.Data = append(dw.Data, e.data[i*protocol.DedupBlock:min((i+1)*protocol.DedupBlock, len(e.data))]...)
		}
	}
	ls.dedupBlocks.Add(refs)
	ls.zeroBlocks.Add(zeros)
	return true
}

// fingerprints are the dedup fingerprints of data's full 4 KiB blocks (0
// for a short last block).
func fingerprints(data []byte) []uint64 {
	fp := make([]uint64, protocol.DedupBlocks(uint64(len(data))))
	for i := range fp {
		if lo := i * protocol.DedupBlock; lo+protocol.DedupBlock <= len(data) {
			fp[i] = xxhash.Sum64(data[lo : lo+protocol.DedupBlock])
		}
	}
	return fp
}

// shipResends writes the full data of the writes the peer asked for; the
// caller releases the returned entries after the flush.
func (s *session) shipResends(head []byte) []*entry {
	d := &s.dd
	d.mu.Lock()
	list := d.resend
	d.resend = nil
	d.mu.Unlock()
	if len(list) == 0 {
		return nil
	}
	if tx := s.txFor(); tx != nil {
		tx.idx.reset() // it proved stale
	}
	for _, e := range list {
		f := e.flags | protocol.FlagResend
		if e.kind == kResync {
			f |= protocol.FlagResync
		}
		w := protocol.Write{Off: uint64(e.off), Len: uint64(e.n)}
		s.c.W.WriteFrame(protocol.TypeWrite, f, e.seq, w.AppendHead(head), e.data)
	}
	return list
}

// onDataReq answers the peer's request for the data of write seq: the entry
// is queued for the shipper, which resends it.
func (s *session) onDataReq(seq uint64) error {
	p, n := s.p, s.p.n
	p.ls.dedupMisses.Add(1)
	n.mu.Lock()
	var found *entry
	for pos := max(p.ackFrom, n.j.base); pos < min(p.cursor, n.j.end()); pos++ {
		if e := n.j.at(pos); e.seq >= seq {
			if e.seq == seq {
				found = e
			}
			break
		}
	}
	if found == nil || found.kind == kBarrier || found.pend&p.bit == 0 || found.data == nil {
		n.mu.Unlock()
		return fmt.Errorf("peer %s asked for the data of write %d, which is no longer in the journal", p.cfg.Name, seq)
	}
	found.refs++
	n.mu.Unlock()
	n.log.Info("peer could not resolve a dedup reference: resending the data", "peer", p.cfg.Name, "seq", seq)
	s.dd.mu.Lock()
	s.dd.resend = append(s.dd.resend, found)
	s.dd.mu.Unlock()
	s.wakeUp()
	return nil
}

// seqFrame handles a frame of the write sequence (Write, Barrier,
// ResyncDone) on the receiver, holding it back while a write's data is
// requested.
func (s *session) seqFrame(f protocol.Frame) error {
	rx := &s.dd.rx
	resend := f.Type == protocol.TypeWrite && f.Flags&protocol.FlagResend != 0
	if rx.hole != 0 && !(resend && f.Seq == rx.hole) {
		if resend {
			return s.p.readErr("write", fmt.Errorf("%w: resent write %d while waiting for %d", protocol.ErrUnexpected, f.Seq, rx.hole))
		}
		f.Payload = bytes.Clone(f.Payload)
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
	rx.held = nil
	for i, h := range held {
		if rx.hole != 0 {
			rx.held = append(rx.held, held[i:]...)
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
		s.ap.barrier(f.Seq)
		return nil
	case protocol.TypeResyncDone:
		var rd protocol.ResyncDone
		if err := rd.Decode(f.Payload); err != nil {
			return p.readErr("resync done", err)
		}
		s.ap.drain()
		return p.onResyncDone(rd.Current)
	case protocol.TypeVerify:
		return s.ap.verify(f.Seq, f.Payload) // verify.go
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
		return s.ap.write(f.Seq, flags, int64(w.Off), int64(w.Len), w.Data)
	}
	dw := &s.dd.rx.dw
	if err := dw.Decode(f.Payload); err != nil {
		return p.readErr("write", err)
	}
	if f.Flags&(protocol.FlagTrim|protocol.FlagZeroes) != 0 || dw.Off+dw.Len > uint64(n.cfg.Size) {
		return p.readErr("write", fmt.Errorf("%w: dedup write %d+%d (flags %#x) on a device of %d bytes", protocol.ErrCorrupt, dw.Off, dw.Len, f.Flags, n.cfg.Size))
	}
	data, buf, ok := s.resolve(dw)
	if !ok {
		putBuf(buf)
		s.dd.rx.hole = f.Seq
		s.queue(ctrlMsg{t: protocol.TypeDataReq, seq: f.Seq})
		return nil
	}
	err := s.ap.write(f.Seq, flags, int64(dw.Off), int64(dw.Len), data)
	putBuf(buf)
	return err
}

// resolve rebuilds the data of a DedupWrite; false if a reference did not
// resolve.
func (s *session) resolve(dw *protocol.DedupWrite) ([]byte, *[]byte, bool) {
	n := s.p.n
	data, buf := getBuf(int(dw.Len))
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
				s.ap.waitRange(src, protocol.DedupBlock)
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

// waitRange waits until every received write overlapping [off, off+n) is
// applied. Called by the receiver, the only submitter, so none is added
// meanwhile.
func (a *applier) waitRange(off, n int64) {
	var wait []*aitem
	a.mu.Lock()
	for _, x := range a.active {
		if !x.barrier && x.off < off+n && off < x.off+x.n {
			wait = append(wait, x)
		}
	}
	a.mu.Unlock()
	for _, x := range wait {
		<-x.done
	}
}
