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

func TestPool(t *testing.T) {
	p := NewPool(9, 3) // 512, 1024, 2048
	for _, c := range []struct {
		n, cap int
		pooled bool
	}{{0, 512, true}, {1, 512, true}, {512, 512, true}, {513, 1024, true}, {2048, 2048, true}, {2049, 2049, false}, {4096, 4096, false}} {
		if got := p.Cap(c.n); got != c.cap {
			t.Errorf("Cap(%d) = %d, want %d", c.n, got, c.cap)
		}
		if got := p.Pooled(c.n); got != c.pooled {
			t.Errorf("Pooled(%d) = %v, want %v", c.n, got, c.pooled)
		}
		b := p.Get(c.n)
		if len(*b) != c.n || cap(*b) != c.cap {
			t.Fatalf("Get(%d): len %d cap %d, want cap %d", c.n, len(*b), cap(*b), c.cap)
		}
		p.Put(b)
	}
	p.Put(nil)
	odd := make([]byte, 700)
	p.Put(&odd) // not a class's size: ignored, never handed out
	big := make([]byte, 4096)
	p.Put(&big) // above the largest class: ignored
	for range 8 {
		if b := p.Get(700); cap(*b) != 1024 {
			t.Fatalf("Get(700) returned a buffer of %d bytes", cap(*b))
		}
		if b := p.Get(3000); cap(*b) != 3000 {
			t.Fatalf("Get(3000) returned a buffer of %d bytes", cap(*b))
		}
	}
	// A buffer handed back is handed out again at the length asked for.
	b := p.Get(1000)
	(*b)[999] = 7
	p.Put(b)
	if b2 := p.Get(600); len(*b2) != 600 || cap(*b2) != 1024 {
		t.Fatalf("Get(600) after Put: len %d cap %d", len(*b2), cap(*b2))
	}
}
