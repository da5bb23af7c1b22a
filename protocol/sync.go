package protocol

import (
	"encoding/binary"
	"fmt"
)

// StateCSums in a State's flags: the sender does checksum-based resync
// (resource.csums). Used only when both sides set it.
const StateCSums uint8 = 1 << 6

// SumSize is the size of one block hash (BLAKE3-256).
const SumSize = 32

// Granularity bounds: the smallest and largest block a Hashes payload may
// hash (the bitmap package's bounds; the configuration asks for 4 KiB or
// more).
const (
	MinGranularity = 512
	MaxGranularity = MaxData
)

// MaxSums bounds the hashes of one Hashes payload: one batch of MaxData
// bytes at the smallest granularity. (A batch is what one frame may make
// the receiver read and hash: at most MaxData bytes, whatever the count.)
const MaxSums = MaxData / MinGranularity

// Hashes are the BLAKE3-256 sums of consecutive blocks of Len bytes from
// Off, block by block at the resource's granularity (the last one may be
// shorter). One Hashes covers one batch: 1 to MaxData bytes, so at most
// ceil(Len/MinGranularity) sums; Decode refuses more, and ranges whose
// end overflows.
//
//	off u64 | len u64 | count u32 | count × [32]byte
type Hashes struct {
	Off, Len uint64
	Sums     [][SumSize]byte
}

// Append appends the payload encoding of h to b.
func (h *Hashes) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, h.Off)
	b = binary.LittleEndian.AppendUint64(b, h.Len)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(h.Sums)))
	for i := range h.Sums {
		b = append(b, h.Sums[i][:]...)
	}
	return b
}

// Decode parses a Hashes payload.
func (h *Hashes) Decode(p []byte) error {
	d := decoder{p: p}
	h.Off = d.u64()
	h.Len = d.u64()
	n := int(d.u32())
	if d.bad || n > MaxSums || len(d.p) != n*SumSize {
		return fmt.Errorf("%w: Hashes payload of %d bytes says %d sums", ErrCorrupt, len(p), n)
	}
	if err := checkBatch("Hashes", h.Off, h.Len); err != nil {
		return err
	}
	if n == 0 || uint64(n) > (h.Len+MinGranularity-1)/MinGranularity {
		return fmt.Errorf("%w: Hashes of %d bytes carries %d sums, want 1 to %d", ErrCorrupt, h.Len, n, (h.Len+MinGranularity-1)/MinGranularity)
	}
	h.Sums = h.Sums[:0]
	for range n {
		var s [SumSize]byte
		copy(s[:], d.bytes(SumSize))
		h.Sums = append(h.Sums, s)
	}
	return d.done("Hashes")
}

// Mismatches answers a Verify: the byte ranges of [Off, Off+Len) whose
// hashes differ (as Extents of Start=offset, Count=length). Like Hashes it
// covers one batch (1 to MaxData bytes, not overflowing), with at most
// MaxSums non-empty ranges inside it.
//
//	off u64 | len u64 | Bitmap-style extents
type Mismatches struct {
	Off, Len uint64
	Bad      []Extent
}

// Append appends the payload encoding of m to b.
func (m *Mismatches) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, m.Off)
	b = binary.LittleEndian.AppendUint64(b, m.Len)
	return AppendExtents(b, m.Bad)
}

// Decode parses a Mismatches payload.
func (m *Mismatches) Decode(p []byte) error {
	if len(p) < 16 {
		return fmt.Errorf("%w: Mismatches payload of %d bytes", ErrCorrupt, len(p))
	}
	m.Off = binary.LittleEndian.Uint64(p)
	m.Len = binary.LittleEndian.Uint64(p[8:])
	if err := checkBatch("Mismatches", m.Off, m.Len); err != nil {
		return err
	}
	var err error
	m.Bad, err = decodeExtents(p[16:], m.Bad[:0], MaxSums, "Mismatches")
	if err != nil {
		return err
	}
	for _, e := range m.Bad {
		if e.Count == 0 || e.Start < m.Off || e.Count > m.Len || e.Start-m.Off > m.Len-e.Count {
			return fmt.Errorf("%w: mismatch %d+%d outside %d+%d", ErrCorrupt, e.Start, e.Count, m.Off, m.Len)
		}
	}
	return nil
}

// checkBatch vets the range of a Hashes or Mismatches payload: 1 to
// MaxData bytes, its end not overflowing.
func checkBatch(what string, off, n uint64) error {
	if n == 0 || n > MaxData {
		return fmt.Errorf("%w: %s range %d+%d: want 1 to %d bytes (one batch)", ErrCorrupt, what, off, n, MaxData)
	}
	if off+n < off {
		return fmt.Errorf("%w: %s range %d+%d overflows", ErrCorrupt, what, off, n)
	}
	return nil
}
