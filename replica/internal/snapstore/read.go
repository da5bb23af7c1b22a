package snapstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"
	"sort"

	"github.com/repd/repd/internal/durable"
)

// ReadAt reads snapshot name's image of [off, off+len(p)) into p: each
// chunk from the store where the chunk was overwritten since the snapshot,
// else from the live device through readLive (see ReadFunc).
//
// A concurrent Preserve and live write of the same chunk never show
// through: a chunk is read from the live device under a read lock that the
// Preserve copying it must take exclusively to publish its copy, before it
// returns and so before the caller issues the write. A reader that comes
// after the publication reads the copy. The snapshot stays valid for the
// whole call (invalidation waits for it).
func (s *Store) ReadAt(ctx context.Context, name string, p []byte, off int64, readLive ReadFunc) error {
	n := int64(len(p))
	if off < 0 || off > s.size-n {
		return fmt.Errorf("read snapshot %q at %d+%d: %w (size %d)", name, off, n, ErrRange, s.size)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.usable(); err != nil {
		return fmt.Errorf("read snapshot %q: %w", name, err)
	}
	if s.broken != nil {
		return fmt.Errorf("read snapshot %q: %w", name, s.broken)
	}
	i := s.find(name)
	if i < 0 {
		return fmt.Errorf("read snapshot %q: %w", name, ErrNotFound)
	}
	e := &s.hdr.entries[i]
	if !e.valid() {
		return &InvalidError{Name: name, Reason: s.reasonText(e)}
	}
	seq := e.seq
	for pos := int64(0); pos < n; {
		if err := ctx.Err(); err != nil {
			return err
		}
		at := off + pos
		x := at >> s.cShift
		end := min((x+1)<<s.cShift, off+n)
		seg := p[pos : pos+end-at]
		st := &s.stripes[x%int64(len(s.stripes))]
		st.RLock()
		s.tab.RLock()
		k := s.lookup(x, seq)
		s.tab.RUnlock()
		var err error
		if k >= 0 {
			st.RUnlock()
			if err = durable.ReadFull(s.f, seg, s.lay.slotOff(k)+(at-x<<s.cShift)); err != nil {
				err = fmt.Errorf("read snapshot %q at %d: store: %w", name, at, err)
			}
		} else {
			if err = readLive(seg, at); err != nil {
				err = fmt.Errorf("read snapshot %q at %d: live device: %w", name, at, err)
			}
			st.RUnlock()
		}
		if err != nil {
			return err
		}
		pos += end - at
	}
	return nil
}

// Extent is a byte range of the device.
type Extent struct {
	Off int64
	Len int64
}

// Changed returns the blocks written after snapshot from and before
// snapshot to (to "" means until now), as ascending, non-adjacent byte
// extents of whole blocks (the last clipped to the device). from must be
// older than to. See ChangedRange for large devices.
func (s *Store) Changed(from, to string) ([]Extent, error) {
	var out []Extent
	err := s.ChangedRange(from, to, 0, s.size, func(e Extent) bool {
		out = append(out, e)
		return true
	})
	return out, err
}

// changedWindow is how many bitmap words ChangedRange merges at a time.
const changedWindow = 8192

// ChangedRange calls fn, in ascending order, for each extent of [off,
// off+n) written after snapshot from and before snapshot to ("" = now); fn
// returns false to stop. Extents are cut at the range's ends. This is the
// block-status query of an incremental backup. After an unclean shutdown,
// the blocks written since the newest snapshot are known per chunk: whole
// chunks are reported (never fewer blocks than were written).
func (s *Store) ChangedRange(from, to string, off, n int64, fn func(Extent) bool) error {
	if off < 0 || n < 0 || off > s.size-n {
		return fmt.Errorf("changed blocks %d+%d: %w (size %d)", off, n, ErrRange, s.size)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.usable(); err != nil {
		return fmt.Errorf("changed blocks: %w", err)
	}
	epochs, err := s.epochsBetween(from, to)
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	lo, hi := off>>s.bShift, (off+n-1)>>s.bShift+1
	var (
		acc     = make([]uint64, changedWindow)
		buf     []byte
		run     Extent // pending extent, in blocks
		running bool
	)
	emit := func() bool {
		if !running {
			return true
		}
		running = false
		a := max(run.Off<<s.bShift, off)
		b := min((run.Off+run.Len)<<s.bShift, off+n)
		return fn(Extent{Off: a, Len: b - a})
	}
	for w0 := lo >> 6; w0 <= (hi-1)>>6; w0 += changedWindow {
		w1 := min(w0+changedWindow, (hi-1)>>6+1)
		win := acc[:w1-w0]
		clear(win)
		for _, ep := range epochs {
			if ep == s.newest {
				for j := range win {
					win[j] |= s.cur[w0+int64(j)].Load()
				}
				continue
			}
			if buf == nil {
				buf = make([]byte, changedWindow*8)
			}
			b := buf[:len(win)*8]
			if err := durable.ReadFull(s.f, b, s.lay.areaOff(ep)+w0*8); err != nil {
				return fmt.Errorf("changed blocks: read record of snapshot %q: %w", s.hdr.entries[ep].name, err)
			}
			for j := range win {
				win[j] |= binary.LittleEndian.Uint64(b[8*j:])
			}
		}
		for j, w := range win {
			base := (w0 + int64(j)) << 6
			if base < lo {
				w &^= 1<<uint(lo-base) - 1
			}
			if base+64 > hi {
				w &= 1<<uint(hi-base) - 1
			}
			for w != 0 {
				b := int64(bits.TrailingZeros64(w))
				w &= w - 1
				blk := base + b
				if running && run.Off+run.Len == blk {
					run.Len++
					continue
				}
				if !emit() {
					return nil
				}
				run, running = Extent{Off: blk, Len: 1}, true
			}
		}
	}
	emit()
	return nil
}

// epochsBetween returns the table indices of the valid snapshots whose
// epochs make up "written after from, before to". s.mu held.
func (s *Store) epochsBetween(from, to string) ([]int, error) {
	check := func(name string) (int, error) {
		i := s.find(name)
		if i < 0 {
			return -1, fmt.Errorf("changed blocks: snapshot %q: %w", name, ErrNotFound)
		}
		if e := &s.hdr.entries[i]; !e.valid() {
			return -1, fmt.Errorf("changed blocks: %w", &InvalidError{Name: name, Reason: s.reasonText(e)})
		}
		return i, nil
	}
	a, err := check(from)
	if err != nil {
		return nil, err
	}
	end := uint64(1<<64 - 1)
	if to != "" {
		b, err := check(to)
		if err != nil {
			return nil, err
		}
		if s.hdr.entries[b].seq < s.hdr.entries[a].seq {
			return nil, fmt.Errorf("changed blocks: snapshot %q is older than %q; give the older one first", to, from)
		}
		end = s.hdr.entries[b].seq
	}
	var eps []int
	for i := range s.hdr.entries {
		if e := &s.hdr.entries[i]; e.valid() && e.seq >= s.hdr.entries[a].seq && e.seq < end {
			eps = append(eps, i)
		}
	}
	sort.Ints(eps)
	return eps, nil
}
