package bitmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/repd/repd/internal/durable"
)

var (
	errEOF           = io.EOF
	errUnexpectedEOF = io.ErrUnexpectedEOF
)

// activityLog is the in-memory side of the AL: the extents that are hot, how
// many writes each has in flight, and the ring position of the next record.
//
// Invariant: every extent in hot is in the newest durable AL record. An
// extent is added to hot only after a record holding it is durable; it is
// removed (evicted) before the record without it is written.
type activityLog struct {
	extSize  int64
	extShift uint
	capacity int
	nExt     int64 // extents of the device
	size     int64 // device size
	lay      layout

	mu       sync.Mutex
	hot      map[int64]*alExtent
	tick     uint64
	released chan struct{} // closed when an extent becomes idle; nil if no one waits

	tx        chan struct{} // one token: serializes AL transactions
	seq       uint64        // sequence of the newest durable record
	pos       int           // ring index of the next record
	persisted []int64       // hot set of the newest durable record, sorted
	buf       []byte
}

type alExtent struct {
	refs int64  // writes in flight
	used uint64 // tick of the last Activate, for LRU
}

func (a *activityLog) init(id Identity, lay layout) {
	a.extSize = id.ALExtentSize
	a.extShift = uint(bits.TrailingZeros64(uint64(id.ALExtentSize)))
	a.capacity = id.ALExtents
	a.nExt = (id.Size + id.ALExtentSize - 1) >> a.extShift
	a.size = id.Size
	a.lay = lay
	a.hot = make(map[int64]*alExtent)
	a.tx = make(chan struct{}, 1)
	a.buf = make([]byte, lay.alRecBytes)
}

// encodeRecord writes an AL record with the given hot set into a.buf.
func (a *activityLog) encodeRecord(instance, seq uint64, set []int64) []byte {
	p := a.buf
	clear(p)
	le := binary.LittleEndian
	copy(p, alMagic)
	le.PutUint64(p[8:], instance)
	le.PutUint64(p[16:], seq)
	le.PutUint32(p[24:], uint32(len(set)))
	for i, e := range set {
		le.PutUint32(p[alHeader+4*i:], uint32(e))
	}
	le.PutUint64(p[len(p)-8:], xxhash.Sum64(p[:len(p)-8]))
	return p
}

// decodeRecord returns the sequence and hot set of a valid record.
func (a *activityLog) decodeRecord(p []byte, instance uint64) (uint64, []int64, bool) {
	le := binary.LittleEndian
	if len(p) != len(a.buf) || !bytes.Equal(p[:8], []byte(alMagic)) ||
		le.Uint64(p[8:]) != instance ||
		le.Uint64(p[len(p)-8:]) != xxhash.Sum64(p[:len(p)-8]) {
		return 0, nil, false
	}
	seq := le.Uint64(p[16:])
	n := int(le.Uint32(p[24:]))
	if n > a.capacity {
		return 0, nil, false
	}
	set := make([]int64, n)
	for i := range set {
		e := int64(le.Uint32(p[alHeader+4*i:]))
		if e >= a.nExt || (i > 0 && e <= set[i-1]) {
			return 0, nil, false
		}
		set[i] = e
	}
	return seq, set, true
}

// load finds the newest valid record in the ring. Its extents become hot
// with no writes in flight.
func (a *activityLog) load(f File, instance uint64) error {
	found := false
	for i := 0; i < alRing; i++ {
		p := make([]byte, a.lay.alRecBytes)
		if err := durable.ReadFull(f, p, a.lay.alOff+int64(i)*a.lay.alRecBytes); err != nil {
			return err
		}
		seq, set, ok := a.decodeRecord(p, instance)
		if ok && (!found || seq > a.seq) {
			found = true
			a.seq, a.pos, a.persisted = seq, (i+1)%alRing, set
		}
	}
	for _, e := range a.persisted {
		a.hot[e] = &alExtent{}
	}
	return nil
}

