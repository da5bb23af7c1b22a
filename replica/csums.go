package replica

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// Checksum-based resync (Config.CSums, used when both sides set it):
//
//  1. The sync target walks its bitmap for the source and sends the BLAKE3
//     hash of every marked block (Csums frames, up to MaxSums blocks each),
//     then CsumsDone.
//  2. The source hashes the same blocks, read once every earlier in-flight
//     write into them is local (and holding later ones back meanwhile), and
//     clears the bits of the blocks that are equal. A block written after
//     that read is shipped to the target anyway: it receives the source's
//     writes during the resync.
//  3. After CsumsDone the source's ordinary resync pass sends the blocks
//     still marked (all-zero ones as zeroes ranges, without data).

// sessSync is a session's share of resync, checksum and verify state.
type sessSync struct {
	csums     bool          // both sides do checksum-based resync
	csumsDone chan struct{} // the target sent CsumsDone
	bucket    tokenBucket   // paces resync and verify (resync goroutine only)
}

// peerSync is a peer's resync and verify bookkeeping. Fields are guarded by
// Node.mu unless atomic.
type peerSync struct {
	userPaused bool // pause-sync by the operator
	syncStart  time.Time
	meter      rateMeter
	csumsEqual atomic.Int64 // bytes found equal by checksum resync (not sent)
	recvResync atomic.Int64 // target: resync bytes received in this resync

	verifyTotal    int64 // bytes to verify
	verifyDone     int64 // bytes compared
	verifyPending  int   // Verify requests without a reply (source)
	verifyMismatch int64 // bytes found different by the last verify
	verifyStart    time.Time
	verifyMeter    rateMeter
}

// hashBlocks appends the BLAKE3 of each gran-sized block of b to sums.
func hashBlocks(sums [][protocol.SumSize]byte, b []byte, gran int64) [][protocol.SumSize]byte {
	for len(b) > 0 {
		k := min(int64(len(b)), gran)
		sums = append(sums, blake3.Sum256(b[:k]))
		b = b[k:]
	}
	return sums
}

// sumsBatch is how many blocks one Csums or Verify frame covers: at most
// MaxSums and about a megabyte of data.
func (n *Node) sumsBatch() int64 {
	return max(1, min(int64(protocol.MaxSums), int64(protocol.MaxData)/n.cfg.Granularity))
}

// readStable reads [off, off+len(buf)) once every in-flight write into it
// is local, holding back later overlapping writes until the read is done:
// the data read is a state the range passed through in sequence order.
func (n *Node) readStable(ctx context.Context, buf []byte, off int64) error {
	g := &entry{kind: kResync, off: off, n: int64(len(buf)), localCh: make(chan struct{})}
	n.mu.Lock()
	deps := n.inflight.overlapping(off, g.n, nil)
	n.inflight.add(g)
	n.mu.Unlock()
	for _, d := range deps {
		<-d.localCh
	}
	err := n.st.ReadAt(ctx, buf, off)
	n.mu.Lock()
	n.inflight.remove(g)
	close(g.localCh)
	n.mu.Unlock()
	return err
}

// targetStartLocked notes that this node became p's sync target and wakes
// the session's resync goroutine (which sends the hashes under csums);
// n.mu held.
//
// sourceOutOfSync is what the source announced it has marked: a full resync
// started during the session (invalidate-remote) marks everything here too,
// so the checksum pass covers it.
func (p *peer) targetStartLocked(s *session, sourceOutOfSync int64) {
	if sourceOutOfSync >= p.n.cfg.Size {
		p.markAll()
	}
	p.syncTotal = max(p.bm.DirtyBytes(), sourceOutOfSync)
	p.sy.syncStart = time.Now()
	p.sy.meter = rateMeter{}
	p.sy.recvResync.Store(0)
	if s != nil {
		select {
		case s.resync <- struct{}{}:
		default:
		}
	}
}

