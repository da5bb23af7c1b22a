package snapstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var ctx = context.Background()

// fileLive is a live device on a real file.
type fileLive struct{ f *os.File }

func newFileLive(t testing.TB, size int64, r *rand.Rand) *fileLive {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "live.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteAt(randBytes(r, size), 0); err != nil {
		t.Fatal(err)
	}
	return &fileLive{f: f}
}

func (l *fileLive) read(p []byte, off int64) error {
	_, err := l.f.ReadAt(p, off)
	return err
}

func (l *fileLive) write(t testing.TB, p []byte, off int64) {
	if _, err := l.f.WriteAt(p, off); err != nil {
		t.Error(err)
	}
}

// image reads the whole device. Safe from any goroutine (t.Error).
func (l *fileLive) image(t testing.TB, size int64) []byte {
	p := make([]byte, size)
	if err := l.read(p, 0); err != nil {
		t.Error(err)
	}
	return p
}

// writeLive preserves then writes, as the caller of the store does.
func writeLive(t testing.TB, s *Store, l *fileLive, p []byte, off int64) {
	t.Helper()
	if err := s.Preserve(ctx, off, int64(len(p)), l.read); err != nil {
		t.Fatalf("preserve %d+%d: %v", off, len(p), err)
	}
	l.write(t, p, off)
}

func readSnap(t testing.TB, s *Store, name string, l *fileLive, size int64) []byte {
	t.Helper()
	p := make([]byte, size)
	if err := s.ReadAt(ctx, name, p, 0, l.read); err != nil {
		t.Fatalf("read %q: %v", name, err)
	}
	return p
}

func mustOpen(t testing.TB, path string, opt Options) *Store {
	t.Helper()
	s, err := Open(path, opt)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return s
}

func extents(t testing.TB, s *Store, from, to string) []Extent {
	t.Helper()
	e, err := s.Changed(from, to)
	if err != nil {
		t.Fatalf("changed %q..%q: %v", from, to, err)
	}
	return e
}

