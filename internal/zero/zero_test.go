package zero

import "testing"

func TestIs(t *testing.T) {
	if !Is(nil) || !Is([]byte{}) {
		t.Error("an empty buffer is all zeroes")
	}
	// Sizes around the window, a non-zero byte at every interesting place.
	for _, size := range []int{1, 7, 4096, len(window) - 1, len(window), len(window) + 1, 3*len(window) + 5} {
		b := make([]byte, size)
		if !Is(b) {
			t.Fatalf("%d zero bytes: not all zero", size)
		}
		for _, at := range []int{0, size / 2, size - 1, min(len(window), size-1), min(len(window)-1, size-1)} {
			b[at] = 1
			if Is(b) {
				t.Fatalf("%d bytes with byte %d set: all zero", size, at)
			}
			b[at] = 0
		}
	}
}

func TestBytes(t *testing.T) {
	for _, n := range []int{0, 1, 4096, Max, Max + 1} {
		b := Bytes(n)
		if len(b) != min(n, Max) || !Is(b) {
			t.Fatalf("Bytes(%d): %d bytes, all zero %v; want %d zero bytes", n, len(b), Is(b), min(n, Max))
		}
	}
}

func BenchmarkIs(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if !Is(buf) {
			b.Fatal("not zero")
		}
	}
}
