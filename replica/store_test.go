package replica

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestFileStoreCreateAndRefuse(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.img")
	s, err := OpenFileStore(p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Size() != 1<<20 {
		t.Fatalf("created file has %d bytes", fi.Size())
	}
	s.Close()
	// A larger resource than the existing file is refused, not grown.
	if _, err := OpenFileStore(p, 2<<20); !errors.Is(err, ErrTooSmall) {
		t.Fatalf("too small store: err = %v", err)
	}
	// A smaller resource on a bigger file is fine.
	s, err = OpenFileStore(p, 512<<10)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := OpenFileStore(dir, 4096); err == nil {
		t.Fatal("a directory was accepted as a backing store")
	}
}

func TestFileStoreIO(t *testing.T) {
	ctx := context.Background()
	s, err := OpenFileStore(filepath.Join(t.TempDir(), "d"), 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte{0xab}, 3<<20)
	if err := s.WriteAt(ctx, data, 4096, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := s.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	check := func(what string, off, n int64, want byte) {
		t.Helper()
		b := make([]byte, n)
		if err := s.ReadAt(ctx, b, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, bytes.Repeat([]byte{want}, int(n))) {
			t.Fatalf("%s: range %d+%d is not all %#x", what, off, n, want)
		}
	}
	if err := s.Trim(ctx, 8192, 8192, false); err != nil {
		t.Fatal(err)
	}
	check("trim", 8192, 8192, 0)
	check("after trim", 16384, 4096, 0xab)
	if err := s.WriteZeroes(ctx, 1<<20, 1<<20, true, true); err != nil {
		t.Fatal(err)
	}
	check("zeroes", 1<<20, 1<<20, 0)
	check("after zeroes", 2<<20, 4096, 0xab)
	if err := s.WriteZeroes(ctx, 100, 1000, false, false); err != nil { // unaligned
		t.Fatal(err)
	}
	check("unaligned zeroes", 100, 1000, 0)
	check("before unaligned", 4096, 1, 0xab) // untouched
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Fallback path: behave as if fallocate were unsupported.
	s.noPunch.Store(true)
	s.noZero.Store(true)
	if err := s.WriteZeroes(ctx, 2<<20, 8192, false, true); err != nil {
		t.Fatal(err)
	}
	check("fallback zeroes", 2<<20, 8192, 0)
	if err := s.ReadAt(ctx, make([]byte, 10), 4<<20-5); err == nil {
		t.Fatal("read past the end of the file succeeded")
	}
}

// Two stores on one image: the second is refused while the first is open,
// whatever resource it is for; a closed store's lock is gone.
func TestFileStoreLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	a, err := OpenFileStore(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFileStore(path, 1<<20); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open of a store in use: %v", err)
	}
	// Through another path to the same file, too.
	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFileStore(link, 1<<20); !errors.Is(err, ErrInUse) {
		t.Fatalf("open through a symlink of a store in use: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := OpenFileStore(path, 1<<20)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	b.Close()
}