// TestRestart persists snapshots, their images, reasons and changed blocks
// across a clean close, on a real file, with the default geometry.
func TestRestart(t *testing.T) {
	const size = 4 << 20
	r := rand.New(rand.NewPCG(1, 1))
	path := filepath.Join(t.TempDir(), "r0.snap")
	live := newFileLive(t, size, r)
	opt := Options{DeviceSize: size, Capacity: 1 << 20}
	s := mustOpen(t, path, opt)
	if st := s.Stats(); st.ChunkSize != DefaultChunkSize || st.BlockSize != DefaultBlockSize || st.Capacity != 1<<20 {
		t.Fatalf("defaults: %+v", st)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 123, time.UTC)
	if err := s.Create("daily.1", t0); err != nil {
		t.Fatal(err)
	}
	img1 := live.image(t, size)
	writeLive(t, s, live, randBytes(r, 4096), 8192)       // block 2, chunk 0
	writeLive(t, s, live, randBytes(r, 100), 3<<20+70000) // block 785 (chunk 49)
	if err := s.Create("daily.2", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	img2 := live.image(t, size)
	writeLive(t, s, live, randBytes(r, 8192), 65536) // blocks 16-17, chunk 1
	want12 := []Extent{{8192, 4096}, {3<<20 + 69632, 4096}}
	want2 := []Extent{{65536, 8192}}
	want1 := []Extent{{8192, 4096}, {65536, 8192}, {3<<20 + 69632, 4096}}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Create("late", t0); !errors.Is(err, ErrClosed) {
		t.Fatalf("create after close: %v", err)
	}

	s = mustOpen(t, path, Options{DeviceSize: size, Capacity: 1 << 20})
	defer s.Close()
	got := s.List()
	if len(got) != 2 || got[0].Name != "daily.1" || got[1].Name != "daily.2" ||
		!got[0].Created.Equal(t0) || !got[1].Created.Equal(t0.Add(time.Hour)) || !got[0].Valid || !got[1].Valid {
		t.Fatalf("list after restart: %+v", got)
	}
	// daily.1 has copies of chunks 0, 49 and 1 (the last shared with
	// daily.2); daily.2 only chunk 1.
	if got[0].Bytes != 3*65536 || got[0].Exclusive != 2*65536 || got[1].Bytes != 65536 || got[1].Exclusive != 0 {
		t.Fatalf("bytes held: %+v", got)
	}
	if st := s.Stats(); st.Used != 3*65536 {
		t.Fatalf("used %d", st.Used)
	}
	if in, err := s.Get("daily.1"); err != nil || in != got[0] {
		t.Fatalf("get daily.1: %+v %v, list says %+v", in, err, got[0])
	}
	if _, err := s.Get("daily.3"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	if !bytes.Equal(readSnap(t, s, "daily.1", live, size), img1) || !bytes.Equal(readSnap(t, s, "daily.2", live, size), img2) {
		t.Fatal("snapshot images differ after restart")
	}
	for _, c := range []struct {
		from, to string
		want     []Extent
	}{{"daily.1", "daily.2", want12}, {"daily.2", "", want2}, {"daily.1", "", want1}, {"daily.2", "daily.2", nil}} {
		if got := extents(t, s, c.from, c.to); !slices.Equal(got, c.want) {
			t.Errorf("changed %q..%q = %v, want %v", c.from, c.to, got, c.want)
		}
	}
	if _, err := s.Changed("daily.2", "daily.1"); err == nil || !strings.Contains(err.Error(), "older") {
		t.Errorf("changed newer..older: %v", err)
	}
	// Deleting daily.2 folds its changes into daily.1 and frees nothing
	// daily.1 needs.
	if err := s.Delete("daily.2"); err != nil {
		t.Fatal(err)
	}
	if got := extents(t, s, "daily.1", ""); !slices.Equal(got, want1) {
		t.Errorf("changed since daily.1 after deleting daily.2 = %v, want %v", got, want1)
	}
	if !bytes.Equal(readSnap(t, s, "daily.1", live, size), img1) {
		t.Fatal("daily.1 differs after deleting daily.2")
	}
}

// TestUncleanRestart: without Close, the blocks written since the newest
// snapshot come back as whole chunks; older epochs stay exact; images and
// copies are intact.
func TestUncleanRestart(t *testing.T) {
	const size = 1 << 20
	r := rand.New(rand.NewPCG(2, 2))
	path := filepath.Join(t.TempDir(), "r0.snap")
	live := newFileLive(t, size, r)
	opt := Options{DeviceSize: size, Capacity: 512 << 10}
	s := mustOpen(t, path, opt)
	s.Create("a", time.Now())
	writeLive(t, s, live, randBytes(r, 4096), 4096) // block 1 of chunk 0
	s.Create("b", time.Now())
	img := live.image(t, size)
	writeLive(t, s, live, randBytes(r, 512), 70000) // block 17 of chunk 1
	s.f.Close()                                     // the process dies: no Close

	s = mustOpen(t, path, opt)
	defer s.Close()
	if got, want := extents(t, s, "a", "b"), []Extent{{4096, 4096}}; !slices.Equal(got, want) {
		t.Errorf("sealed epoch after crash: %v, want %v", got, want)
	}
	if got, want := extents(t, s, "b", ""), []Extent{{65536, 65536}}; !slices.Equal(got, want) {
		t.Errorf("current epoch after crash: %v, want the whole chunk %v", got, want)
	}
	if !bytes.Equal(readSnap(t, s, "b", live, size), img) {
		t.Fatal("b differs after an unclean restart")
	}
	// The record is exact again from here on.
	s.Create("c", time.Now())
	writeLive(t, s, live, randBytes(r, 512), 70000)
	if got, want := extents(t, s, "c", ""), []Extent{{69632, 4096}}; !slices.Equal(got, want) {
		t.Errorf("after a new snapshot: %v, want %v", got, want)
	}
}

// TestFullStore fills a store of four chunks and checks exactly which
// snapshots are invalidated, that the space comes back, that the writes go
// on, and what the caller is told.
func TestFullStore(t *testing.T) {
	const size, chunk = 16 * 4096, 4096
	r := rand.New(rand.NewPCG(3, 3))
	live := newFileLive(t, size, r)
	var told []Info
	opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 512, Capacity: 4*chunk + 100,
		OnInvalidate: func(in Info) { told = append(told, in) }}
	s := mustOpen(t, filepath.Join(t.TempDir(), "s"), opt)
	defer s.Close()
	if st := s.Stats(); st.Capacity != 4*chunk {
		t.Fatalf("capacity %d, want rounded down to 4 chunks", st.Capacity)
	}
	s.Create("a", time.Now())
	imgA := live.image(t, size)
	for x := range int64(4) {
		writeLive(t, s, live, randBytes(r, 512), x*chunk)
	}
	if st := s.Stats(); st.Used != 4*chunk {
		t.Fatalf("used %d after four copies", st.Used)
	}
	s.Create("b", time.Now())
	// Chunk 0 again: b needs a copy, a has one. Only b goes.
	writeLive(t, s, live, randBytes(r, 512), 0)
	if len(told) != 1 || told[0].Name != "b" || told[0].Valid || !strings.Contains(told[0].Reason, "full") ||
		!strings.Contains(told[0].Reason, "offset 0") {
		t.Fatalf("told %+v, want b invalidated for a full store at offset 0", told)
	}
	var ie *InvalidError
	if err := s.ReadAt(ctx, "b", make([]byte, 10), 0, live.read); !errors.As(err, &ie) || !errors.Is(err, ErrInvalid) ||
		!strings.Contains(err.Error(), "delete it") {
		t.Fatalf("read invalid b: %v", err)
	}
	if _, err := s.Changed("b", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("changed since invalid b: %v", err)
	}
	if !bytes.Equal(readSnap(t, s, "a", live, size), imgA) {
		t.Fatal("a differs after b was invalidated")
	}
	// Chunk 5: a needs a copy and there is no room: a goes too, and with
	// it every copy.
	writeLive(t, s, live, randBytes(r, 512), 5*chunk)
	if len(told) != 2 || told[1].Name != "a" {
		t.Fatalf("told %+v, want a invalidated next", told)
	}
	if st := s.Stats(); st.Used != 0 {
		t.Fatalf("used %d with no valid snapshot", st.Used)
	}
	list := s.List()
	if len(list) != 2 || list[0].Valid || list[1].Valid || list[0].Invalidated.IsZero() {
		t.Fatalf("list %+v", list)
	}
	// The names stay taken until deleted; then the store works again.
	if err := s.Create("a", time.Now()); !errors.Is(err, ErrExists) {
		t.Fatalf("create over invalid a: %v", err)
	}
	s.Delete("a")
	s.Delete("b")
	s.Create("c", time.Now())
	imgC := live.image(t, size)
	writeLive(t, s, live, randBytes(r, 3*chunk), chunk)
	if !bytes.Equal(readSnap(t, s, "c", live, size), imgC) {
		t.Fatal("c differs")
	}
}

// TestInvalidMiddle: a full store invalidates the newest snapshots; the
// changed blocks of those fold into the one before, so "changed since" an
// older snapshot stays whole.
func TestInvalidMiddle(t *testing.T) {
	const size, chunk = 16 * 4096, 4096
	r := rand.New(rand.NewPCG(4, 4))
	live := newFileLive(t, size, r)
	s := mustOpen(t, filepath.Join(t.TempDir(), "s"), Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 4096, Capacity: 2 * chunk})
	defer s.Close()
	s.Create("a", time.Now())
	imgA := live.image(t, size)
	writeLive(t, s, live, randBytes(r, 10), 0) // copy of chunk 0 for a
	s.Create("b", time.Now())
	writeLive(t, s, live, randBytes(r, 10), chunk) // chunk 1 for a and b: full
	s.Create("c", time.Now())
	writeLive(t, s, live, randBytes(r, 10), 0) // b and c need a copy of chunk 0; a has one
	l := s.List()
	if !l[0].Valid || l[1].Valid || l[2].Valid {
		t.Fatalf("list %+v: want a valid, b and c invalid", l)
	}
	// a's record now holds b's epoch (block 1) and c's (block 0).
	if got, want := extents(t, s, "a", ""), []Extent{{0, 2 * chunk}}; !slices.Equal(got, want) {
		t.Fatalf("changed since a: %v, want %v", got, want)
	}
	if !bytes.Equal(readSnap(t, s, "a", live, size), imgA) {
		t.Fatal("a differs")
	}
	// The copy of chunk 1 (shared by a and b) stays; a's is exclusive now.
	if l[0].Bytes != 2*chunk || l[0].Exclusive != 2*chunk || s.Stats().Used != 2*chunk {
		t.Fatalf("space after invalidating b and c: %+v %+v", l[0], s.Stats())
	}
}

func TestNames(t *testing.T) {
	s := mustOpen(t, filepath.Join(t.TempDir(), "s"), Options{DeviceSize: 1 << 20, Capacity: 1 << 20})
	defer s.Close()
	for _, c := range []struct {
		name string
		ok   bool
		msg  string
	}{
		{"daily-2026.12.01_a", true, ""},
		{strings.Repeat("x", 64), true, ""},
		{"", false, "empty"},
		{strings.Repeat("x", 65), false, "at most 64"},
		{"a@b", false, `'@'`},
		{"a/b", false, `'/'`},
		{"a b", false, "byte 0x20"},
		{"a\x00", false, "byte 0x00"},
		{"é", false, "byte 0xc3"},
	} {
		err := s.Create(c.name, time.Now())
		if c.ok != (err == nil) || !c.ok && (!errors.Is(err, ErrBadName) || !strings.Contains(err.Error(), c.msg)) {
			t.Errorf("create %q: %v", c.name, err)
		}
	}
	if err := s.Create("daily-2026.12.01_a", time.Now()); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate: %v", err)
	}
	if err := s.Delete("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete unknown: %v", err)
	}
	if err := s.ReadAt(ctx, "nope", make([]byte, 1), 0, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("read unknown: %v", err)
	}
	if _, err := s.Changed("nope", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("changed unknown: %v", err)
	}
}

// TestTooMany fills the table, then frees an entry.
func TestTooMany(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	opt := Options{DeviceSize: 1 << 20, BlockSize: 4096, Capacity: 1 << 20}
	s := mustOpen(t, path, opt)
	for i := range MaxSnapshots {
		if err := s.Create(string(rune('a'+i/26))+string(rune('a'+i%26)), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Create("one-more", time.Now())
	if !errors.Is(err, ErrTooMany) || !strings.Contains(err.Error(), "delete one") {
		t.Fatalf("65th snapshot: %v", err)
	}
	s.Delete("ab")
	if err := s.Create("one-more", time.Now()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, path, opt)
	defer s.Close()
	if n := len(s.List()); n != MaxSnapshots {
		t.Fatalf("%d snapshots after reopen", n)
	}
}

func TestRangeAndClosed(t *testing.T) {
	const size = 1<<20 + 512
	s := mustOpen(t, filepath.Join(t.TempDir(), "s"), Options{DeviceSize: size, Capacity: 1 << 20})
	s.Create("a", time.Now())
	live := newFileLive(t, size, rand.New(rand.NewPCG(5, 5)))
	for _, c := range [][2]int64{{-1, 10}, {size - 10, 11}, {size, 1}, {0, -5}, {1 << 62, 1 << 62}} {
		if err := s.Preserve(ctx, c[0], c[1], live.read); !errors.Is(err, ErrRange) {
			t.Errorf("preserve %v: %v", c, err)
		}
		if c[1] >= 0 && c[1] < 1<<20 {
			if err := s.ReadAt(ctx, "a", make([]byte, c[1]), c[0], live.read); !errors.Is(err, ErrRange) {
				t.Errorf("read %v: %v", c, err)
			}
		}
		if err := s.ChangedRange("a", "", c[0], c[1], func(Extent) bool { return true }); !errors.Is(err, ErrRange) {
			t.Errorf("changed %v: %v", c, err)
		}
	}
	// The last, partial chunk and block.
	writeLive(t, s, live, []byte{1, 2, 3}, size-3)
	if got, want := extents(t, s, "a", ""), []Extent{{size - 512, 512}}; !slices.Equal(got, want) {
		t.Errorf("changed at the end: %v, want %v", got, want)
	}
	if err := s.Preserve(ctx, 0, 0, live.read); err != nil {
		t.Errorf("empty preserve: %v", err)
	}
	s.Close()
	if err := s.Preserve(ctx, 0, 1, live.read); !errors.Is(err, ErrClosed) {
		t.Errorf("preserve after close: %v", err)
	}
	if err := s.ReadAt(ctx, "a", make([]byte, 1), 0, live.read); !errors.Is(err, ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// TestChangedRange cuts extents at the range and stops when told.
func TestChangedRange(t *testing.T) {
	// 512-byte blocks over 300 MiB: more bits than one merge window, and
	// an extent that spans two windows.
	const size, block = 300 << 20, 512
	const win = changedWindow * 64 * block
	r := rand.New(rand.NewPCG(6, 6))
	lf, err := os.Create(filepath.Join(t.TempDir(), "live"))
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	lf.Truncate(size)
	live := &fileLive{f: lf}
	s := mustOpen(t, filepath.Join(t.TempDir(), "s"), Options{DeviceSize: size, Capacity: 1 << 20, BlockSize: block})
	defer s.Close()
	s.Create("a", time.Now())
	writeLive(t, s, live, randBytes(r, 3*block), block)     // blocks 1-3
	writeLive(t, s, live, randBytes(r, block), 10*block)    // block 10
	writeLive(t, s, live, randBytes(r, 2*block), win-block) // across the window boundary
	writeLive(t, s, live, randBytes(r, 1), size-1)          // the last block
	var got []Extent
	s.ChangedRange("a", "", 700, size-700, func(e Extent) bool { got = append(got, e); return true })
	if want := []Extent{{700, 4*block - 700}, {10 * block, block}, {win - block, 2 * block}, {size - block, block}}; !slices.Equal(got, want) {
		t.Errorf("range: %v, want %v", got, want)
	}
	got = nil
	s.ChangedRange("a", "", win, 100, func(e Extent) bool { got = append(got, e); return true })
	if want := []Extent{{win, 100}}; !slices.Equal(got, want) {
		t.Errorf("inside one block: %v, want %v", got, want)
	}
	got = nil
	s.ChangedRange("a", "", 0, size, func(e Extent) bool { got = append(got, e); return false })
	if len(got) != 1 {
		t.Errorf("stop after one: %v", got)
	}
}

// TestOpenErrors: what Open refuses, and that it says why.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	opt := Options{DeviceSize: 1 << 20, Capacity: 1 << 20}
	s := mustOpen(t, path, opt)
	if _, err := Open(path, opt); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open: %v", err)
	}
	s.Close()
	for _, c := range []struct {
		opt   Options
		field string
	}{
		{Options{DeviceSize: 2 << 20, Capacity: 1 << 20}, "device size"},
		{Options{DeviceSize: 1 << 20, Capacity: 1 << 20, BlockSize: 512}, "block size"},
		{Options{DeviceSize: 1 << 20, Capacity: 1 << 20, ChunkSize: 1 << 20}, "chunk size"},
	} {
		var me *MismatchError
		s, err := Open(path, c.opt)
		if err == nil {
			s.Close()
		}
		if !errors.As(err, &me) || me.Field != c.field || !errors.Is(err, ErrMismatch) {
			t.Errorf("open with another %s: %v", c.field, err)
		}
	}
	for _, c := range []struct {
		opt Options
		msg string
	}{
		{Options{Capacity: 1 << 20}, "DeviceSize"},
		{Options{DeviceSize: 1 << 20}, "Capacity"},
		{Options{DeviceSize: 1 << 20, Capacity: 1 << 20, BlockSize: 3000}, "block size 3000"},
		{Options{DeviceSize: 1 << 20, Capacity: 1 << 20, ChunkSize: 2048}, "chunk size 2048"},
		{Options{DeviceSize: 1 << 20, Capacity: 1 << 20, ChunkSize: 4096, BlockSize: 8192}, "smaller than the block size"},
		{Options{DeviceSize: 1 << 20, Capacity: 1000}, "less than one chunk"},
	} {
		if _, err := Open(filepath.Join(dir, "new"), c.opt); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("open with %+v: %v, want %q", c.opt, err, c.msg)
		}
	}
	// Someone else's file.
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte("#!/bin/sh\necho not a store\n"), 0o600)
	if _, err := Open(other, opt); !errors.Is(err, ErrNotStore) {
		t.Errorf("open a script: %v", err)
	}
	if b, _ := os.ReadFile(other); !bytes.HasPrefix(b, []byte("#!/bin/sh")) {
		t.Error("the script was overwritten")
	}
	// Both header slots damaged.
	raw, _ := os.ReadFile(path)
	bad := slices.Clone(raw)
	bad[100]++
	bad[hdrSlotBytes+100]++
	os.WriteFile(path, bad, 0o600)
	if _, err := Open(path, opt); !errors.Is(err, ErrCorrupt) {
		t.Errorf("open with both headers damaged: %v", err)
	}
	// One damaged: the other serves.
	bad[hdrSlotBytes+100]--
	os.WriteFile(path, bad, 0o600)
	if s, err := Open(path, opt); err != nil {
		t.Errorf("open with one header damaged: %v", err)
	} else {
		s.Close()
	}
	// Truncated.
	os.WriteFile(path, raw[:headerBytes+100], 0o600)
	if _, err := Open(path, opt); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "shorter") {
		t.Errorf("open a truncated store: %v", err)
	}
	// A directory.
	if _, err := Open(dir, opt); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("open a directory: %v", err)
	}
}

