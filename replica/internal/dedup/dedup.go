// Package dedup is the sender's side of deduplication on the replication
// link (see protocol/dedup.go for the wire format): an index of what the
// receiver's disk is known to hold, and the encoder that turns a write into
// zero markers, references and literal blocks. Logic only: no locks (one
// shipper goroutine owns an Encoder), no sockets, no disk.
//
// The index maps a block's fingerprint (xxhash64: cheap, and a collision
// only costs a miss, since the receiver checks the BLAKE3 a reference
// carries) to an offset on the receiver, for aligned 4 KiB blocks, bounded
// (oldest evicted first). Only the shipper feeds and invalidates it, in
// sequence order, from exactly the entries it ships: every shipped write or
// resync block first looks its blocks up (a hit becomes a reference to a
// source the receiver holds *before* this write), then invalidates the
// index over the write's range, then indexes the write's own aligned
// blocks. Entries not shipped to the peer do not change its disk, so they
// do not touch its index. The index starts empty with each session (the
// receiver may have changed while the nodes were apart) and is reset when
// the receiver reports a reference it could not resolve.
package dedup

import (
	"bytes"

	"github.com/cespare/xxhash/v2"
	"github.com/zeebo/blake3"

	"github.com/repd/repd/protocol"
)

// EntryBytes is what one index entry costs, roughly (two map entries and a
// ring slot): an index of N bytes holds N / EntryBytes blocks.
const EntryBytes = 128

// Index maps fingerprints to offsets on the receiver.
type Index struct {
	max  int
	fwd  map[uint64]int64 // hash → offset
	rev  map[int64]uint64 // offset → hash, for the entries of fwd
	ring []int64          // offsets in insertion order, for eviction
	pos  int
}

// NewIndex returns an index of at most blocks entries (at least 16).
func NewIndex(blocks int) *Index {
	return &Index{max: max(blocks, 16), fwd: map[uint64]int64{}, rev: map[int64]uint64{}}
}

// Reset forgets everything.
func (x *Index) Reset() {
	clear(x.fwd)
	clear(x.rev)
	x.ring, x.pos = x.ring[:0], 0
}

// Lookup returns the offset known to hold content h.
func (x *Index) Lookup(h uint64) (int64, bool) {
	off, ok := x.fwd[h]
	return off, ok
}

// Len is the number of blocks indexed.
func (x *Index) Len() int { return len(x.rev) }

func (x *Index) drop(off int64) {
	if h, ok := x.rev[off]; ok {
		delete(x.rev, off)
		if x.fwd[h] == off {
			delete(x.fwd, h)
		}
	}
}

// Invalidate forgets every indexed block overlapping [off, off+n).
func (x *Index) Invalidate(off, n int64) {
	if len(x.rev) == 0 {
		return
	}
	first := off &^ (protocol.DedupBlock - 1)
	if (off+n-first)/protocol.DedupBlock > int64(len(x.rev)) {
		for o := range x.rev {
			if o < off+n && off < o+protocol.DedupBlock {
				x.drop(o)
			}
		}
		return
	}
	for o := first; o < off+n; o += protocol.DedupBlock {
		x.drop(o)
	}
}

// Insert records that the receiver holds content h at off (aligned), unless
// another place with it is known already. The caller invalidated off.
func (x *Index) Insert(off int64, h uint64) {
	if _, ok := x.fwd[h]; ok {
		return
	}
	if len(x.ring) < x.max {
		x.ring = append(x.ring, off)
	} else {
		x.drop(x.ring[x.pos]) // may be stale: then an early eviction, harmless
		x.ring[x.pos] = off
		x.pos = (x.pos + 1) % x.max
	}
	x.fwd[h] = off
	x.rev[off] = h
}

// Encoder is the sender's side: the index and the encoder's scratch.
type Encoder struct {
	Index *Index
	dw    protocol.DedupWrite
	same  map[uint64]int // within one write: hash → first block index
	ins   []insertion
}

