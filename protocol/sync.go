package protocol

import (
	"encoding/binary"
	"fmt"
)

// Message types of checksum-based resync and online verify. Part of the
// wire format.
const (
	// TypeCsums: Hashes of blocks the sync target has marked; the source
	// keeps the bits of blocks that differ and clears the others.
	TypeCsums Type = 16
	// TypeCsumsDone: the sync target sent the hashes of every marked
	// block; the source now sends the blocks still marked.
	TypeCsumsDone Type = 17
	// TypeVerify: Hashes of the verify source's blocks; seq is a sequence
	// number in the write stream, so both sides hash the same state.
	TypeVerify Type = 18
	// TypeVerifyReply: Mismatches, the verify target's answer to one
	// Verify (seq = the Verify's).
	TypeVerifyReply Type = 19
)

// StateCSums in a State's flags: the sender does checksum-based resync
// (resource.csums). Used only when both sides set it.
const StateCSums uint8 = 1 << 6

// SumSize is the size of one block hash (BLAKE3-256).
const SumSize = 32

// MaxSums bounds the hashes of one Hashes payload.
const MaxSums = 4096

// Hashes are the BLAKE3-256 sums of consecutive blocks of Len bytes from
// Off, block by block at the resource's granularity (the last one may be
// shorter).
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
	if h.Off+h.Len < h.Off {
		return fmt.Errorf("%w: Hashes range %d+%d overflows", ErrCorrupt, h.Off, h.Len)
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
// hashes differ (as Extents of Start=offset, Count=length).
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
	var err error
	m.Bad, err = DecodeExtents(p[16:], m.Bad[:0])
	if err != nil {
		return err
	}
	for _, e := range m.Bad {
		if e.Start < m.Off || e.Count > m.Len || e.Start-m.Off > m.Len-e.Count {
			return fmt.Errorf("%w: mismatch %d+%d outside %d+%d", ErrCorrupt, e.Start, e.Count, m.Off, m.Len)
		}
	}
	return nil
}
