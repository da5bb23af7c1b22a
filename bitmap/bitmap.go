package bitmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
)

// Granularity limits: a bitmap block is a power of two between these.
const (
	minGranularity = 512
	maxGranularity = 1 << 20
)

// Words of the bitmap are tracked for persistence in pages of this many bytes
// (the unit the meta file writes). Part of the on-disk format: bitmap areas
// are laid out and written in pages of this size.
const (
	pageBytes = 4096
	pageWords = pageBytes / 8
)

// Bitmap marks out-of-sync blocks of a device of Size bytes at Granularity
// bytes per bit. Bit i covers bytes [i*Granularity, (i+1)*Granularity) clipped
// to Size. It is safe for concurrent use.
//
// It remembers which pages (4 KiB of the word array) changed since they were
// last persisted, so the meta file writes only those.
type Bitmap struct {
	size   int64
	gran   int64
	shift  uint  // log2(gran)
	blocks int64 // number of bits

	mu    sync.Mutex
	words []uint64
	count int64
	dirty []uint64 // one bit per page of words
	nz    []uint64 // bit w set iff words[w] != 0, so NextSet skips 64 zero words at a time
}

// newBitmap returns a clear bitmap for a device of size bytes at granularity bytes
// per bit. The granularity must be a power of two between 512 B and 1 MiB.
func newBitmap(size, granularity int64) (*Bitmap, error) {
	if size < 0 {
		return nil, fmt.Errorf("bitmap: negative size %d", size)
	}
	if granularity < minGranularity || granularity > maxGranularity || granularity&(granularity-1) != 0 {
		return nil, fmt.Errorf("bitmap: granularity %d is not a power of two between %d and %d", granularity, minGranularity, maxGranularity)
	}
	shift := uint(bits.TrailingZeros64(uint64(granularity)))
	blocks := (size + granularity - 1) >> shift
	nw := (blocks + 63) / 64
	np := (nw + pageWords - 1) / pageWords
	return &Bitmap{
		size:   size,
		gran:   granularity,
		shift:  shift,
		blocks: blocks,
		words:  make([]uint64, nw),
		dirty:  make([]uint64, (np+63)/64),
		nz:     make([]uint64, (nw+63)/64),
	}, nil
}

// Size is the device size in bytes.
func (b *Bitmap) Size() int64 { return b.size }

// Granularity is the number of bytes one bit covers.
func (b *Bitmap) Granularity() int64 { return b.gran }

// Blocks is the number of bits.
func (b *Bitmap) Blocks() int64 { return b.blocks }

// blockRange returns the blocks [lo, hi) touching [off, off+n), clipped to the
// device.
func (b *Bitmap) blockRange(off, n int64) (lo, hi int64) {
	if n <= 0 || off >= b.size || off+n <= 0 {
		return 0, 0
	}
	if off < 0 {
		n += off
		off = 0
	}
	end := off + n
	if end > b.size || end < off {
		end = b.size
	}
	return off >> b.shift, (end + b.gran - 1) >> b.shift
}

// Set marks every block touching [off, off+n) and returns how many bits were
// newly set. The range is clipped to the device.
func (b *Bitmap) Set(off, n int64) int64 {
	lo, hi := b.blockRange(off, n)
	if lo >= hi {
		return 0
	}
	b.mu.Lock()
	c := b.setRange(lo, hi)
	b.mu.Unlock()
	return c
}

// Clear clears every block touching [off, off+n) and returns how many bits
// were cleared. The caller guarantees those whole blocks are in sync.
func (b *Bitmap) Clear(off, n int64) int64 {
	lo, hi := b.blockRange(off, n)
	if lo >= hi {
		return 0
	}
	b.mu.Lock()
	c := b.clearRange(lo, hi)
	b.mu.Unlock()
	return c
}

// SetBlocks sets bits [lo, hi) and returns how many were newly set. The range
// is clipped to the bitmap.
func (b *Bitmap) SetBlocks(lo, hi int64) int64 {
	lo, hi = max(lo, 0), min(hi, b.blocks)
	if lo >= hi {
		return 0
	}
	b.mu.Lock()
	c := b.setRange(lo, hi)
	b.mu.Unlock()
	return c
}