type insertion struct {
	off int64
	h   uint64
}

// NewEncoder returns an encoder whose index takes about indexBytes.
func NewEncoder(indexBytes int64) *Encoder {
	return &Encoder{Index: NewIndex(int(indexBytes / EntryBytes)), same: map[uint64]int{}}
}

// Encode encodes the write of data at off. fp are the data's fingerprints
// if the writer computed them (Fingerprints), else nil. It updates the
// index and returns the DedupWrite (valid until the next call), how many
// blocks became references and zero markers, and ok false when no block
// was saved: then the write goes plain.
func (x *Encoder) Encode(off int64, data []byte, fp []uint64) (dw *protocol.DedupWrite, refs, zeros int64, ok bool) {
	dw = &x.dw
	n := int64(len(data))
	dw.Off, dw.Len = uint64(off), uint64(n)
	dw.Kinds, dw.Refs, dw.Data = dw.Kinds[:0], dw.Refs[:0], dw.Data[:0]
	x.ins = x.ins[:0]
	nb := protocol.DedupBlocks(uint64(n))
	if nb > 1 {
		clear(x.same)
	}
	for i := range nb {
		blk := data[i*protocol.DedupBlock : min((i+1)*protocol.DedupBlock, len(data))]
		o := off + int64(i)*protocol.DedupBlock
		if len(blk) == protocol.DedupBlock {
			if zero(blk) {
				dw.Kinds = append(dw.Kinds, protocol.BlockZero)
				zeros++
				continue
			}
			// The index is keyed by a cheap fingerprint; the BLAKE3 the
			// receiver verifies is computed only for a reference.
			var h uint64
			if fp != nil {
				h = fp[i]
			} else {
				h = xxhash.Sum64(blk)
			}
			src, hit := x.Index.Lookup(h)
			if j := src - off; hit && j >= 0 && j < int64(i)*protocol.DedupBlock && j%protocol.DedupBlock == 0 {
				// The receiver would read that as a block of this
				// write, not as what is there before it.
				hit = false
			}
			if !hit && nb > 1 {
				// An earlier block of this write: the receiver has it
				// once the write is applied, so the reference points
				// into the write itself (resolved from its own data).
				if j, dup := x.same[h]; dup {
					src, hit = off+int64(j)*protocol.DedupBlock, true
				} else {
					x.same[h] = i
				}
			}
			if hit {
				dw.Kinds = append(dw.Kinds, protocol.BlockRef)
				dw.Refs = append(dw.Refs, protocol.Ref{Src: uint64(src), Hash: blake3.Sum256(blk)})
				refs++
				continue
			}
			if o%protocol.DedupBlock == 0 {
				x.ins = append(x.ins, insertion{o, h})
			}
		}
		dw.Kinds = append(dw.Kinds, protocol.BlockData)
	}
	x.Index.Invalidate(off, n)
	for _, in := range x.ins {
		x.Index.Insert(in.off, in.h)
	}
	if refs+zeros == 0 {
		return nil, 0, 0, false
	}
	for i, k := range dw.Kinds {
		if k == protocol.BlockData {
			dw.Data = append(dw.Data, data[i*protocol.DedupBlock:min((i+1)*protocol.DedupBlock, len(data))]...)
		}
	}
	return dw, refs, zeros, true
}

// Fingerprints are the fingerprints of data's full 4 KiB blocks (0 for a
// short last block), for the writer to compute outside the shipper.
func Fingerprints(data []byte) []uint64 {
	fp := make([]uint64, protocol.DedupBlocks(uint64(len(data))))
	for i := range fp {
		if lo := i * protocol.DedupBlock; lo+protocol.DedupBlock <= len(data) {
			fp[i] = xxhash.Sum64(data[lo : lo+protocol.DedupBlock])
		}
	}
	return fp
}

var zeroBlock = make([]byte, protocol.DedupBlock)

func zero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }
