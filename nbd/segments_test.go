package nbd

import (
	"context"
	"testing"
)

// extentList is an Allocator that answers every call with its extents.
type extentList []Extent

func (l extentList) Allocation(context.Context, int64, int64) ([]Extent, error) { return l, nil }

// readSegments stops collecting at the chunk bound: a Device answer of
// thousands of extents makes at most maxReadChunks+1 segments (in a slice
// append grew), not one per extent, and the rest of the read goes as data
// in the last one.
func TestReadSegmentsBounded(t *testing.T) {
	var exts extentList
	for range 8 << 10 {
		exts = append(exts, Extent{Len: 4 << 10}, Extent{Len: 4 << 10, Flags: StateHole | StateZero})
	}
	c := &conn{ctx: context.Background(), allocator: exts}
	r := &request{off: 4 << 10, n: 32 << 20} // 4096 extents of data and holes
	segs := c.readSegments(r)
	if len(segs) != maxReadChunks || cap(segs) > 2*maxReadChunks {
		t.Fatalf("%d segments in a slice of %d, want %d in at most %d", len(segs), cap(segs), maxReadChunks, 2*maxReadChunks)
	}
	pos := r.off
	for i, s := range segs {
		if s.off != pos || s.n <= 0 || s.hole != (i%2 == 1) && i < maxReadChunks-1 {
			t.Fatalf("segment %d: %+v at %d", i, s, pos)
		}
		pos += s.n
	}
	if last := segs[maxReadChunks-1]; last.hole || pos != r.off+r.n {
		t.Fatalf("last segment %+v ends at %d, want data up to %d", last, pos, r.off+r.n)
	}
}