// extents returns the extents [lo, hi) touching [off, off+n), clipped to the
// device.
func (a *activityLog) extents(off, n, size int64) (lo, hi int64) {
	if n <= 0 || off >= size || off+n <= 0 {
		return 0, 0
	}
	off = max(off, 0)
	end := min(off+n, size)
	if end < off {
		end = size
	}
	return off >> a.extShift, (end-1)>>a.extShift + 1
}

// Activate makes every AL extent touching [off, off+n) hot and counts one more
// write in flight in each. If any was not hot it first writes and fdatasyncs
// an AL transaction; when the AL is full it evicts the least recently used
// idle extents, flushing the bitmap pages that cover them first. If every
// extent is busy it waits for Complete to release one, or for ctx. For
// extents already hot it does no I/O and does not allocate. Every successful
// Activate must be paired with Complete(off, n).
func (m *Meta) Activate(ctx context.Context, off, n int64) error {
	a := &m.al
	lo, hi := a.extents(off, n, a.size)
	if lo >= hi {
		return nil
	}
	if hi-lo > int64(a.capacity) {
		return fmt.Errorf("activate %d+%d: needs %d AL extents, the log holds %d", off, n, hi-lo, a.capacity)
	}
	a.mu.Lock()
	if a.takeIfHot(lo, hi) {
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()
	return m.activateSlow(ctx, lo, hi)
}

// takeIfHot counts a write in flight in [lo, hi) if all are hot. a.mu held.
func (a *activityLog) takeIfHot(lo, hi int64) bool {
	for e := lo; e < hi; e++ {
		if a.hot[e] == nil {
			return false
		}
	}
	a.tick++
	for e := lo; e < hi; e++ {
		x := a.hot[e]
		x.refs++
		x.used = a.tick
	}
	return true
}

func (m *Meta) activateSlow(ctx context.Context, lo, hi int64) error {
	a := &m.al
	for {
		select {
		case a.tx <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		a.mu.Lock()
		if a.takeIfHot(lo, hi) {
			a.mu.Unlock()
			<-a.tx
			return nil
		}
		var need []int64
		for e := lo; e < hi; e++ {
			if a.hot[e] == nil {
				need = append(need, e)
			}
		}
		var victims []int64
		if over := len(a.hot) + len(need) - a.capacity; over > 0 {
			for e, x := range a.hot {
				if x.refs == 0 && (e < lo || e >= hi) {
					victims = append(victims, e)
				}
			}
			if len(victims) < over {
				// Every extent is busy: wait for one to go idle.
				if a.released == nil {
					a.released = make(chan struct{})
				}
				ch := a.released
				a.mu.Unlock()
				<-a.tx
				select {
				case <-ch:
					continue
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			slices.SortFunc(victims, func(x, y int64) int {
				if c := cmpU64(a.hot[x].used, a.hot[y].used); c != 0 {
					return c
				}
				return cmpI64(x, y)
			})
			victims = victims[:over]
			for _, e := range victims {
				delete(a.hot, e)
			}
		}
		set := make([]int64, 0, len(a.hot)+len(need))
		for e := range a.hot {
			set = append(set, e)
		}
		set = append(set, need...)
		slices.Sort(set)
		a.mu.Unlock()

		err := m.evictAndLog(victims, set)
		if err == nil {
			a.mu.Lock()
			for _, e := range need {
				a.hot[e] = &alExtent{}
			}
			a.persisted = set
			a.takeIfHot(lo, hi)
			a.mu.Unlock()
		}
		<-a.tx
		return err
	}
}

func cmpU64(x, y uint64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func cmpI64(x, y int64) int { return cmpU64(uint64(x), uint64(y)) }

// SyncDataBeforeEvict sets fn to make the data device's completed writes
// durable before an AL record drops an extent: after a crash only the
// extents of the last record are resynced, so an evicted extent must hold
// no write that is on the peers but may still be lost here. (DRBD's AL
// write flushes the disk that holds the data too; here the data is another
// file.) Call it before the first Activate.
func (m *Meta) SyncDataBeforeEvict(fn func() error) { m.syncData = fn }

// evictAndLog makes the data written into the victims durable (syncData)
// and the bitmap pages covering them, then writes an AL record holding set.
// The caller holds the tx token.
func (m *Meta) evictAndLog(victims, set []int64) error {
	a := &m.al
	if len(victims) > 0 {
		if m.syncData != nil {
			if err := m.syncData(); err != nil {
				return fmt.Errorf("evict AL extents: make the data written into them durable: %w", err)
			}
		}
		var pages []int64
		b := m.bms[0]
		for _, e := range victims {
			blo, bhi := b.blockRange(e*a.extSize, a.extSize)
			if blo >= bhi {
				continue
			}
			for p := (blo >> 6) / pageWords; p <= ((bhi-1)>>6)/pageWords; p++ {
				pages = append(pages, p)
			}
		}
		slices.Sort(pages)
		pages = slices.Compact(pages)
		if err := m.flushPages(pages); err != nil {
			return fmt.Errorf("evict AL extents: %w", err)
		}
	}
	return m.writeAL(set)
}

// writeAL writes and syncs the next AL record. The caller holds the tx token.
func (m *Meta) writeAL(set []int64) error {
	a := &m.al
	p := a.encodeRecord(m.instance, a.seq+1, set)
	off := a.lay.alOff + int64(a.pos)*a.lay.alRecBytes
	if err := durable.WriteFull(m.f, p, off); err != nil {
		return fmt.Errorf("meta file %s: write AL transaction: %w", m.path, err)
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("meta file %s: sync AL transaction: %w", m.path, err)
	}
	a.seq++
	a.pos = (a.pos + 1) % alRing
	return nil
}

// Complete says a write in [off, off+n) activated with Activate finished: its
// extents may be evicted once no other write is in them. Set the write's
// bitmap bits before calling Complete.
func (m *Meta) Complete(off, n int64) {
	a := &m.al
	lo, hi := a.extents(off, n, a.size)
	a.mu.Lock()
	for e := lo; e < hi; e++ {
		x := a.hot[e]
		if x == nil || x.refs == 0 {
			continue
		}
		x.refs--
		if x.refs == 0 && a.released != nil {
			close(a.released)
			a.released = nil
		}
	}
	a.mu.Unlock()
}

// HotExtents returns the extents of the newest durable AL record, ascending.
// After Open, before any Activate, that is what was hot when the node
// stopped. Extent e covers bytes [e*ALExtentSize, (e+1)*ALExtentSize).
func (m *Meta) HotExtents() []int64 {
	m.al.mu.Lock()
	defer m.al.mu.Unlock()
	return slices.Clone(m.al.persisted)
}

// ActiveWrites returns how many Activate calls have not been completed, over
// all extents.
func (m *Meta) ActiveWrites() int64 {
	m.al.mu.Lock()
	defer m.al.mu.Unlock()
	var n int64
	for _, x := range m.al.hot {
		n += x.refs
	}
	return n
}

// ReleaseIdle empties the activity log of every extent with no write in
// flight: it flushes the bitmaps and writes an AL transaction holding only the
// busy extents. Call it on a clean demote or shutdown so a later crash marks
// less; it does not wait for busy extents.
func (m *Meta) ReleaseIdle(ctx context.Context) error {
	a := &m.al
	select {
	case a.tx <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-a.tx }()
	// Drop the idle extents first: from here on a write into one waits for
	// the tx token, so the flush below covers every bit set in them.
	a.mu.Lock()
	var set []int64
	for e, x := range a.hot {
		if x.refs > 0 {
			set = append(set, e)
		} else {
			delete(a.hot, e)
		}
	}
	slices.Sort(set)
	same := slices.Equal(set, a.persisted)
	a.mu.Unlock()
	if err := m.FlushBitmaps(); err != nil {
		return err
	}
	if same {
		return nil
	}
	if err := m.writeAL(set); err != nil {
		return err
	}
	a.mu.Lock()
	a.persisted = set
	a.mu.Unlock()
	return nil
}
