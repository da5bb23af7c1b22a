package snapstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/repd/repd/internal/durable"
)

// pending is one chunk copy on its way to disk: its data is written to the
// slot, the slot is linked into the chunk's copies (readers use it), and the
// commit path makes data, then descriptor, durable.
type pending struct {
	chunk int64
	slot  int32
	tag   uint64
	sum   uint64        // dataSum of the copy (FormatVersion)
	done  chan struct{} // closed when durable or failed
	err   error         // set before done is closed
}

func (p *pending) finish(err error) {
	p.err = err
	close(p.done)
}

// committer groups the copies of concurrent Preserve calls into shared
// fdatasyncs. No goroutine of its own: a waiting Preserve takes the token
// and runs rounds for everyone. In FormatVersion a round writes the
// descriptors of every copy whose data is written (each descriptor holds
// its data's hash, so data and descriptor may reach the disk in any
// order), then syncs once: a copy is committed in one sync, shared by
// every copy queued before the round began. In formatV1 a round writes
// the descriptors of copies whose data the previous round made durable,
// then syncs once, which makes those descriptors and the data written
// since durable: a copy is committed in two syncs, and under load every
// sync serves two batches.
type committer struct {
	tok  chan struct{} // buffered 1: held while running rounds
	kick chan struct{} // buffered 1: a copy was queued
	mu   sync.Mutex
	data []*pending // data written, not yet synced
	desc []*pending // data durable, descriptor not yet written
	err  error      // sticky: the store file failed
	// For Stats: copies committed, and rounds (each one fdatasync).
	copies, rounds int64
}

// fail records the first I/O error of the store file and returns the
// sticky error. After it, every commit fails: a failed fdatasync may have
// dropped any write made before it.
func (s *Store) fail(err error) error {
	c := &s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %s: %w", ErrFailed, s.path, err)
		s.log.Error("snapshot store I/O error: its snapshots are invalidated", "err", err)
	}
	return c.err
}

// failure returns the sticky I/O error, or nil.
func (s *Store) failure() error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.err
}

func (s *Store) enqueue(p *pending) {
	c := &s.c
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		p.finish(err)
		return
	}
	c.data = append(c.data, p)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// await returns once p is durable or failed, running commit rounds while it
// waits if no one else is.
func (s *Store) await(p *pending) error {
	c := &s.c
	idle := false // the last turn found nothing queued: wait for a kick
	for {
		if idle {
			select {
			case <-p.done:
				return p.err
			case <-c.kick:
				idle = false
			}
			continue
		}
		select {
		case <-p.done:
			return p.err
		case c.tok <- struct{}{}:
			idle = !s.lead(p)
			<-c.tok
		}
	}
}

// lead runs rounds until p is done (true) or nothing is queued (false). If
// it stops with work queued, it kicks another waiter to take over.
func (s *Store) lead(p *pending) bool {
	for {
		select {
		case <-p.done:
			c := &s.c
			c.mu.Lock()
			more := len(c.data)+len(c.desc) > 0
			c.mu.Unlock()
			if more {
				select {
				case c.kick <- struct{}{}:
				default:
				}
			}
			return true
		default:
		}
		if !s.round() {
			return false
		}
	}
}

// round runs one commit round; false if nothing was queued.
func (s *Store) round() bool {
	c := &s.c
	c.mu.Lock()
	d, w, err := c.desc, c.data, c.err
	c.desc, c.data = nil, nil
	if len(d)+len(w) > 0 {
		c.rounds++
	}
	c.mu.Unlock()
	if len(d)+len(w) == 0 {
		return false
	}
	if s.version != formatV1 {
		// The descriptors carry their data's hash: write them now, and
		// one sync commits data and descriptors together.
		d, w = append(d, w...), nil
	}
	if err == nil && len(d) > 0 {
		if werr := s.writeDescs(d); werr != nil {
			err = s.fail(fmt.Errorf("write descriptors: %w", werr))
		}
	}
	// Every Preserve with a copy in this round holds s.mu shared, so the
	// header cannot change under it: lazy copies, with flagUnsynced
	// durable, are done once written; the flusher syncs them.
	lazy := s.lazy && s.hdr.unsynced()
	if err == nil && lazy {
		s.lazyCopies.Add(int64(len(d)))
	}
	if err == nil && !lazy {
		s.syncs.Add(1)
		if serr := s.f.Sync(); serr != nil {
			err = s.fail(fmt.Errorf("sync copies: %w", serr))
		}
	}
	if err != nil {
		for _, p := range d {
			p.finish(err)
		}
		for _, p := range w {
			p.finish(err)
		}
		return true
	}
	c.mu.Lock()
	c.copies += int64(len(d))
	if len(w) > 0 {
		c.desc = append(c.desc, w...)
	}
	c.mu.Unlock()
	for _, p := range d {
		p.finish(nil)
	}
	return true
}

// markUnsynced makes the header say, durably, that copies may skip their
// fdatasync on this boot (a power loss from now on invalidates the lazy
// snapshots at Open, see Lazy snapshots). No lock held.
func (s *Store) markUnsynced() {
	s.mu.Lock()
	var infos []Info
	if !s.closed && s.lazy && !s.hdr.unsynced() && s.failure() == nil {
		h := s.hdr
		infos = s.afterError(s.writeHeaderSettingUnsynced(&h))
	}
	s.mu.Unlock()
	s.report(infos)
}

// flusher syncs lazy copies every interval until Close, once an interval
// has passed without a new lazy copy: a sync while
// copies keep coming cannot clear the flag (flushLazy), and its writeback
// would only compete with the writes that make the copies (a snapshot's
// first seconds under load, when nearly every write makes one).
func (s *Store) flusher(every time.Duration) {
	defer close(s.flushDone)
	t := time.NewTicker(every)
	defer t.Stop()
	last := s.lazyCopies.Load()
	for {
		select {
		case <-s.stopFlush:
			return
		case <-t.C:
			if n := s.lazyCopies.Load(); n != last {
				last = n
				continue
			}
			s.flushLazy()
		}
	}
}

// flushLazy syncs the live device (Options.SyncLive) and the store file if
// lazy copies or snapshots may be unsynced and, if no copy or such
// snapshot came during those syncs, clears flagUnsynced: from then on a
// power loss costs the lazy snapshots nothing. The long syncs run without
// the lock, so writes go on meanwhile. A failed sync of the live device
// leaves the flag set (and the store as it is).
func (s *Store) flushLazy() {
	n := s.lazyCopies.Load()
	s.mu.RLock()
	set := !s.closed && s.hdr.unsynced() && s.failure() == nil
	live := s.liveDirty
	s.mu.RUnlock()
	if !set {
		return
	}
	if live {
		if err := s.syncLiveDevice(); err != nil {
			s.log.Warn("lazy snapshots stay unsynced: a power loss now would invalidate them", "err", err)
			return
		}
	}
	err := s.f.Sync()
	s.mu.Lock()
	var infos []Info
	if err != nil {
		// After a failed sync nothing unsynced can be trusted:
		// invalidate every snapshot (durably, if the disk still can).
		infos = s.afterError(s.fail(fmt.Errorf("sync lazy copies: %w", err)))
	} else if !s.closed && s.hdr.unsynced() && s.failure() == nil && s.lazyCopies.Load() == n {
		h := s.hdr
		h.flags &^= flagUnsynced
		infos = s.afterError(s.writeHeaderSynced(&h))
		// (No CreateLazyUnsynced came meanwhile: it counts in lazyCopies.)
	}
	s.mu.Unlock()
	s.report(infos)
}

