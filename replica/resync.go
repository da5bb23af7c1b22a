package replica

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/internal/ctxtime"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/decide"
	"github.com/repd/repd/replica/internal/journal"
	"github.com/repd/repd/replica/internal/pace"
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
	bucket    pace.Bucket   // paces resync and verify (resync goroutine only)
}

// peerSync is a peer's resync and verify bookkeeping. Fields are guarded by
// Node.mu unless atomic.
type peerSync struct {
	userPaused bool // pause-sync by the operator
	syncStart  time.Time
	meter      pace.Meter
	csumsEqual atomic.Int64 // bytes found equal by checksum resync (not sent)
	recvResync atomic.Int64 // target: resync bytes received in this resync

	verifyTotal    int64 // bytes to verify
	verifyDone     int64 // bytes compared
	verifyPending  int   // Verify requests without a reply (source)
	verifyMismatch int64 // bytes found different by the last verify
	verifyStart    time.Time
	verifyMeter    pace.Meter
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
	p.syncTotal = max(p.bitmap.DirtyBytes(), sourceOutOfSync)
	p.sync.syncStart = time.Now()
	p.sync.meter = pace.Meter{}
	p.sync.recvResync.Store(0)
	if s != nil {
		select {
		case s.resync <- struct{}{}:
		default:
		}
	}
}

// pace waits until n more bytes of resync or verify traffic may go.
func (s *session) pace(n int64) error {
	nd := s.p.n
	busy := time.Since(time.Unix(0, nd.lastAppWrite.Load())) < pace.AppBusyWindow
	rate := pace.Budget(nd.cfg.ResyncRate, nd.cfg.ResyncMinRate, busy)
	if d := s.sync.bucket.Delay(time.Now(), rate, n); d > 0 {
		return ctxtime.Sleep(s.ctx, d)
	}
	return nil
}

// startSyncLocked makes p a sync target of this node; n.mu held.
func (p *peer) startSyncLocked() {
	p.syncTotal = p.bitmap.DirtyBytes()
	p.resyncs++
	p.progress.ResyncAcked = nil
	if p.sess != nil {
		select {
		case p.sess.resync <- struct{}{}:
		default:
		}
	}
}

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
		case repl == api.SyncTarget && s.sync.csums:
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
	bm := p.bitmap
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
		ent, err := n.start(s.ctx, journal.Resync, off, ln, nil, 0, p.bit, nil)
		if err != nil {
			return false, err
		}
		n.local(s.ctx, ent, false)
		if ent.Err != nil {
			return false, ent.Err
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
	case <-bar.DoneCh:
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
	p.verdict = decide.Verdict{Rel: decide.RelInSync}
	p.setReplLocked(api.Established)
	p.peerDisk = diskUpToDate
	// The target holds every write up to its ack now (nothing marked, the
	// barrier acked): the other Secondaries learn it with the next
	// PeerSeqs and clear their marks toward it. Without this, Have moved
	// only with a later ack, and a Secondary that marked a write toward
	// this target while the resync ran kept the mark until the next write.
	p.progress.Have = p.progress.AckSeq
	rd := protocol.ResyncDone{Current: n.super.GI.Current}
	s.queue(ctrlMsg{t: protocol.TypeResyncDone, payload: rd.Append(nil)})
	n.log.Info("resync finished", "target", p.cfg.Name, "bytes", p.stats.resynced.Load())
	return true, nil
}

// syncStartedLocked resets the progress meter of a resync this node
// sources; n.mu held.
func (p *peer) syncStartedLocked() {
	p.sync.syncStart = time.Now()
	p.sync.meter = pace.Meter{}
}