// TestDamagedDescriptor: a descriptor that fails its checksum after a clean
// close is damage: every snapshot is invalidated, never read wrong.
func TestDamagedDescriptor(t *testing.T) {
	const size = 1 << 20
	r := rand.New(rand.NewPCG(7, 7))
	path := filepath.Join(t.TempDir(), "s")
	live := newFileLive(t, size, r)
	var told []Info
	opt := Options{DeviceSize: size, Capacity: 1 << 20, OnInvalidate: func(in Info) { told = append(told, in) }}
	s := mustOpen(t, path, opt)
	s.Create("a", time.Now())
	writeLive(t, s, live, randBytes(r, 10), 0)
	lay := s.lay
	s.Close()
	raw, _ := os.ReadFile(path)
	raw[lay.descOff(0)+3] ^= 0x40
	os.WriteFile(path, raw, 0o600)
	s = mustOpen(t, path, opt)
	l := s.List()
	if len(told) != 1 || l[0].Valid || !strings.Contains(l[0].Reason, "checksums") {
		t.Fatalf("after damage: list %+v told %+v", l, told)
	}
	s.Close()
	// Cleared: the next open finds nothing wrong.
	told = nil
	s = mustOpen(t, path, opt)
	defer s.Close()
	if len(told) != 0 {
		t.Fatalf("damage reported again: %+v", told)
	}
}