// csumsPass runs on the sync target: it sends the hashes of every marked
// block, then CsumsDone.
func (s *session) csumsPass() error {
	p, n := s.p, s.p.n
	gran := n.cfg.Granularity
	bm := p.bm
	blocks := bm.Blocks()
	batch := n.sumsBatch()
	buf := make([]byte, batch*gran)
	var sums [][protocol.SumSize]byte
	var sent int64
	for i := int64(0); ; {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		n.mu.Lock()
		active := p.sess == s && p.repl == api.SyncTarget
		n.mu.Unlock()
		if !active {
			return nil
		}
		b, ok := bm.NextSet(i)
		if !ok {
			break
		}
		e, ok := bm.NextClear(b)
		if !ok {
			e = blocks
		}
		e = min(e, b+batch)
		off := b * gran
		ln := min((e-b)*gran, n.cfg.Size-off)
		if err := n.st.ReadAt(s.ctx, buf[:ln], off); err != nil {
			return fmt.Errorf("checksum resync: read %d+%d: %w", off, ln, err)
		}
		sums = hashBlocks(sums[:0], buf[:ln], gran)
		h := protocol.Hashes{Off: uint64(off), Len: uint64(ln), Sums: sums}
		s.queue(ctrlMsg{t: protocol.TypeCsums, payload: h.Append(nil)})
		sent += ln
		i = e
	}
	s.queue(ctrlMsg{t: protocol.TypeCsumsDone})
	n.log.Info("checksum resync: sent the hashes of the marked blocks", "source", p.cfg.Name, "bytes", sent)
	return nil
}

// onCsums runs on the sync source for one Csums frame: the bits of the
// blocks whose hashes match are cleared; the others stay marked and are
// sent by the resync pass.
func (s *session) onCsums(payload []byte) error {
	p, n := s.p, s.p.n
	var h protocol.Hashes
	if err := h.Decode(payload); err != nil {
		return p.readErr("csums", err)
	}
	gran := n.cfg.Granularity
	off, ln := int64(h.Off), int64(h.Len)
	if off < 0 || ln <= 0 || off%gran != 0 || off+ln > n.cfg.Size || (ln+gran-1)/gran != int64(len(h.Sums)) {
		return p.readErr("csums", fmt.Errorf("%w: Csums %d+%d with %d sums", protocol.ErrCorrupt, off, ln, len(h.Sums)))
	}
	n.mu.Lock()
	active := p.sess == s && p.repl == api.SyncSource
	epoch := p.resyncs
	n.mu.Unlock()
	if !active {
		return nil
	}
	buf, pb := getBuf(int(ln))
	defer putBuf(pb)
	if err := n.readStable(s.ctx, buf, off); err != nil {
		return fmt.Errorf("checksum resync: read %d+%d: %w", off, ln, err)
	}
	var mine [][protocol.SumSize]byte
	mine = hashBlocks(mine, buf, gran)
	n.mu.Lock()
	defer n.mu.Unlock()
	// Only if the peer received every write since the read: the same
	// session, syncing all along (pull-ahead or a pause would have
	// started a new resync).
	if p.sess != s || p.repl != api.SyncSource || p.resyncs != epoch {
		return nil
	}
	var equal int64
	for i := range mine {
		if mine[i] == h.Sums[i] {
			bo := off + int64(i)*gran
			if k := min(gran, off+ln-bo); p.bm.Clear(bo, k) > 0 {
				equal += k
			}
		}
	}
	p.sy.csumsEqual.Add(equal)
	return nil
}

// onCsumsDone runs on the sync source: the resync pass may start.
func (s *session) onCsumsDone() {
	select {
	case s.sy.csumsDone <- struct{}{}:
	default:
	}
}

// waitCsums makes the source's resync wait for the target's hashes.
func (s *session) waitCsums() error {
	if !s.sy.csums {
		return nil
	}
	select {
	case <-s.sy.csumsDone:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}
