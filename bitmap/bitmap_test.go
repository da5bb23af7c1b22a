package bitmap

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

func mustNew(t testing.TB, size, gran int64) *Bitmap {
	t.Helper()
	b, err := newBitmap(size, gran)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewGranularity(t *testing.T) {
	for _, g := range []int64{0, 1, 256, 511, 513, 4095, 3 << 10, 2 << 20, -4096} {
		if _, err := newBitmap(1<<20, g); err == nil {
			t.Errorf("New(1MiB, %d) succeeded", g)
		}
	}
	for _, g := range []int64{512, 4096, 1 << 20} {
		b, err := newBitmap(1<<30+1, g)
		if err != nil {
			t.Fatalf("New(1GiB+1, %d): %v", g, err)
		}
		if want := (int64(1<<30) + g) / g; b.Blocks() != want {
			t.Errorf("gran %d: Blocks = %d, want %d", g, b.Blocks(), want)
		}
	}
	if _, err := newBitmap(-1, 4096); err == nil {
		t.Error("negative size accepted")
	}
}

func TestSetClearRanges(t *testing.T) {
	b := mustNew(t, 10*4096+100, 4096) // 11 blocks, last one 100 bytes
	if got := b.Set(4095, 2); got != 2 {
		t.Fatalf("Set straddling: %d new bits, want 2", got)
	}
	if !b.TestBlock(0) || !b.TestBlock(1) || b.TestBlock(2) {
		t.Fatal("wrong bits after Set(4095,2)")
	}
	if got := b.Set(0, 4096); got != 0 {
		t.Fatalf("re-Set: %d new bits", got)
	}
	if got := b.Set(0, 0); got != 0 {
		t.Fatal("Set of empty range set bits")
	}
	if got := b.Set(10*4096, 1<<40); got != 1 {
		t.Fatalf("Set past end: %d, want 1 (clipped)", got)
	}
	if got := b.DirtyBytes(); got != 2*4096+100 {
		t.Fatalf("DirtyBytes = %d, want %d", got, 2*4096+100)
	}
	if got := b.Clear(0, 8192); got != 2 {
		t.Fatalf("Clear: %d", got)
	}
	if b.Count() != 1 {
		t.Fatalf("Count = %d", b.Count())
	}
	b.SetAll()
	if b.Count() != 11 || b.DirtyBytes() != b.Size() {
		t.Fatalf("SetAll: count %d dirty %d", b.Count(), b.DirtyBytes())
	}
	b.ClearAll()
	if b.Count() != 0 || b.DirtyBytes() != 0 {
		t.Fatal("ClearAll left bits")
	}
	if _, ok := b.NextSet(0); ok {
		t.Fatal("NextSet on empty bitmap")
	}
}

func TestNextSetNextClear(t *testing.T) {
	b := mustNew(t, 1<<30, 4096) // 2^18 blocks
	for _, i := range []int64{5, 63, 64, 1000, 1 << 17, 1<<18 - 1} {
		b.SetBlock(i)
	}
	var got []int64
	for i, ok := b.NextSet(0); ok; i, ok = b.NextSet(i + 1) {
		got = append(got, i)
	}
	want := []int64{5, 63, 64, 1000, 1 << 17, 1<<18 - 1}
	if len(got) != len(want) {
		t.Fatalf("NextSet walk = %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("NextSet walk = %v, want %v", got, want)
		}
	}
	b.SetAll()
	b.ClearBlock(70)
	if i, ok := b.NextClear(0); !ok || i != 70 {
		t.Fatalf("NextClear = %d %v", i, ok)
	}
	if _, ok := b.NextClear(71); ok {
		t.Fatal("NextClear found a bit past the end")
	}
}

// TestAgainstMap runs random operations on a Bitmap and a plain map and
// compares them after each.
func TestAgainstMap(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		gran := int64(512) << r.IntN(5)
		size := r.Int64N(300*gran) + 1
		b := mustNew(t, size, gran)
		m := map[int64]bool{}
		nb := (size + gran - 1) / gran
		span := func() (int64, int64) {
			off := r.Int64N(size+gran) - gran/2
			n := r.Int64N(70 * gran)
			return off, n
		}
		touched := func(off, n int64) []int64 {
			var out []int64
			if n <= 0 {
				return nil
			}
			for i := int64(0); i < nb; i++ {
				lo, hi := i*gran, min((i+1)*gran, size)
				if lo < off+n && off < hi {
					out = append(out, i)
				}
			}
			return out
		}
		for op := 0; op < 400; op++ {
			switch r.IntN(8) {
			case 0, 1:
				off, n := span()
				var want int64
				for _, i := range touched(off, n) {
					if !m[i] {
						want++
						m[i] = true
					}
				}
				if got := b.Set(off, n); got != want {
					t.Fatalf("seed %d op %d: Set(%d,%d) = %d, want %d", seed, op, off, n, got, want)
				}
			case 2, 3:
				off, n := span()
				var want int64
				for _, i := range touched(off, n) {
					if m[i] {
						want++
						delete(m, i)
					}
				}
				if got := b.Clear(off, n); got != want {
					t.Fatalf("seed %d op %d: Clear(%d,%d) = %d, want %d", seed, op, off, n, got, want)
				}
			case 4:
				i := r.Int64N(nb)
				b.SetBlock(i)
				m[i] = true
			case 5:
				i := r.Int64N(nb)
				b.ClearBlock(i)
				delete(m, i)
			case 6:
				o := mustNew(t, size, gran)
				for k := 0; k < 5; k++ {
					i := r.Int64N(nb)
					o.SetBlock(i)
					m[i] = true
				}
				if err := b.Or(o); err != nil {
					t.Fatal(err)
				}
			case 7:
				p, _ := b.MarshalBinary()
				c := mustNew(t, size, gran)
				if err := c.UnmarshalBinary(p); err != nil {
					t.Fatal(err)
				}
				b = c
			}
			if b.Count() != int64(len(m)) {
				t.Fatalf("seed %d op %d: Count = %d, want %d", seed, op, b.Count(), len(m))
			}
			var dirty int64
			for i := range m {
				dirty += min((i+1)*gran, size) - i*gran
			}
			if b.DirtyBytes() != dirty {
				t.Fatalf("seed %d op %d: DirtyBytes = %d, want %d", seed, op, b.DirtyBytes(), dirty)
			}
			from := r.Int64N(nb)
			want, wok := int64(-1), false
			for i := from; i < nb; i++ {
				if m[i] {
					want, wok = i, true
					break
				}
			}
			if got, ok := b.NextSet(from); ok != wok || (ok && got != want) {
				t.Fatalf("seed %d op %d: NextSet(%d) = %d %v, want %d %v", seed, op, from, got, ok, want, wok)
			}
		}
		for i := int64(-1); i <= nb; i++ {
			if b.TestBlock(i) != m[i] {
				t.Fatalf("seed %d: TestBlock(%d) = %v", seed, i, b.TestBlock(i))
			}
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	b := mustNew(t, 100*4096+1, 4096)
	b.Set(0, 1)
	b.Set(64*4096, 1)
	b.Set(100*4096, 1)
	p, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 16 || p[0] != 1 || p[8] != 1 || p[12] != 0x10 {
		t.Fatalf("encoding = %x", p)
	}
	c := mustNew(t, 100*4096+1, 4096)
	if err := c.UnmarshalBinary(p); err != nil {
		t.Fatal(err)
	}
	if !c.Equal(b) || c.Count() != 3 {
		t.Fatal("round trip differs")
	}
	q := bytes.Clone(p)
	q[15] = 0x80 // past the last block
	if err := c.UnmarshalBinary(q); err == nil {
		t.Fatal("bits past the end accepted")
	}
	if err := c.UnmarshalBinary(p[:8]); !errors.Is(err, errGeometry) {
		t.Fatalf("short encoding: %v", err)
	}
	d := mustNew(t, 100*4096+1, 8192)
	if err := d.Or(b); !errors.Is(err, errGeometry) {
		t.Fatalf("Or with other geometry: %v", err)
	}
	e := b.Clone()
	e.SetBlock(7)
	if b.TestBlock(7) {
		t.Fatal("Clone shares words")
	}
}

func TestDirtyPages(t *testing.T) {
	b := mustNew(t, 1<<32, 4096) // 2^20 bits, 16384 words, 32 pages
	if _, ok := b.nextDirtyPage(0); ok {
		t.Fatal("fresh bitmap has changed pages")
	}
	b.SetBlock(pageWords*64*3 + 5) // page 3
	b.Set(int64(pageWords*64*31)*4096, 4096)
	var got []int64
	buf := make([]byte, pageBytes)
	for p, ok := b.nextDirtyPage(0); ok; p, ok = b.nextDirtyPage(p + 1) {
		got = append(got, p)
		b.takePage(p, buf, true)
	}
	if len(got) != 2 || got[0] != 3 || got[1] != 31 {
		t.Fatalf("changed pages = %v", got)
	}
	if _, ok := b.nextDirtyPage(0); ok {
		t.Fatal("pages still changed after take")
	}
	b.ClearBlock(pageWords*64*3 + 5)
	if p, ok := b.nextDirtyPage(0); !ok || p != 3 {
		t.Fatal("Clear did not mark the page")
	}
}

func TestConcurrent(t *testing.T) {
	b := mustNew(t, 1<<26, 4096)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; i < 2000; i++ {
				off := r.Int64N(1 << 26)
				b.Set(off, 8192)
				b.NextSet(off)
				b.Clear(off, 4096)
				b.Count()
			}
		}()
	}
	wg.Wait()
	var n int64
	for i, ok := b.NextSet(0); ok; i, ok = b.NextSet(i + 1) {
		n++
	}
	if n != b.Count() {
		t.Fatalf("counter %d, bits %d", b.Count(), n)
	}
}

func BenchmarkSet(b *testing.B) {
	bm := mustNew(b, 1<<40, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	offs := make([]int64, 1024)
	for i := range offs {
		offs[i] = r.Int64N(1 << 40)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bm.Set(offs[i&1023], 64<<10)
	}
}

func BenchmarkNextSet(b *testing.B) {
	bm := mustNew(b, 1<<40, 4096)
	// One bit per 64 Ki blocks: NextSet skips 1024 zero words per call.
	for i := int64(0); i < bm.Blocks(); i += 1 << 16 {
		bm.SetBlock(i)
	}
	b.ResetTimer()
	var from int64
	for i := 0; i < b.N; i++ {
		j, ok := bm.NextSet(from)
		if !ok {
			j = -1
		}
		from = j + 1
	}
}

func BenchmarkNextSetDense(b *testing.B) {
	bm := mustNew(b, 1<<34, 4096)
	bm.SetAll()
	b.ResetTimer()
	var from int64
	for i := 0; i < b.N; i++ {
		j, ok := bm.NextSet(from)
		if !ok {
			j = -1
		}
		from = j + 1
	}
}