// TestCapacityChange grows a store, refuses to shrink it below what it
// holds, and shrinks it when the tail is free.
func TestCapacityChange(t *testing.T) {
	const size, chunk = 64 * 4096, 4096
	r := rand.New(rand.NewPCG(8, 8))
	path := filepath.Join(t.TempDir(), "s")
	live := newFileLive(t, size, r)
	opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 4096, Capacity: 2 * chunk}
	s := mustOpen(t, path, opt)
	s.Create("a", time.Now())
	img := live.image(t, size)
	writeLive(t, s, live, randBytes(r, 2*chunk), 0)
	s.Close()
	st0, _ := os.Stat(path)

	opt.Capacity = 200 * chunk // two groups
	s = mustOpen(t, path, opt)
	writeLive(t, s, live, randBytes(r, 20*chunk), 10*chunk)
	if l := s.List(); !l[0].Valid || l[0].Bytes != 22*chunk {
		t.Fatalf("after growing: %+v", l)
	}
	s.Close()
	st1, _ := os.Stat(path)
	if st1.Size() <= st0.Size() {
		t.Fatalf("file did not grow: %d -> %d", st0.Size(), st1.Size())
	}

	opt.Capacity = 4 * chunk
	if _, err := Open(path, opt); err == nil || !strings.Contains(err.Error(), "cannot shrink") {
		t.Fatalf("shrink below use: %v", err)
	}
	opt.Capacity = 200 * chunk
	s = mustOpen(t, path, opt)
	if !bytes.Equal(readSnap(t, s, "a", live, size), img) {
		t.Fatal("a differs after a refused shrink")
	}
	s.Delete("a")
	s.Close()
	opt.Capacity = 4 * chunk
	s = mustOpen(t, path, opt)
	s.Close()
	st2, _ := os.Stat(path)
	if st2.Size() >= st1.Size() {
		t.Fatalf("file did not shrink: %d -> %d", st1.Size(), st2.Size())
	}
	s = mustOpen(t, path, Options{DeviceSize: size, Capacity: 4 * chunk})
	defer s.Close()
	if st := s.Stats(); st.Capacity != 4*chunk || st.ChunkSize != chunk {
		t.Fatalf("after shrinking: %+v", st)
	}
}

// TestGroupCommit holds the first sync until many writers have queued
// their copies: all of them commit in a few shared syncs, not two each.
func TestGroupCommit(t *testing.T) {
	t.Run("v2", func(t *testing.T) { testGroupCommit(t, FormatVersion, 2) })
	t.Run("v1", func(t *testing.T) { testGroupCommit(t, formatV1, 4) })
}

// testGroupCommit: one writer's copy is committed first, its sync held
// until the other writers queued theirs; then one round (formatV2) or
// two (formatV1) commit them. The others start only once that sync is
// held, so its round holds that one copy alone: started together, a few
// could join it, and the rest would never reach writers-1.
func testGroupCommit(t *testing.T, version uint32, most int64) {
	const writers = 16
	const size, chunk = 64 * 4096, 4096
	f := newCrashFile()
	opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 4096, Capacity: 64 * chunk, version: version}
	s := openMem(t, f, opt)
	defer s.Close()
	live := newLive(size, rand.New(rand.NewPCG(9, 9)))
	s.Create("a", time.Now())
	base := s.syncs.Load()
	held := make(chan struct{})
	var once sync.Once
	f.gate = func() {
		once.Do(func() {
			close(held)
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				s.c.mu.Lock()
				n := len(s.c.data)
				s.c.mu.Unlock()
				if n == writers-1 {
					return
				}
				time.Sleep(time.Millisecond)
			}
			t.Error("the other writers never queued their copies")
		})
	}
	var wg sync.WaitGroup
	preserve := func(w int) {
		wg.Go(func() {
			if err := s.Preserve(ctx, int64(w)*chunk, 512, live.read); err != nil {
				t.Error(err)
			}
		})
	}
	preserve(0)
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the first copy's sync never came")
	}
	for w := 1; w < writers; w++ {
		preserve(w)
	}
	wg.Wait()
	syncs := s.syncs.Load() - base
	t.Logf("%d copies committed in %d fdatasyncs", writers, syncs)
	if syncs > most {
		t.Fatalf("%d copies took %d syncs; group commit should need at most %d", writers, syncs, most)
	}
	if st := s.Stats(); st.Used != writers*chunk {
		t.Fatalf("used %d", st.Used)
	}
}

