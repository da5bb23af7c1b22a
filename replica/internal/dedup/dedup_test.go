package dedup

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/protocol"
)

// TestEncodeAgainstReceiver ships random writes, made of a few recurring
// blocks, zero blocks and fresh ones, through the encoder to a model of
// the receiver's disk: every reference resolves (from the disk as it was
// before the write, or from an earlier block of the same write) to exactly
// the block it stands for, and blocks are actually saved.
func TestEncodeAgainstReceiver(t *testing.T) {
	const size = 1 << 20
	r := rand.New(rand.NewPCG(7, 9))
	disk := make([]byte, size)
	x := NewEncoder(1 << 20)
	pool := [][]byte{make([]byte, protocol.DedupBlock), block(r), block(r), block(r)}
	var saved, written int64
	for step := range 3000 {
		k := 1 + r.IntN(8)
		data := make([]byte, 0, k*protocol.DedupBlock)
		for range k {
			if r.IntN(4) == 0 {
				data = append(data, block(r)...)
			} else {
				data = append(data, pool[r.IntN(len(pool))]...)
			}
		}
		if r.IntN(10) == 0 {
			data = data[:len(data)-100] // a short last block travels as data
		}
		off := r.Int64N(size/protocol.DedupBlock-int64(k)) * protocol.DedupBlock
		if r.IntN(20) == 0 {
			off += 512 // unaligned: only whole blocks are indexed
		}
		var fp []uint64
		if r.IntN(2) == 0 {
			fp = Fingerprints(data)
		}
		dw, refs, zeros, ok := x.Encode(off, data, fp)
		written += int64(len(data))
		if ok {
			saved += (refs + zeros) * protocol.DedupBlock
			got := resolve(t, disk, dw)
			if !bytes.Equal(got, data) {
				t.Fatalf("step %d: the receiver rebuilt other data than was written at %d", step, off)
			}
		}
		copy(disk[off:], data)
	}
	if saved < written/4 {
		t.Fatalf("saved %d of %d bytes: dedup found too little", saved, written)
	}
	t.Logf("saved %d of %d bytes", saved, written)
}

func resolve(t *testing.T, disk []byte, dw *protocol.DedupWrite) []byte {
	out := make([]byte, dw.Len)
	lit, refs := dw.Data, dw.Refs
	for i, k := range dw.Kinds {
		lo := i * protocol.DedupBlock
		blk := out[lo:min(lo+protocol.DedupBlock, len(out))]
		switch k {
		case protocol.BlockData:
			copy(blk, lit)
			lit = lit[len(blk):]
		case protocol.BlockZero:
			clear(blk)
		case protocol.BlockRef:
			ref := refs[0]
			refs = refs[1:]
			src := int64(ref.Src)
			if j := src - int64(dw.Off); j >= 0 && j < int64(lo) && j%protocol.DedupBlock == 0 {
				copy(blk, out[j:j+protocol.DedupBlock])
			} else {
				copy(blk, disk[src:src+protocol.DedupBlock])
			}
			if blake3.Sum256(blk) != ref.Hash {
				t.Fatalf("reference to %d does not hash to what it claims", src)
			}
		}
	}
	return out
}

func block(r *rand.Rand) []byte {
	b := make([]byte, protocol.DedupBlock)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// The index is bounded, and forgets what a later write overwrote.
func TestIndexBoundAndInvalidate(t *testing.T) {
	x := NewIndex(16)
	for i := range 100 {
		off := int64(i) * protocol.DedupBlock
		x.Invalidate(off, protocol.DedupBlock)
		x.Insert(off, uint64(i+1))
	}
	if x.Len() > 16 {
		t.Fatalf("index holds %d blocks, bound 16", x.Len())
	}
	if _, ok := x.Lookup(100); !ok {
		t.Fatal("the newest block was evicted")
	}
	x.Invalidate(99*protocol.DedupBlock+10, 1)
	if _, ok := x.Lookup(100); ok {
		t.Fatal("a block overwritten in part is still indexed")
	}
	x.Reset()
	if x.Len() != 0 {
		t.Fatal("Reset left blocks")
	}
}
