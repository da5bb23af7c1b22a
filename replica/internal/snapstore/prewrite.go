package snapstore

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/repd/repd/internal/durable"
)

// Pre-writing. A new store's slot groups are reserved with fallocate, which
// ext4 (and XFS) record as unwritten extents: the first write into each
// part of one converts it when written back, so the first copies into a
// fresh store cost more than later ones (fio 64 KiB random buffered writes
// into a fallocated file on this project's VM: 16k IOPS, against 20k into
// the same file written once; the bench's backup drill: the first run with
// a fresh snapshot's copies kept 0.55-0.72x of the Primary's IOPS, the
// later ones 0.83-1.03x). So a store created by Open is written once with
// zeroes in the background, lowest slot group first: copies take the
// lowest free slot, so the groups they reach first are written first.
//
// Only slots no copy has used since the creation are written: their
// descriptors and data read as zeroes already (a fresh store), so the
// zeroes change nothing the store reads, crash or not. The Store decides
// which groups may be written (claimGroup: none of its slots was ever
// allocated) and does not hand out a slot of the group being written: a
// copy that needs one waits for the piece in progress, and the group is
// given up (abort). A store reopened later is not pre-written again: what
// its first life did not write, its copies write.

// errPrewriteStopped: stop came during a group; errPrewriteAborted: a copy
// needed a slot of the group.
var (
	errPrewriteStopped = errors.New("pre-writing stopped")
	errPrewriteAborted = errors.New("pre-writing gave up a slot group a copy needed")
)

// prewriteChunk is the size of one zero write.
const prewriteChunk = 1 << 20

// prewriter writes a new store's slot groups with zeroes in a goroutine of
// its own. claim(lo, hi) asks the store for slots [lo, hi) (false: a copy
// has been there, skip the group); release gives them back.
type prewriter struct {
	f       file
	lay     layout
	log     *slog.Logger
	pace    func(n int64) time.Duration
	claim   func(lo, hi int64) bool
	release func()
	abort   atomic.Bool  // a copy waits for the claimed group: give it up
	left    atomic.Int64 // bytes not yet written or given up (Stats.PrewriteLeft)
	stop    chan struct{}
	done    chan struct{}
}

// startPrewriter starts pre-writing the slot groups of lay in f.
func startPrewriter(f file, lay layout, log *slog.Logger, pace func(n int64) time.Duration, claim func(lo, hi int64) bool, release func()) *prewriter {
	w := &prewriter{f: f, lay: lay, log: log, pace: pace, claim: claim, release: release,
		stop: make(chan struct{}), done: make(chan struct{})}
	w.left.Store(lay.total - lay.groupsOff)
	go w.run()
	return w
}

// close stops the pre-writing and waits for it.
func (w *prewriter) close() {
	close(w.stop)
	<-w.done
}

// run writes the slot groups with zeroes, lowest first, each made durable
// (so its extents are converted) before the next. Before each group it
// waits pace(bytes), holding nothing; a group it claimed is given up after
// the piece it is writing once abort is set: the copies write that group
// themselves, and the pre-writing goes on above them. It stops at the end,
// at close or at the first error (logged: the copies then write that
// space themselves).
func (w *prewriter) run() {
	defer close(w.done)
	defer w.left.Store(0)
	zero := make([]byte, prewriteChunk)
	lay := w.lay
	start := time.Now()
	var written, skipped int64
	for lo := int64(0); lo < lay.slots; lo += descPerPage {
		hi := min(lo+descPerPage, lay.slots)
		off := lay.groupsOff + lo/descPerPage*lay.groupBytes
		end := lay.groupEnd(hi)
		if !w.wait(end - off) {
			return
		}
		w.abort.Store(false)
		if !w.claim(lo, hi) {
			// A copy reached this group first: copies write it.
			skipped += end - off
			w.left.Add(off - end)
			continue
		}
		err := w.zero(zero, off, end)
		if err == nil {
			err = w.f.Sync()
		}
		w.release()
		w.left.Add(off - end)
		switch {
		case err == errPrewriteStopped:
			return
		case err == errPrewriteAborted:
			skipped += end - off
			continue
		case err != nil:
			w.log.Warn("pre-writing the snapshot store failed: copies write the rest of it themselves", "err", err)
			return
		}
		written += end - off
	}
	w.log.Info("snapshot store pre-written", "bytes", written, "left_to_copies", skipped, "took", time.Since(start).Round(time.Millisecond))
}

// wait waits pace(n); false if close came meanwhile.
func (w *prewriter) wait(n int64) bool {
	var d time.Duration
	if w.pace != nil {
		d = w.pace(n)
	}
	if d <= 0 {
		select {
		case <-w.stop:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.stop:
		return false
	case <-t.C:
		return true
	}
}

// zero writes zeroes over [off, end) in prewriteChunk pieces, unless told
// to stop or give up the group between two.
func (w *prewriter) zero(zero []byte, off, end int64) error {
	for off < end {
		select {
		case <-w.stop:
			return errPrewriteStopped
		default:
		}
		if w.abort.Load() {
			return errPrewriteAborted
		}
		n := min(int64(len(zero)), end-off)
		if err := durable.WriteFull(w.f, zero[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}
