package replica

import (
	"errors"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/protocol"
)

// resyncBarrierBytes is how much resync data is sent between barriers: the
// bits of acked blocks clear when the next barrier is acked (the target
// made them durable).
const resyncBarrierBytes = 8 << 20

// resyncLoop runs while the session lasts; whenever p becomes our
// SyncSource target it walks p's bitmap and sends the marked blocks through
// the journal, in sequence with the application writes, so a block written
// during the resync is never overtaken by its older contents.
func (s *session) resyncLoop() error {
	p, n := s.p, s.p.n
	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-s.resync:
		}
		n.mu.Lock()
		repl, mine := p.repl, p.sess == s
		n.mu.Unlock()
		switch {
		case !mine:
			continue
		case repl == api.VerifySource:
			if err := s.verifyPass(); err != nil {
				return err
			}
			continue
		case repl == api.SyncTarget && s.sy.csums:
			if err := s.csumsPass(); err != nil {
				return err
			}
			continue
		case repl == api.SyncSource:
			if err := s.waitCsums(); err != nil {
				return err
			}
		}
		for {
			n.mu.Lock()
			active := p.repl == api.SyncSource && p.sess == s
			n.mu.Unlock()
			if !active {
				break
			}
			done, err := s.resyncPass()
			if errors.Is(err, errResyncStopped) {
				break
			}
			if err != nil {
				return err
			}
			if done {
				break
			}
		}
	}
}

// resyncPass sends every marked block once, then a barrier; it reports
// whether the bitmap is clear afterwards (and then ends the resync).
func (s *session) resyncPass() (bool, error) {
	p, n := s.p, s.p.n
	bm := p.bm
	gran := n.cfg.Granularity
	blocks := bm.Blocks()
	maxRun := max(int64(protocol.MaxData)/gran, 1)
	var sinceBarrier int64
	for i := int64(0); ; {
		if err := s.ctx.Err(); err != nil {
			return false, err
		}
		b, ok := bm.NextSet(i)
		if !ok {
			break
		}
		e, ok := bm.NextClear(b)
		if !ok {
			e = blocks
		}
		e = min(e, b+maxRun)
		off := b * gran
		ln := min((e-b)*gran, n.cfg.Size-off)
		if err := s.pace(ln); err != nil {
			return false, err
		}
		ent, err := n.start(s.ctx, kResync, off, ln, nil, 0, p.bit)
		if err != nil {
			return false, err
		}
		n.local(s.ctx, ent, false)
		if ent.err != nil {
			return false, ent.err
		}
		i = e
		if sinceBarrier += ln; sinceBarrier >= resyncBarrierBytes {
			n.barrier(p.bit)
			sinceBarrier = 0
		}
	}
	bar := n.barrier(p.bit)
	if bar == nil {
		return false, errResyncStopped
	}
	select {
	case <-bar.doneCh:
	case <-s.ctx.Done():
		return false, s.ctx.Err()
	}
	n.mu.Lock()
	defer n.unlock()
	if p.repl != api.SyncSource || p.sess != s {
		return false, errResyncStopped
	}
	if bm.Count() != 0 {
		return false, nil
	}
	err := n.persist(func(sb *bitmap.Superblock) { sb.GI.Bitmap[p.slot] = 0 })
	if err != nil {
		return false, err
	}
	p.verdict = Verdict{Rel: RelInSync}
	p.setReplLocked(api.Established)
	p.peerDisk = UpToDate
	rd := protocol.ResyncDone{Current: n.sb.GI.Current}
	s.queue(ctrlMsg{t: protocol.TypeResyncDone, payload: rd.Append(nil)})
	n.log.Info("resync finished", "target", p.cfg.Name, "bytes", p.resynced.Load())
	return true, nil
}