// TestReaderBeforePreserve: a reader that reads a chunk from the live
// device holds off the Preserve of that chunk (and so the write) until it
// has read; a reader after it reads the copy.
func TestReaderBeforePreserve(t *testing.T) {
	const size, chunk = 16 * 4096, 4096
	f := newCrashFile()
	s := openMem(t, f, Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 4096, Capacity: 4 * chunk})
	defer s.Close()
	live := newLive(size, rand.New(rand.NewPCG(10, 10)))
	s.Create("a", time.Now())
	old := live.clone()[:chunk]

	inRead, release := make(chan struct{}), make(chan struct{})
	slowRead := func(p []byte, off int64) error {
		close(inRead)
		<-release
		return live.read(p, off)
	}
	readDone := make(chan []byte)
	go func() {
		p := make([]byte, chunk)
		if err := s.ReadAt(ctx, "a", p, 0, slowRead); err != nil {
			t.Error(err)
		}
		readDone <- p
	}()
	<-inRead
	preserved := make(chan error)
	go func() { preserved <- s.Preserve(ctx, 0, 10, live.read) }()
	select {
	case err := <-preserved:
		close(release)
		<-readDone
		t.Fatalf("Preserve returned (%v) while a reader was reading the chunk from the live device", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if p := <-readDone; !bytes.Equal(p, old) {
		t.Fatal("the reader saw changed data")
	}
	if err := <-preserved; err != nil {
		t.Fatal(err)
	}
	live.write(bytes.Repeat([]byte{0xee}, 10), 0)
	p := make([]byte, chunk)
	if err := s.ReadAt(ctx, "a", p, 0, func([]byte, int64) error {
		return errors.New("read the live device for a copied chunk")
	}); err != nil || !bytes.Equal(p, old) {
		t.Fatalf("read after preserve: %v", err)
	}
}

// TestConcurrent: writers preserve and write a real file while snapshots
// are created (at a barrier, as the caller does), deleted, read and diffed.
// Every read of a snapshot must equal the device as it was at its barrier.
func TestConcurrent(t *testing.T) {
	const size, chunk = 2 << 20, 64 << 10
	// Every copy costs two fdatasyncs on a real disk and every Create
	// three, under the barrier: keep the counts small.
	writers, rounds := 6, 25
	if testing.Short() || raceEnabled {
		rounds = 12
	}
	r := rand.New(rand.NewPCG(11, 11))
	live := newFileLive(t, size, r)
	s := mustOpen(t, filepath.Join(t.TempDir(), "s"), Options{DeviceSize: size, Capacity: 1 << 20})
	defer s.Close()

	var barrier sync.RWMutex // the caller's write barrier
	var imgMu sync.Mutex
	images := make(map[string][]byte)
	stop := make(chan struct{})
	var wg, bg sync.WaitGroup
	var checked sync.Map
	const wantChecked = 5
	readBack := func() int {
		n := 0
		checked.Range(func(any, any) bool { n++; return true })
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for w := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 12))
			// At least rounds writes each, and on until the readers have
			// checked enough snapshots while writes were going on.
			for i := 0; i < rounds || readBack() < wantChecked && time.Now().Before(deadline); i++ {
				off := r.Int64N(size - 1)
				n := 1 + r.Int64N(min(size-off, 3*chunk)-1)
				data := randBytes(r, n)
				barrier.RLock()
				err := s.Preserve(ctx, off, n, live.read)
				if err == nil {
					live.write(t, data, off)
				}
				barrier.RUnlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	bg.Go(func() { // snapshots come and go
		r := rand.New(rand.NewPCG(13, 13))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(3+r.IntN(10)) * time.Millisecond):
			}
			name := "s" + string(rune('a'+i%26)) + string(rune('0'+i/26%10))
			barrier.Lock()
			img := live.image(t, size)
			err := s.Create(name, time.Now())
			barrier.Unlock()
			if errors.Is(err, ErrTooMany) || errors.Is(err, ErrExists) {
				l := s.List()
				victim := l[r.IntN(len(l))].Name
				imgMu.Lock()
				delete(images, victim)
				imgMu.Unlock()
				if err := s.Delete(victim); err != nil {
					t.Error(err)
				}
				continue
			}
			if err != nil {
				t.Error(err)
				return
			}
			imgMu.Lock()
			images[name] = img
			imgMu.Unlock()
		}
	})
	for g := range 3 {
		bg.Go(func() { // readers and diffs
			r := rand.New(rand.NewPCG(uint64(g), 14))
			for {
				select {
				case <-stop:
					return
				default:
				}
				l := s.List()
				if len(l) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				in := l[r.IntN(len(l))]
				imgMu.Lock()
				img := images[in.Name]
				imgMu.Unlock()
				off := r.Int64N(size - 1)
				p := make([]byte, 1+r.Int64N(min(size-off, 2*chunk)-1))
				err := s.ReadAt(ctx, in.Name, p, off, live.read)
				switch {
				case errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid) || img == nil:
				case err != nil:
					t.Error(err)
				case !bytes.Equal(p, img[off:off+int64(len(p))]):
					t.Errorf("snapshot %s at %d+%d differs from the device at its barrier (byte %d)", in.Name, off, len(p), firstDiff(p, img[off:]))
				default:
					checked.Store(in.Name, true)
				}
				if _, err := s.Changed(in.Name, ""); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrInvalid) {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	n := readBack()
	if n < wantChecked {
		t.Fatalf("only %d snapshots were read back in a minute", n)
	}
	// Quiet now: every valid snapshot reads whole.
	for _, in := range s.List() {
		if img := images[in.Name]; in.Valid && img != nil && !bytes.Equal(readSnap(t, s, in.Name, live, size), img) {
			t.Fatalf("snapshot %s differs at the end", in.Name)
		}
	}
	t.Logf("%d snapshots read back concurrently; stats %+v", n, s.Stats())
}

// TestCrashConcurrent: many writers preserve and write (overlapping
// chunks, so copies in flight wait for each other and share commits) when
// the disk goes away at a random operation; after a crash that drops or
// tears what was not synced, every snapshot still called valid reads
// exactly its image.
func TestCrashConcurrent(t *testing.T) {
	const size, chunk = 64 * 4096, 4096
	iters := 200
	if testing.Short() || raceEnabled {
		iters = 30
	}
	for it := range iters {
		r := rand.New(rand.NewPCG(uint64(it), 15))
		f := newCrashFile()
		opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 512, Capacity: 40 * chunk}
		s := openMem(t, f, opt)
		live := newLive(size, r)
		images := make(map[string][]byte)
		for _, name := range []string{"a", "b"} {
			for range 5 {
				off := r.Int64N(size - 8192)
				if err := s.Preserve(ctx, off, 8192, live.read); err != nil {
					t.Fatal(err)
				}
				live.write(randBytes(r, 8192), off)
			}
			images[name] = live.clone()
			if err := s.Create(name, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		f.mu.Lock()
		f.failSync = f.syncs + 1 + r.IntN(12)
		f.mu.Unlock()
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(it), uint64(w)))
				for range 20 {
					// Twelve chunks for eight writers: they collide.
					off := r.Int64N(12*chunk - 2*chunk)
					n := 1 + r.Int64N(2*chunk-1)
					if err := s.Preserve(ctx, off, n, live.read); err != nil {
						return // not issued
					}
					live.write(randBytes(r, n), off)
				}
			})
		}
		wg.Wait()
		img := f.crash(r)
		s2, err := openOn(img, "mem", Options{DeviceSize: size, Capacity: 40 * chunk})
		if err != nil {
			t.Fatalf("iteration %d: open after crash: %v", it, err)
		}
		for _, in := range s2.List() {
			if !in.Valid {
				continue
			}
			p := make([]byte, size)
			if err := s2.ReadAt(ctx, in.Name, p, 0, live.read); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(p, images[in.Name]); i >= 0 {
				t.Fatalf("iteration %d (disk gone at sync %d): snapshot %s differs at byte %d after the crash", it, f.failSync, in.Name, i)
			}
		}
		s2.Close()
	}
}

