package replica

import (
	"context"
	"fmt"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/bufpool"
	"github.com/repd/repd/replica/internal/journal"
)

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
	g := &journal.Entry{Kind: journal.Resync, Off: off, N: int64(len(buf)), LocalCh: make(chan struct{})}
	n.mu.Lock()
	deps := n.inflight.Overlapping(off, g.N, nil)
	n.inflight.Add(g)
	n.mu.Unlock()
	for _, d := range deps {
		<-d.LocalCh
	}
	err := scanAt(ctx, n.st, buf, off)
	n.mu.Lock()
	n.inflight.Remove(g)
	close(g.LocalCh)
	n.mu.Unlock()
	return err
}

// csumsPass runs on the sync target: it sends the hashes of every marked
// block, then CsumsDone.
func (s *session) csumsPass() error {
	p, n := s.p, s.p.n
	gran := n.cfg.Granularity
	bm := p.bitmap
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
		if err := scanAt(s.ctx, n.st, buf[:ln], off); err != nil {
			return fmt.Errorf("checksum resync: read %d+%d: %w", off, ln, err)
		}
		sums = hashBlocks(sums[:0], buf[:ln], gran)
		h := protocol.Hashes{Off: uint64(off), Len: uint64(ln), Sums: sums}
		if err := s.queueWait(ctrlMsg{t: protocol.TypeCsums, payload: h.Append(nil)}); err != nil {
			return err
		}
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
	if off < 0 || ln <= 0 || off%gran != 0 || off > n.cfg.Size || ln > n.cfg.Size-off || (ln+gran-1)/gran != int64(len(h.Sums)) {
		return p.readErr("csums", fmt.Errorf("%w: Csums %d+%d with %d sums", protocol.ErrCorrupt, off, ln, len(h.Sums)))
	}
	n.mu.Lock()
	active := p.sess == s && p.repl == api.SyncSource
	epoch := p.resyncs
	n.mu.Unlock()
	if !active {
		return nil
	}
	buf, pb := bufpool.Get(int(ln))
	defer bufpool.Put(pb)
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
			if k := min(gran, off+ln-bo); p.bitmap.Clear(bo, k) > 0 {
				equal += k
			}
		}
	}
	p.sync.csumsEqual.Add(equal)
	return nil
}

// onCsumsDone runs on the sync source: the resync pass may start.
func (s *session) onCsumsDone() {
	select {
	case s.sync.csumsDone <- struct{}{}:
	default:
	}
}

// waitCsums makes the source's resync wait for the target's hashes.
func (s *session) waitCsums() error {
	if !s.sync.csums {
		return nil
	}
	select {
	case <-s.sync.csumsDone:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}