// writeDescs writes the descriptors of d, runs of consecutive slots in one
// write each.
func (s *Store) writeDescs(d []*pending) error {
	slices.SortFunc(d, func(a, b *pending) int { return cmp.Compare(a.slot, b.slot) })
	buf := make([]byte, 0, len(d)*descBytes)
	for i := 0; i < len(d); {
		j := i + 1
		for j < len(d) && d[j].slot == d[j-1].slot+1 && d[j].slot%descPerPage != 0 {
			j++
		}
		buf = buf[:(j-i)*descBytes]
		for k := i; k < j; k++ {
			encodeDesc(buf[(k-i)*descBytes:], desc{chunk: d[k].chunk, tag: d[k].tag, sum: d[k].sum}, s.hdr.instance, s.version)
		}
		if err := durable.WriteFull(s.f, buf, s.lay.descOff(d[i].slot)); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// markChanged records [off, off+n) as written in the current epoch.
func (s *Store) markChanged(off, n int64) {
	lo, hi := off>>s.bShift, (off+n-1)>>s.bShift+1
	for lo < hi {
		i, b := lo>>6, uint(lo&63)
		k := min(64-int64(b), hi-lo)
		mask := ^uint64(0)
		if k < 64 {
			mask = (1<<uint(k) - 1) << b
		}
		if w := &s.cur[i]; w.Load()&mask != mask {
			w.Or(mask)
		}
		lo += k
	}
}

// Preserve must be called before every change of the live device's range
// [off, off+n) — writes, trims, write-zeroes, resync and replicated writes
// alike — and the change issued only after it returns nil. It records the
// range as changed since the newest snapshot and, for every chunk of the
// range not yet copied since the newest snapshot, copies the chunk's live
// content (read with readLive) into the store, for every snapshot that has
// no copy of it yet. It returns when those copies and the mappings to them
// are durable. A chunk copied already costs a bit test; concurrent copies
// share their fdatasyncs.
//
// When the store is full, the snapshots that needed the copy are
// invalidated (durably; OnInvalidate is told) and Preserve returns nil: the
// write goes on. An I/O error on the store file invalidates every snapshot
// the same way; only if even that cannot be recorded does Preserve return
// an error (wrapping ErrFailed) for writes that need a copy: issuing the
// write would then corrupt a snapshot the disk still calls valid. An error
// of readLive or ctx is returned as is; the write must not be issued.
func (s *Store) Preserve(ctx context.Context, off, n int64, readLive ReadFunc) error {
	if n == 0 {
		return nil
	}
	if off < 0 || n < 0 || off > s.size-n {
		return fmt.Errorf("preserve %d+%d: %w (size %d)", off, n, ErrRange, s.size)
	}
	c0, c1 := off>>s.cShift, (off+n-1)>>s.cShift
	for {
		s.mu.RLock()
		if s.closed {
			s.mu.RUnlock()
			return fmt.Errorf("preserve %d+%d: %w", off, n, ErrClosed)
		}
		if s.broken != nil {
			// The disk may still call snapshots valid: only a chunk with a
			// durable copy for the newest one may change.
			if s.newest >= 0 && s.allFast(c0, c1) {
				s.markChanged(off, n)
				s.mu.RUnlock()
				return nil
			}
			s.mu.RUnlock()
			infos, err := s.invalidateAll()
			s.report(infos)
			if err != nil {
				return fmt.Errorf("preserve %d+%d: %w", off, n, err)
			}
			continue
		}
		if s.newest < 0 {
			s.mu.RUnlock()
			return nil
		}
		s.markChanged(off, n)
		if s.allFast(c0, c1) {
			s.mu.RUnlock()
			return nil
		}
		if s.lazy && !s.hdr.unsynced() && s.failure() == nil {
			// Copies are about to skip their syncs: the header must
			// say so first (durably), with this boot's ID.
			s.mu.RUnlock()
			s.markUnsynced()
			continue
		}
		seen := s.hdr.seq
		act, x, err := s.copyChunks(ctx, c0, c1, readLive)
		s.mu.RUnlock()
		switch act {
		case actDone:
			if err != nil {
				return fmt.Errorf("preserve %d+%d: %w", off, n, err)
			}
			return nil
		case actFull:
			s.report(s.invalidateFull(x, seen))
		case actFailed:
			infos, err := s.invalidateAll()
			s.report(infos)
			if err != nil {
				return fmt.Errorf("preserve %d+%d: %w", off, n, err)
			}
		}
	}
}

// NeedsCopy says whether Preserve(off, n) would have to copy chunks (a
// snapshot still needs their live data) rather than return at once. It is
// a hint for scheduling, stale as soon as it returns: a caller that runs
// changes one at a time can hand those that copy to concurrent workers,
// whose copies share their fdatasyncs, instead of paying each copy's in
// turn. Preserve must still run before every change.
func (s *Store) NeedsCopy(off, n int64) bool {
	if n <= 0 || off < 0 || off > s.size-n {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.closed && s.newest >= 0 && !s.allFast(off>>s.cShift, (off+n-1)>>s.cShift)
}

func (s *Store) allFast(c0, c1 int64) bool {
	for x := c0; x <= c1; x++ {
		if !s.testFast(x) {
			return false
		}
	}
	return true
}

type action int

const (
	actDone   action = iota // finished, with the error to return
	actFull                 // no free slot for chunk x
	actFailed               // the store file failed
)

// liveError marks an error of the caller's ReadFunc.
type liveError struct{ err error }

func (e *liveError) Error() string { return fmt.Sprintf("read live device: %v", e.err) }
func (e *liveError) Unwrap() error { return e.err }

// maxOwnPending bounds the copies one Preserve call has made and not yet
// seen durable (each holds a pending entry in the store's tables and the
// committer's queue, about 200 bytes): past it, the call waits for their
// commit before it copies more. 256 chunks of the default size are 16 MiB
// of copies per fdatasync; unbounded, a 4 GiB WRITE_ZEROES after a fresh
// snapshot held 65,536 entries (about 13 MiB) until its end.
const maxOwnPending = 256

// copyChunks preserves chunks [c0, c1] for the newest snapshot. s.mu is
// held shared. It returns only after this call's copies have committed.
func (s *Store) copyChunks(ctx context.Context, c0, c1 int64, readLive ReadFunc) (action, int64, error) {
	if err := s.failure(); err != nil {
		return actFailed, 0, err
	}
	tag := s.hdr.entries[s.newest].seq
	var mine []*pending
	settle := func() error {
		var first error
		for _, p := range mine {
			if err := s.await(p); err != nil && first == nil {
				first = err
			}
		}
		s.tab.Lock()
		for _, p := range mine {
			if p.err == nil {
				delete(s.inflight, p.chunk)
				s.setFast(p.chunk)
			}
		}
		s.tab.Unlock()
		mine = nil
		return first
	}
	for x := c0; x <= c1; x++ {
		if s.testFast(x) {
			continue
		}
		for {
			if err := ctx.Err(); err != nil {
				if serr := settle(); serr != nil {
					return actFailed, 0, serr
				}
				return actDone, 0, err
			}
			s.tab.Lock()
			if p := s.inflight[x]; p != nil {
				// Another Preserve is copying x: its write must not go
				// before this one's copy is durable either.
				s.tab.Unlock()
				err := s.await(p)
				if err == nil {
					break // durable for the newest snapshot
				}
				if ferr := s.failure(); ferr != nil {
					settle()
					return actFailed, 0, ferr
				}
				continue // it failed reading the live device: try ourselves
			}
			if s.maxTag(x) >= tag {
				s.setFast(x)
				s.tab.Unlock()
				break
			}
			if s.nextBusy() {
				// Its slot group is being written with zeroes: the
				// pre-writing gives it up after the piece it writes
				// now; wait for that, then look at x afresh.
				s.preCond.Wait()
				s.tab.Unlock()
				continue
			}
			k, ok := s.alloc()
			if !ok {
				s.tab.Unlock()
				if err := settle(); err != nil {
					return actFailed, 0, err
				}
				return actFull, x, nil
			}
			p := &pending{chunk: x, slot: k, tag: tag, done: make(chan struct{})}
			s.inflight[x] = p
			s.tab.Unlock()
			if err := s.copyOne(p, readLive); err != nil {
				s.tab.Lock()
				delete(s.inflight, x)
				s.release(k)
				s.tab.Unlock()
				p.finish(err)
				serr := settle()
				var le *liveError
				if errors.As(err, &le) && serr == nil {
					return actDone, 0, err
				}
				return actFailed, 0, s.failure()
			}
			mine = append(mine, p)
			if len(mine) >= maxOwnPending {
				// A long range (a TRIM or WRITE_ZEROES of gigabytes)
				// settles as it goes: what one call holds stays small.
				if err := settle(); err != nil {
					return actFailed, 0, err
				}
			}
			break
		}
	}
	if err := settle(); err != nil {
		return actFailed, 0, err
	}
	return actDone, 0, nil
}

// copyOne copies chunk p.chunk from the live device into slot p.slot,
// publishes the copy to readers and queues it for commit.
func (s *Store) copyOne(p *pending, readLive ReadFunc) error {
	bp := s.bufPool.Get().(*[]byte)
	defer s.bufPool.Put(bp)
	off := p.chunk << s.cShift
	buf := (*bp)[:min(s.chunk, s.size-off)]
	if err := readLive(buf, off); err != nil {
		return &liveError{err}
	}
	if s.version != formatV1 {
		p.sum = dataSum(buf, s.hdr.instance)
	}
	if err := durable.WriteFull(s.f, buf, s.lay.slotOff(p.slot)); err != nil {
		return s.fail(fmt.Errorf("write copy of chunk %d: %w", p.chunk, err))
	}
	// From here on a reader of a snapshot that needs this copy reads it,
	// and one that read the chunk from the live device has finished: the
	// stripe's write lock waits for it.
	st := &s.stripes[p.chunk%int64(len(s.stripes))]
	st.Lock()
	s.tab.Lock()
	s.linkTail(p.chunk, p.slot, p.tag)
	s.tab.Unlock()
	st.Unlock()
	s.enqueue(p)
	return nil
}

// invalidateFull handles a full store: every valid snapshot that would read
// chunk x from the live device (seq above x's newest copy) is invalidated,
// durably, and the copies only they used are freed. seen is the header
// sequence Preserve saw; if it changed, the caller just retries.
func (s *Store) invalidateFull(x int64, seen uint64) []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.newest < 0 || s.hdr.seq != seen || s.failure() != nil {
		return nil
	}
	s.tab.RLock()
	top, free := s.maxTag(x), len(s.free)
	s.tab.RUnlock()
	if top >= s.hdr.entries[s.newest].seq || free > 0 {
		return nil
	}
	var drop []int
	for i := range s.hdr.entries {
		if e := &s.hdr.entries[i]; e.valid() && e.seq > top {
			drop = append(drop, i)
		}
	}
	h := s.hdr
	newCur, err := s.mergeEpochs(&h, drop)
	if err != nil {
		return s.afterError(err)
	}
	now := time.Now()
	for _, i := range drop {
		h.entries[i] = invalidEntry(h.entries[i], reasonFull, uint64(x<<s.cShift), now)
	}
	if err := s.writeHeader(&h); err != nil {
		return s.afterError(err)
	}
	s.applyHeader(true, newCur)
	infos := make([]Info, 0, len(drop))
	for _, i := range drop {
		infos = append(infos, s.infoOf(i))
	}
	return infos
}

// Abandon is for a caller that must change the live device although
// Preserve failed (cause): it invalidates every snapshot, durably, as
// after an I/O error on the store file, so that none reads data changed
// without its copy; the store then refuses new snapshots until it is
// reopened. It returns the error that keeps the store broken if even that
// could not be recorded: the disk may then still call snapshots valid.
func (s *Store) Abandon(cause error) error {
	s.fail(fmt.Errorf("a change of the live device went ahead without its copy: %w", cause))
	infos, err := s.invalidateAll()
	s.report(infos)
	return err
}

// invalidateAll runs recovery after an I/O error on the store file and
// returns the snapshots it invalidated, or the error that keeps the store
// broken.
func (s *Store) invalidateAll() ([]Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	infos := s.recoverLocked()
	return infos, s.broken
}

// recoverLocked writes a header in which every snapshot is invalid and
// frees every copy. It writes it even when no snapshot is valid: a header
// write that failed may still reach the disk later (a failed fdatasync
// says nothing about when or whether the page goes out), and the new one,
// to the same slot, supersedes it. If it cannot be made durable the store
// is broken: every write that needs a copy is refused, since the disk may
// still call a snapshot valid. s.mu held exclusively.
func (s *Store) recoverLocked() []Info {
	cause := s.failure()
	if cause == nil || s.recovered {
		return nil
	}
	var drop []int
	for i := range s.hdr.entries {
		if s.hdr.entries[i].valid() {
			drop = append(drop, i)
		}
	}
	h := s.hdr
	now := time.Now()
	for _, i := range drop {
		h.entries[i] = invalidEntry(h.entries[i], reasonIO, 0, now)
	}
	if err := s.writeHeader(&h); err != nil {
		s.broken = fmt.Errorf("%w; marking its snapshots invalid failed too (%v): writes that need a copy are refused", cause, err)
		return nil
	}
	s.broken, s.recovered = nil, true
	s.tab.Lock()
	clear(s.inflight)
	s.tab.Unlock()
	s.applyHeader(true, nil)
	infos := make([]Info, 0, len(drop))
	for _, i := range drop {
		infos = append(infos, s.infoOf(i))
	}
	return infos
}