// ClearBlocks clears bits [lo, hi) and returns how many were cleared. The
// range is clipped to the bitmap.
func (b *Bitmap) ClearBlocks(lo, hi int64) int64 {
	lo, hi = max(lo, 0), min(hi, b.blocks)
	if lo >= hi {
		return 0
	}
	b.mu.Lock()
	c := b.clearRange(lo, hi)
	b.mu.Unlock()
	return c
}

// rangeMask yields, for word w of a bit range [lo, hi), the mask of its bits.
func rangeMask(w, lo, hi int64) uint64 {
	m := ^uint64(0)
	if w == lo>>6 {
		m &= ^uint64(0) << uint(lo&63)
	}
	if w == (hi-1)>>6 {
		m &= ^uint64(0) >> uint(63-(hi-1)&63)
	}
	return m
}

func (b *Bitmap) setRange(lo, hi int64) int64 {
	var c int64
	for w := lo >> 6; w <= (hi-1)>>6; w++ {
		m := rangeMask(w, lo, hi)
		old := b.words[w]
		if nw := old | m; nw != old {
			b.put(w, nw)
			c += int64(bits.OnesCount64(nw ^ old))
		}
	}
	b.count += c
	return c
}

func (b *Bitmap) clearRange(lo, hi int64) int64 {
	var c int64
	for w := lo >> 6; w <= (hi-1)>>6; w++ {
		m := rangeMask(w, lo, hi)
		old := b.words[w]
		if nw := old &^ m; nw != old {
			b.put(w, nw)
			c += int64(bits.OnesCount64(nw ^ old))
		}
	}
	b.count -= c
	return c
}

// put stores word w, marking its page changed and keeping nz current.
func (b *Bitmap) put(w int64, x uint64) {
	b.words[w] = x
	b.markDirty(w)
	if x != 0 {
		b.nz[w>>6] |= 1 << uint(w&63)
	} else {
		b.nz[w>>6] &^= 1 << uint(w&63)
	}
}

func (b *Bitmap) markDirty(word int64) {
	p := word / pageWords
	b.dirty[p>>6] |= 1 << uint(p&63)
}

func (b *Bitmap) markAllDirty() {
	np := b.pages()
	for i := range b.dirty {
		b.dirty[i] = ^uint64(0)
	}
	if r := np & 63; r != 0 && len(b.dirty) > 0 {
		b.dirty[len(b.dirty)-1] = 1<<uint(r) - 1
	}
}

// pages is the number of pages of the word array.
func (b *Bitmap) pages() int64 { return (int64(len(b.words)) + pageWords - 1) / pageWords }

// SetBlock sets bit i. Out-of-range indices are ignored.
func (b *Bitmap) SetBlock(i int64) {
	if i < 0 || i >= b.blocks {
		return
	}
	b.mu.Lock()
	w, m := i>>6, uint64(1)<<uint(i&63)
	if b.words[w]&m == 0 {
		b.put(w, b.words[w]|m)
		b.count++
	}
	b.mu.Unlock()
}

// ClearBlock clears bit i. Out-of-range indices are ignored.
func (b *Bitmap) ClearBlock(i int64) {
	if i < 0 || i >= b.blocks {
		return
	}
	b.mu.Lock()
	w, m := i>>6, uint64(1)<<uint(i&63)
	if b.words[w]&m != 0 {
		b.put(w, b.words[w]&^m)
		b.count--
	}
	b.mu.Unlock()
}

// TestBlock reports whether bit i is set. Out of range is false.
func (b *Bitmap) TestBlock(i int64) bool {
	if i < 0 || i >= b.blocks {
		return false
	}
	b.mu.Lock()
	v := b.words[i>>6]&(1<<uint(i&63)) != 0
	b.mu.Unlock()
	return v
}

