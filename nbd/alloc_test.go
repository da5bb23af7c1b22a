package nbd_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/repd/repd/nbd"
)

// fileDevice serves a regular file and reports its holes with
// nbd.FileAllocation, as a device over a file would.
type fileDevice struct {
	f         *os.File
	size      int64
	readBytes atomic.Int64
}

func openFileDevice(t testing.TB, path string) *fileDevice {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return &fileDevice{f: f, size: fi.Size()}
}

func (d *fileDevice) Size() int64 { return d.size }

func (d *fileDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	d.readBytes.Add(int64(len(p)))
	_, err := d.f.ReadAt(p, off)
	return err
}

func (d *fileDevice) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	if _, err := d.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return d.f.Sync()
	}
	return nil
}

func (d *fileDevice) Flush(context.Context) error { return d.f.Sync() }

func (d *fileDevice) Allocation(_ context.Context, off, n int64) ([]nbd.Extent, error) {
	return nbd.FileAllocation(d.f, off, n, nbd.DefaultMaxExtents)
}

// sparseFile writes a file of size bytes with pattern data in spans (4 KiB
// aligned) and holes elsewhere.
func sparseFile(t testing.TB, size int64, data []span) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, s := range data {
		p := pattern(int(s.n), byte(s.off>>12)|1)
		for i := range p {
			if p[i] == 0 {
				p[i] = 0x5a
			}
		}
		if _, err := f.WriteAt(p, s.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFileAllocation(t *testing.T) {
	const K, M = 1 << 10, 1 << 20
	data := []span{{64 * K, 64 * K}, {M, 128 * K}, {3 * M, 4 * K}}
	dev := openFileDevice(t, sparseFile(t, 4*M, data))
	probe, err := nbd.FileAllocation(dev.f, 0, 4*M, 100)
	if err != nil {
		t.Fatal(err)
	}
	// A file system may allocate more than was written (ZFS records), never
	// less: every written span is data. Where it reports exactly what was
	// written (ext4, xfs, btrfs, tmpfs), the cases below are exact too.
	want := extentsOf(data, 0, 4*M, 0, nbd.StateHole|nbd.StateZero)
	exact := slices.Equal(probe, want)
	if !exact {
		for _, s := range data {
			for _, e := range extentsAt(probe, s.off, s.n) {
				if e.Flags != 0 {
					t.Fatalf("written span %d+%d reported as a hole: %v", s.off, s.n, probe)
				}
			}
		}
		t.Logf("the file system reports %v (written %v)", probe, want)
	}
	for _, tc := range []struct {
		name   string
		off, n int64
		limit  int
		want   []nbd.Extent
	}{
		{"inside data", 64*K + 512, 1000, 10, ext(1000, 0)},
		{"inside a hole", 2 * M, 4096, 10, ext(4096, hz)},
		{"hole then data", 0, 96 * K, 10, ext(64*K, hz, 32*K, 0)},
		{"limit", 0, 4 * M, 2, ext(64*K, hz, 64*K, 0)},
		{"limit 0 is 1", 0, 4 * M, 0, ext(64*K, hz)},
		{"past the end of the file", 4*M - 4*K, 64 * K, 10, ext(64*K, hz)},
	} {
		got, err := nbd.FileAllocation(dev.f, tc.off, tc.n, tc.limit)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if exact && !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
		var total int64
		for _, e := range got {
			total += e.Len
		}
		if total == 0 || total > tc.n || len(got) > max(tc.limit, 1) {
			t.Errorf("%s: %v describes %d of %d bytes in %d extents (limit %d)", tc.name, got, total, tc.n, len(got), tc.limit)
		}
	}
	if _, err := nbd.FileAllocation(dev.f, 0, 0, 10); err == nil {
		t.Error("empty range: no error")
	}
	dev.f.Close()
	if _, err := nbd.FileAllocation(dev.f, 0, 4096, 10); err == nil {
		t.Error("closed file: no error")
	}
}

// extentsAt returns the extents of ext (starting at 0) that overlap
// [off, off+n).
func extentsAt(ext []nbd.Extent, off, n int64) []nbd.Extent {
	var out []nbd.Extent
	var pos int64
	for _, e := range ext {
		if pos < off+n && pos+e.Len > off {
			out = append(out, e)
		}
		pos += e.Len
	}
	return out
}
