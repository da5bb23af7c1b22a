package sizeclass

import "testing"

func TestClasses(t *testing.T) {
	for _, c := range []struct{ n, minShift, class, cap int }{
		{0, 9, 0, 512}, {1, 9, 0, 512}, {512, 9, 0, 512}, {513, 9, 1, 1024},
		{4096, 12, 0, 4096}, {4097, 12, 1, 8192}, {4608, 9, 4, 8192},
		{1 << 20, 9, 11, 1 << 20}, {1<<20 + 1, 9, 12, 1<<20 + 1},
	} {
		if got := Of(c.n, c.minShift); got != c.class {
			t.Errorf("Of(%d, %d) = %d, want %d", c.n, c.minShift, got, c.class)
		}
		if got := Cap(c.n, c.minShift, 12); got != c.cap {
			t.Errorf("Cap(%d, %d, 12) = %d, want %d", c.n, c.minShift, got, c.cap)
		}
	}
}