// NextSet returns the first set block index >= from, or false if there is none.
func (b *Bitmap) NextSet(from int64) (int64, bool) {
	if from < 0 {
		from = 0
	}
	if from >= b.blocks {
		return 0, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	w := from >> 6
	if x := b.words[w] & (^uint64(0) << uint(from&63)); x != 0 {
		return w<<6 + int64(bits.TrailingZeros64(x)), true
	}
	// Find the next non-zero word through the summary.
	w++
	for s := w >> 6; s < int64(len(b.nz)); s++ {
		y := b.nz[s]
		if s == w>>6 {
			y &= ^uint64(0) << uint(w&63)
		}
		if y != 0 {
			w = s<<6 + int64(bits.TrailingZeros64(y))
			return w<<6 + int64(bits.TrailingZeros64(b.words[w])), true
		}
	}
	return 0, false
}

// NextClear returns the first clear block index >= from, or false if there is
// none.
func (b *Bitmap) NextClear(from int64) (int64, bool) {
	if from < 0 {
		from = 0
	}
	if from >= b.blocks {
		return 0, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	w := from >> 6
	x := ^b.words[w] & (^uint64(0) << uint(from&63))
	for x == 0 {
		w++
		if w >= int64(len(b.words)) {
			return 0, false
		}
		x = ^b.words[w]
	}
	i := w<<6 + int64(bits.TrailingZeros64(x))
	if i >= b.blocks {
		return 0, false
	}
	return i, true
}

// Count is the number of set bits.
func (b *Bitmap) Count() int64 {
	b.mu.Lock()
	c := b.count
	b.mu.Unlock()
	return c
}

// DirtyBytes is the number of out-of-sync bytes: Count()*Granularity, with the
// last block clipped to Size.
func (b *Bitmap) DirtyBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.count << b.shift
	if last := b.blocks - 1; last >= 0 && b.words[last>>6]&(1<<uint(last&63)) != 0 {
		n -= b.blocks<<b.shift - b.size
	}
	return n
}

// SetAll marks every block.
func (b *Bitmap) SetAll() {
	b.mu.Lock()
	if b.blocks > 0 {
		b.setRange(0, b.blocks)
	}
	b.mu.Unlock()
}

// ClearAll clears every block.
func (b *Bitmap) ClearAll() {
	b.mu.Lock()
	if b.blocks > 0 {
		b.clearRange(0, b.blocks)
	}
	b.mu.Unlock()
}

// errGeometry is returned when two bitmaps or a bitmap and its encoding do not
// have the same size and granularity.
var errGeometry = errors.New("bitmap: geometry differs")

// Or sets every bit that is set in o. Both must have the same size and
// granularity.
func (b *Bitmap) Or(o *Bitmap) error {
	if b == o {
		return nil
	}
	if o.size != b.size || o.gran != b.gran {
		return fmt.Errorf("%w: %d bytes at %d B/bit, not %d at %d", errGeometry, o.size, o.gran, b.size, b.gran)
	}
	src := o.Clone() // never hold both locks
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, x := range src.words {
		old := b.words[i]
		if nw := old | x; nw != old {
			b.put(int64(i), nw)
			b.count += int64(bits.OnesCount64(nw ^ old))
		}
	}
	return nil
}

// MarshalBinary encodes the bits as little-endian 64-bit words (bit i is bit
// i%64 of word i/64), Blocks() rounded up to whole words. This is the form
// exchanged between peers; it carries no geometry.
func (b *Bitmap) MarshalBinary() ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := make([]byte, 8*len(b.words))
	for i, w := range b.words {
		binary.LittleEndian.PutUint64(p[8*i:], w)
	}
	return p, nil
}