// NeedsCopy is true exactly where Preserve would copy: never without a
// snapshot, for a chunk the newest snapshot has no copy of, and no more
// once it has one (until the next snapshot); out of range is false.
func TestNeedsCopy(t *testing.T) {
	const size = 4 << 20
	r := rand.New(rand.NewPCG(3, 3))
	live := newFileLive(t, size, r)
	s := mustOpen(t, filepath.Join(t.TempDir(), "r0.snap"), Options{DeviceSize: size, Capacity: 1 << 20})
	defer s.Close()
	if s.NeedsCopy(0, 4096) {
		t.Fatal("a copy needed with no snapshot")
	}
	if err := s.Create("a", time.Now()); err != nil {
		t.Fatal(err)
	}
	if !s.NeedsCopy(8192, 4096) || !s.NeedsCopy(65536-1, 2) {
		t.Fatal("no copy needed for chunks the snapshot has not preserved")
	}
	writeLive(t, s, live, randBytes(r, 4096), 8192) // chunk 0 copied
	if s.NeedsCopy(0, 65536) {
		t.Fatal("a copy needed for a chunk already preserved")
	}
	if !s.NeedsCopy(0, 65537) {
		t.Fatal("no copy needed for a range reaching into chunk 1")
	}
	if s.NeedsCopy(-1, 10) || s.NeedsCopy(size-10, 20) || s.NeedsCopy(0, 0) {
		t.Fatal("a copy needed for an empty or out-of-range change")
	}
	if err := s.Create("b", time.Now()); err != nil {
		t.Fatal(err)
	}
	if !s.NeedsCopy(0, 4096) {
		t.Fatal("no copy needed for the new snapshot's first change of chunk 0")
	}
}
