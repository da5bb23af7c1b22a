package snapstore

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// patternRead is a live device that costs nothing but the copy: the store's
// own cost is what the benchmarks measure.
func patternRead(p []byte, off int64) error {
	for i := range p {
		p[i] = byte(off + int64(i))
	}
	return nil
}

func benchStore(b *testing.B, size, capacity int64, version ...uint32) *Store {
	o := Options{DeviceSize: size, Capacity: capacity}
	if len(version) > 0 {
		o.version = version[0]
	}
	s, err := Open(filepath.Join(b.TempDir(), "s"), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkPreserveFast is the common path: a 4 KiB write with no
// snapshot, or into a chunk copied since the newest snapshot. No I/O.
func BenchmarkPreserveFast(b *testing.B) {
	const size = 1 << 30
	for _, c := range []struct {
		name string
		snap bool
	}{{"no-snapshot", false}, {"preserved", true}} {
		b.Run(c.name, func(b *testing.B) {
			s := benchStore(b, size, 64<<10)
			if c.snap {
				s.Create("a", time.Now())
				for x := range s.fast { // as if every chunk were copied
					s.fast[x].Store(^uint64(0))
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				off := int64(i*7919%(size/4096)) * 4096
				if err := s.Preserve(ctx, off, 4096, patternRead); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"-parallel", func(b *testing.B) {
			s := benchStore(b, size, 64<<10)
			if c.snap {
				s.Create("a", time.Now())
				for x := range s.fast {
					s.fast[x].Store(^uint64(0))
				}
			}
			var seq atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := seq.Add(1) * 1000003
				for pb.Next() {
					i++
					off := (i * 7919 % (size / 4096)) * 4096
					if err := s.Preserve(ctx, off, 4096, patternRead); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkPreserveCopy is the first 4 KiB write into a chunk after a
// snapshot: read 64 KiB live, write it to the store, and one fdatasync
// (two in formatV1: data, then descriptor) on this machine's disk. The
// parallel variant shows what group commit makes of concurrent first
// writes.
func BenchmarkPreserveCopy(b *testing.B) {
	for _, v := range []uint32{FormatVersion, formatV1} {
		b.Run(fmt.Sprintf("v%d", v), func(b *testing.B) { benchPreserveCopy(b, v) })
	}
}

func benchPreserveCopy(b *testing.B, version uint32) {
	const size, capacity = 1 << 30, 512 << 20 // fallocated in the test's temporary directory
	chunks := int64(capacity / DefaultChunkSize)
	next := func(s *Store, ctr *atomic.Int64, b *testing.B) int64 {
		for {
			x := ctr.Add(1) - 1
			if x < chunks {
				return x
			}
			b.Fatal("benchmark ran out of chunks")
		}
	}
	serial := func(create func(s *Store) func(string, time.Time) error) func(b *testing.B) {
		return func(b *testing.B) {
			s := benchStore(b, size, capacity, version)
			create(s)("a", time.Now())
			var ctr atomic.Int64
			base := s.syncs.Load()
			b.ResetTimer()
			for b.Loop() {
				if ctr.Load() == chunks {
					b.StopTimer()
					s.Delete("a")
					create(s)("a", time.Now())
					ctr.Store(0)
					b.StartTimer()
				}
				x := next(s, &ctr, b)
				if err := s.Preserve(ctx, x*DefaultChunkSize, 4096, patternRead); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(s.syncs.Load()-base)/float64(b.N), "syncs/op")
		}
	}
	b.Run("serial", serial(func(s *Store) func(string, time.Time) error { return s.Create }))
	// A lazy snapshot's copy: no sync, the CPU of the copy itself (read
	// 64 KiB, hash it, write it to the page cache): 43-50 µs here, of
	// which patternRead's fill ~22 µs and the store's 64 KiB write ~21 µs.
	b.Run("serial-lazy", serial(func(s *Store) func(string, time.Time) error { return s.CreateLazy }))
	b.Run("parallel-16", func(b *testing.B) {
		s := benchStore(b, size, capacity, version)
		s.Create("a", time.Now())
		var ctr atomic.Int64
		base := s.syncs.Load()
		b.SetParallelism(8) // ×GOMAXPROCS goroutines
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				x := ctr.Add(1) - 1
				if x >= chunks {
					b.Error("benchmark ran out of chunks; lower -benchtime")
					return
				}
				if err := s.Preserve(ctx, x*DefaultChunkSize, 4096, patternRead); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(s.syncs.Load()-base)/float64(b.N), "syncs/op")
	})
}