// UnmarshalBinary replaces the bits with an encoding from MarshalBinary of a
// bitmap of the same geometry. Bits past Blocks() must be zero.
func (b *Bitmap) UnmarshalBinary(p []byte) error {
	if len(p) != 8*len(b.words) {
		return fmt.Errorf("%w: encoding has %d bytes, want %d for %d blocks", errGeometry, len(p), 8*len(b.words), b.blocks)
	}
	if r := b.blocks & 63; r != 0 {
		last := binary.LittleEndian.Uint64(p[len(p)-8:])
		if last>>uint(r) != 0 {
			return fmt.Errorf("bitmap: encoding has bits set past block %d", b.blocks)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var c int64
	for i := range b.words {
		w := binary.LittleEndian.Uint64(p[8*i:])
		if w != b.words[i] {
			b.put(int64(i), w)
		}
		c += int64(bits.OnesCount64(w))
	}
	b.count = c
	return nil
}

// Clone returns an independent copy (with no pages marked changed).
func (b *Bitmap) Clone() *Bitmap {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := &Bitmap{
		size:   b.size,
		gran:   b.gran,
		shift:  b.shift,
		blocks: b.blocks,
		words:  append([]uint64(nil), b.words...),
		count:  b.count,
		dirty:  make([]uint64, len(b.dirty)),
		nz:     append([]uint64(nil), b.nz...),
	}
	return c
}

// Equal reports whether b and o have the same geometry and bits.
func (b *Bitmap) Equal(o *Bitmap) bool {
	if b == o {
		return true
	}
	if b.size != o.size || b.gran != o.gran {
		return false
	}
	oc := o.Clone()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.count != oc.count {
		return false
	}
	for i, w := range b.words {
		if oc.words[i] != w {
			return false
		}
	}
	return true
}

// String summarizes the bitmap for logs.
func (b *Bitmap) String() string {
	return fmt.Sprintf("bitmap{%d bytes, %d B/bit, %d of %d set}", b.size, b.gran, b.Count(), b.blocks)
}

// The following are for the meta file writer.

// takePage copies page p of the words into buf (pageBytes long, little-endian)
// and forgets that the page changed. It reports whether the page had changed.
func (b *Bitmap) takePage(p int64, buf []byte, onlyDirty bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := uint64(1) << uint(p&63)
	if onlyDirty && b.dirty[p>>6]&m == 0 {
		return false
	}
	b.dirty[p>>6] &^= m
	lo := p * pageWords
	hi := min(lo+pageWords, int64(len(b.words)))
	for i := range buf {
		buf[i] = 0
	}
	for w := lo; w < hi; w++ {
		binary.LittleEndian.PutUint64(buf[8*(w-lo):], b.words[w])
	}
	return true
}

// redirtyPage marks page p changed again (its write did not reach disk).
func (b *Bitmap) redirtyPage(p int64) {
	b.mu.Lock()
	b.dirty[p>>6] |= 1 << uint(p&63)
	b.mu.Unlock()
}

// nextDirtyPage returns the first changed page >= from.
func (b *Bitmap) nextDirtyPage(from int64) (int64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	np := b.pages()
	for from < np {
		w := from >> 6
		x := b.dirty[w] & (^uint64(0) << uint(from&63))
		if x != 0 {
			p := w<<6 + int64(bits.TrailingZeros64(x))
			if p < np {
				return p, true
			}
			return 0, false
		}
		from = (w + 1) << 6
	}
	return 0, false
}

// loadPage replaces page p of the words with buf (little-endian) without
// marking it changed. Bits past Blocks() are dropped.
func (b *Bitmap) loadPage(p int64, buf []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	lo := p * pageWords
	hi := min(lo+pageWords, int64(len(b.words)))
	for w := lo; w < hi; w++ {
		x := binary.LittleEndian.Uint64(buf[8*(w-lo):])
		if w == int64(len(b.words))-1 {
			if r := b.blocks & 63; r != 0 {
				x &= 1<<uint(r) - 1
			}
		}
		b.count += int64(bits.OnesCount64(x)) - int64(bits.OnesCount64(b.words[w]))
		b.words[w] = x
		if x != 0 {
			b.nz[w>>6] |= 1 << uint(w&63)
		} else {
			b.nz[w>>6] &^= 1 << uint(w&63)
		}
	}
}
