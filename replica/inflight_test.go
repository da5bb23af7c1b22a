package replica

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestInflightSet checks the overlap queries and swap removals of
// inflightSet against a plain list, on random ranges.
func TestInflightSet(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var s inflightSet
	var model []*entry
	for step := range 20000 {
		if len(model) > 0 && r.IntN(2) == 0 {
			e := model[r.IntN(len(model))]
			s.remove(e)
			model = slices.DeleteFunc(model, func(x *entry) bool { return x == e })
			s.remove(e) // a second removal is a no-op
		} else {
			off := r.Int64N(1 << 20)
			n := 1 + r.Int64N(64<<10)
			var want []*entry
			for _, x := range model {
				if x.off < off+n && off < x.off+x.n {
					want = append(want, x)
				}
			}
			got := s.overlapping(off, n, nil)
			slices.SortFunc(got, func(a, b *entry) int { return cmp.Compare(a.seq, b.seq) })
			if !slices.Equal(got, want) {
				t.Fatalf("step %d: overlapping(%d, %d) = %d entries, want %d", step, off, n, len(got), len(want))
			}
			for _, x := range got {
				if x.localCh == nil {
					t.Fatalf("step %d: an overlapped entry has no local channel", step)
				}
			}
			e := &entry{kind: kWrite, seq: uint64(step), off: off, n: n}
			s.add(e)
			model = append(model, e)
		}
		if len(s.ents) != len(model) || len(s.spans) != len(model) {
			t.Fatalf("step %d: set holds %d entries, want %d", step, len(s.ents), len(model))
		}
	}
	// An entry that was never added is not removed in another's place.
	stranger := &entry{off: 0, n: 1}
	before := len(s.ents)
	s.remove(stranger)
	if len(s.ents) != before {
		t.Fatal("removing an entry that is not in the set removed another")
	}
}
