package protocol

import (
	"encoding/binary"
	"fmt"
)

// Deduplication on the wire. A Write frame with FlagDedup carries a
// DedupWrite: the write cut into blocks of DedupBlock bytes (the last one
// may be shorter), each sent as its data, as a zero marker, or as a
// reference to a place on the receiver's own disk that held the same
// content when the sender last knew:
//
//	off u64 | len u64 | blocks u32 | kind [blocks]u8
//	| refs × (src u64 | blake3 [32]) | data of the BlockData blocks, in order
//
// The receiver resolves each reference by reading DedupBlock bytes at src
// from its store and checking their BLAKE3-256 against the hash. A src that
// is the start of an earlier block of the same write (off + j×DedupBlock,
// j below the block's own index) means that block's new content, taken
// from the write itself (and checked the same way). Only if
// every reference resolves does it apply the write. Otherwise it answers
// TypeDataReq with the frame's seq, holds back every later write, barrier
// and resync frame, and the sender resends the write's full data as a plain
// Write frame with FlagResend (same seq). A reference is never written
// blindly.
//
// Part of the wire format; sent only to peers announcing FeatureDedup.

// DedupBlock is the unit of deduplication.
const DedupBlock = 4096

// BlockKind is how one block of a DedupWrite travels.
type BlockKind uint8

// Block kinds. Part of the wire format.
const (
	BlockData BlockKind = 0 // its bytes follow, with the other data blocks
	BlockZero BlockKind = 1 // all zero
	BlockRef  BlockKind = 2 // the receiver's block at Ref.Src, whose BLAKE3 is Ref.Hash
)

// Ref names a full DedupBlock on the receiver's disk and its content hash.
type Ref struct {
	Src  uint64
	Hash [32]byte
}

// DedupWrite is the payload of a Write frame with FlagDedup.
type DedupWrite struct {
	Off, Len uint64
	Kinds    []BlockKind // one per block
	Refs     []Ref       // one per BlockRef, in block order
	Data     []byte      // the BlockData blocks, concatenated
}

// DedupBlocks is the number of blocks of a write of n bytes.
func DedupBlocks(n uint64) int { return int((n + DedupBlock - 1) / DedupBlock) }

// AppendHead appends everything but Data; Data follows it in the frame.
func (d *DedupWrite) AppendHead(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, d.Off)
	b = binary.LittleEndian.AppendUint64(b, d.Len)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(d.Kinds)))
	for _, k := range d.Kinds {
		b = append(b, byte(k))
	}
	for i := range d.Refs {
		b = binary.LittleEndian.AppendUint64(b, d.Refs[i].Src)
		b = append(b, d.Refs[i].Hash[:]...)
	}
	return b
}

// Decode parses a DedupWrite payload, reusing d's slices. Data aliases p.
func (d *DedupWrite) Decode(p []byte) error {
	if len(p) < 20 {
		return fmt.Errorf("%w: dedup Write payload of %d bytes", ErrCorrupt, len(p))
	}
	d.Off = binary.LittleEndian.Uint64(p)
	d.Len = binary.LittleEndian.Uint64(p[8:])
	nb := binary.LittleEndian.Uint32(p[16:])
	p = p[20:]
	if d.Len == 0 || d.Len > MaxData || int64(nb) != int64(DedupBlocks(d.Len)) || len(p) < int(nb) {
		return fmt.Errorf("%w: dedup Write of %d bytes in %d blocks", ErrCorrupt, d.Len, nb)
	}
	if d.Off+d.Len < d.Off {
		return fmt.Errorf("%w: Write range %d+%d overflows", ErrCorrupt, d.Off, d.Len)
	}
	d.Kinds = d.Kinds[:0]
	d.Refs = d.Refs[:0]
	var refs, data uint64
	for i := range int(nb) {
		k := BlockKind(p[i])
		size := min(uint64(DedupBlock), d.Len-uint64(i)*DedupBlock)
		switch {
		case k == BlockData:
			data += size
		case k == BlockZero, k == BlockRef && size == DedupBlock:
			if k == BlockRef {
				refs++
			}
		default:
			return fmt.Errorf("%w: dedup block %d of kind %d (%d bytes)", ErrCorrupt, i, k, size)
		}
		d.Kinds = append(d.Kinds, k)
	}
	p = p[nb:]
	if uint64(len(p)) != refs*40+data {
		return fmt.Errorf("%w: dedup Write with %d references and %d data bytes carries %d bytes", ErrCorrupt, refs, data, len(p))
	}
	for range refs {
		var r Ref
		r.Src = binary.LittleEndian.Uint64(p)
		copy(r.Hash[:], p[8:40])
		if r.Src+DedupBlock < r.Src {
			return fmt.Errorf("%w: reference at %d overflows", ErrCorrupt, r.Src)
		}
		d.Refs = append(d.Refs, r)
		p = p[40:]
	}
	d.Data = p
	return nil
}
