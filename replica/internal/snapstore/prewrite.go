package snapstore

import (
	"errors"
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
// zeroes change nothing the store reads, crash or not. A group is skipped
// once any of its slots was allocated (allocHW); while a group is being
// written (preLo, preHi) its slots are not handed out: a copy that needs
// one waits for the piece being written, and the group is given up.
// A store reopened later is not pre-written again: what its first life did
// not write, its copies write.

// errPrewriteStopped: stopPrewrite came during a group; errPrewriteAborted:
// a copy needed a slot of the group.
var (
	errPrewriteStopped = errors.New("pre-writing stopped")
	errPrewriteAborted = errors.New("pre-writing gave up a slot group a copy needed")
)

// prewriteChunk is the size of one zero write.
const prewriteChunk = 1 << 20

// startPrewrite starts the pre-writing of a store Open created.
func (s *Store) startPrewrite(pace func(n int64) time.Duration) {
	s.preStop, s.preDone = make(chan struct{}), make(chan struct{})
	s.preLeft.Store(s.lay.total - s.lay.groupsOff)
	go s.prewrite(pace)
}

// stopPrewrite stops the pre-writing, if any, and waits for it.
func (s *Store) stopPrewrite() {
	if s.preStop == nil {
		return
	}
	close(s.preStop)
	<-s.preDone
}

// prewrite writes the store's slot groups with zeroes, lowest first, each
// made durable (so its extents are converted) before the next. Before each
// group it waits pace(bytes), holding nothing; a group it writes is not
// handed out meanwhile, but a copy that needs one of its slots makes it
// give up the group after the piece it is writing (preAbort): the copies
// write that group themselves, and the pre-writing goes on above them. It
// stops at the end, at stopPrewrite or at the first error (logged: the
// copies then write that space themselves).
func (s *Store) prewrite(pace func(n int64) time.Duration) {
	defer close(s.preDone)
	defer s.preLeft.Store(0)
	zero := make([]byte, prewriteChunk)
	lay := s.lay
	start := time.Now()
	var written, skipped int64
	for lo := int64(0); lo < lay.slots; lo += descPerPage {
		hi := min(lo+descPerPage, lay.slots)
		off := lay.groupsOff + lo/descPerPage*lay.groupBytes
		end := lay.groupEnd(hi)
		if !s.prewriteWait(pace, end-off) {
			return
		}
		s.tab.Lock()
		if int64(s.allocHW) > lo {
			// A copy reached this group first: copies write it.
			s.tab.Unlock()
			skipped += end - off
			s.preLeft.Add(off - end)
			continue
		}
		s.preLo, s.preHi = int32(lo), int32(hi)
		s.preAbort.Store(false)
		s.tab.Unlock()
		err := s.prewriteRange(zero, off, end)
		if err == nil {
			err = s.f.Sync()
		}
		s.tab.Lock()
		s.preLo, s.preHi = 0, 0
		s.preCond.Broadcast()
		s.tab.Unlock()
		switch {
		case err == errPrewriteStopped:
			return
		case err == errPrewriteAborted:
			skipped += end - off
			s.preLeft.Add(off - end)
			continue
		case err != nil:
			s.log.Warn("pre-writing the snapshot store failed: copies write the rest of it themselves", "err", err)
			return
		}
		written += end - off
		s.preLeft.Add(off - end)
	}
	s.log.Info("snapshot store pre-written", "bytes", written, "left_to_copies", skipped, "took", time.Since(start).Round(time.Millisecond))
}

// prewriteWait waits pace(n); false if stopPrewrite came meanwhile.
func (s *Store) prewriteWait(pace func(n int64) time.Duration, n int64) bool {
	var d time.Duration
	if pace != nil {
		d = pace(n)
	}
	if d <= 0 {
		select {
		case <-s.preStop:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.preStop:
		return false
	case <-t.C:
		return true
	}
}

// prewriteRange writes zeroes over [off, end) in prewriteChunk pieces,
// unless told to stop or give up the group between two.
func (s *Store) prewriteRange(zero []byte, off, end int64) error {
	for off < end {
		select {
		case <-s.preStop:
			return errPrewriteStopped
		default:
		}
		if s.preAbort.Load() {
			return errPrewriteAborted
		}
		n := min(int64(len(zero)), end-off)
		if err := durable.WriteFull(s.f, zero[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}
