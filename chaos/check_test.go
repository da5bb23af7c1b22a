package chaos

import (
	"strings"
	"testing"
)

// image builds a device image of n blocks from per-block write ids.
func image(n int64, shown map[int64]uint64) []byte {
	img := make([]byte, n*BlockSize)
	for b, id := range shown {
		fillBlock(img[b*BlockSize:], id, b)
	}
	return img
}

// The checker catches what it must and allows what it may.
func TestCheck(t *testing.T) {
	h := &History{}
	w1 := h.add(0, 2) // blocks 0,1
	h.done(w1, nil)
	w2 := h.add(1, 2) // blocks 1,2; sent after w1 acked
	h.done(w2, nil)
	w3 := h.add(3, 1) // in flight at the fault
	s := h.tick()
	h.flushed(s)
	w4 := h.add(4, 1)
	h.done(w4, nil)
	_ = w3

	cases := []struct {
		name   string
		shown  map[int64]uint64
		mode   Mode
		want   string // substring of the first violation; "" none
		flushL int
	}{
		{"all there", map[int64]uint64{0: 1, 1: 2, 2: 2, 4: 4}, AllAcked, "", 0},
		{"in-flight write present", map[int64]uint64{0: 1, 1: 2, 2: 2, 3: 3, 4: 4}, AllAcked, "", 0},
		{"acked write missing", map[int64]uint64{0: 1, 1: 2, 2: 2}, AllAcked, "block 4: zeroes", 0},
		{"older write under newer", map[int64]uint64{0: 1, 1: 1, 2: 2, 4: 4}, AllAcked, "block 1: shows write 1", 0},
		{"prefix: only the first write", map[int64]uint64{0: 1, 1: 1}, Prefix, "", 2},
		{"prefix: flushed writes there, later one lost", map[int64]uint64{0: 1, 1: 2, 2: 2}, Prefix, "", 0},
		{"prefix: newer visible, older lost", map[int64]uint64{1: 2, 2: 2, 4: 4}, Prefix, "block 0: zeroes", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := Check(h, image(8, c.shown), c.mode)
			got := ""
			if len(rep.Violations) > 0 {
				got = rep.Violations[0]
			}
			if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Fatalf("violations %q, want %q", rep.Violations, c.want)
			}
			if rep.FlushedLost != c.flushL {
				t.Errorf("FlushedLost %d, want %d", rep.FlushedLost, c.flushL)
			}
		})
	}
	img := image(8, map[int64]uint64{0: 1})
	img[100] ^= 1
	if rep := Check(h, img, AllAcked); rep.NViolations == 0 || !strings.Contains(rep.Violations[0], "garbage") {
		t.Fatalf("a flipped bit passed: %q", rep.Violations)
	}
}
