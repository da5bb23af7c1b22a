package replica

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
	"golang.org/x/sys/unix"
)

// TestScanAtLeavesSmallPages: a sweep's sequential reads through ScanAt
// (with or without Prefetch ahead of them) read the data and leave the
// file's page cache in 4 KiB pages, where the same reads through ReadAt
// (with the kernel's readahead) leave large folios on a kernel that keeps
// files in them, as this VM's ext4 on Linux 6.18 does, and 4 KiB writes
// into those cost several times more (FileStore.ScanAt). The folios are found through /proc/self/pagemap and
// /proc/kpageflags, which give frame numbers to root only.
func TestScanAtLeavesSmallPages(t *testing.T) {
	testtool.RequireRoot(t, "reading page frame flags (/proc/kpageflags)")
	// On the disk's filesystem, not a tmpfs: its page cache is the one
	// in question.
	dir, err := os.MkdirTemp("/var/tmp", "repd-scan-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	const size = 32 << 20
	ctx := context.Background()
	s, err := OpenFileStore(filepath.Join(dir, "d"), size)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		for i := range chunk {
			chunk[i] = byte(off>>20) ^ byte(i)
		}
		if err := s.WriteAt(ctx, chunk, off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	sweep := func(read func(context.Context, []byte, int64) error) (large int) {
		t.Helper()
		// Clean after the flush, so the whole file leaves the cache.
		if err := unix.Fadvise(int(s.f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		if n := testtool.CachedPages(t, s.f, size); n != 0 {
			t.Fatalf("%d pages still cached after the file was dropped from the cache", n)
		}
		want := make([]byte, len(chunk))
		for off := int64(0); off < size; off += int64(len(chunk)) {
			if err := read(ctx, chunk, off); err != nil {
				t.Fatal(err)
			}
			for i := range want {
				want[i] = byte(off>>20) ^ byte(i)
			}
			if !bytes.Equal(chunk, want) {
				t.Fatalf("sweep read other data at %d", off)
			}
		}
		return largePages(t, s.f, size)
	}
	if n := sweep(s.ScanAt); n != 0 {
		t.Errorf("after a sweep through ScanAt, %d of the file's %d pages are in large folios; want none", n, size/4096)
	}
	// As verify sweeps: each step names the next (Prefetch) before it is
	// read, and the pages read ahead that way are 4 KiB ones too.
	ahead := func(ctx context.Context, p []byte, off int64) error {
		s.Prefetch(off+int64(len(p)), int64(len(p)))
		return s.ScanAt(ctx, p, off)
	}
	if n := sweep(ahead); n != 0 {
		t.Errorf("after a sweep through ScanAt with Prefetch ahead of it, %d of the file's %d pages are in large folios; want none", n, size/4096)
	}
	// The control: what readahead does on this kernel and filesystem.
	if n := sweep(s.ReadAt); n > 0 {
		t.Logf("the same sweep through ReadAt (readahead) left %d of %d pages in large folios", n, size/4096)
	} else {
		t.Logf("this kernel leaves 4 KiB pages after readahead too: the check above holds trivially here")
	}
	// What ScanAt's descriptor reads is the file's, also after writes
	// through the other one.
	if err := s.WriteAt(ctx, bytes.Repeat([]byte{0x5a}, 4096), 8192, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := s.ScanAt(ctx, got, 8192); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 4096)) {
		t.Fatalf("ScanAt after a write: %v, %x...", err, got[:8])
	}
}

// largePages counts the pages of f's first size bytes (the sweep just
// read them all) that are in the page cache in a large folio. It fails
// unless nearly all are cached, so that a count of none means something:
// under CI's load a sweep once found 8 of its 8,192 pages gone by the
// time it counted, so a few may be missing.
func largePages(t *testing.T, f *os.File, size int) int {
	t.Helper()
	cached, large := testtool.CachedLarge(t, f, size)
	if want := size / 4096; cached < want-want/64 {
		t.Fatalf("only %d of %d pages cached after the sweep", cached, want)
	}
	return large
}

// TestScanAtBlockDevice: on a block device, which OpenFileStore holds
// exclusively (O_EXCL), the sweep descriptor opens beside it and reads what
// was written, and a second store on the device is still refused.
func TestScanAtBlockDevice(t *testing.T) {
	testtool.RequireRoot(t, "a loop device")
	testtool.Require(t, "losetup")
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", loop).Run()
	ctx := context.Background()
	s, err := OpenFileStore(loop, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := bytes.Repeat([]byte{0xc3}, 64<<10)
	if err := s.WriteAt(ctx, want, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	s.Prefetch(1<<20, 1<<20)
	got := make([]byte, len(want))
	if err := s.ScanAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ScanAt on %s: %v", loop, err)
	}
	if s2, err := OpenFileStore(loop, 4<<20); err == nil {
		s2.Close()
		t.Fatalf("a second store on %s opened beside the first", loop)
	}
}

// TestResyncLeavesNoLargeFolios: a full resync writes the target's file
// in large pieces, and into an uncached file those leave it cached in
// large folios (checked here first, on a file beside the nodes'), into
// which the 4 KiB writes after the resync would cost several times more;
// the target drops its clean cache once the resync's data is durable
// (onResyncDone, FileStore.DropCache), so none are left. Root only, as
// TestScanAtLeavesSmallPages.
func TestResyncLeavesNoLargeFolios(t *testing.T) {
	testtool.RequireRoot(t, "reading page frame flags (/proc/kpageflags)")
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.ResyncRate = 1 << 30 })
	ctx := context.Background()

	// The control: 1 MiB writes into an uncached file on this filesystem.
	s, err := OpenFileStore(filepath.Join(c.dir, "control.img"), testSize)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	chunk := bytes.Repeat([]byte{0x6b}, 1<<20)
	for off := int64(0); off < testSize; off += 1 << 20 {
		if err := s.WriteAt(ctx, chunk, off, false); err != nil {
			t.Fatal(err)
		}
	}
	if cached, large := testtool.CachedLarge(t, s.f, testSize); large == 0 {
		t.Fatalf("control: 1 MiB writes left %d pages cached, none in large folios: this filesystem does not keep files in large folios, and the test shows nothing here", cached)
	}

	alpha := c.bootstrap()
	beta := c.nodes[1].n
	for off := int64(0); off < testSize; off += 1 << 20 {
		if err := alpha.WriteAt(ctx, bytes.Repeat([]byte{byte(off>>20) + 1}, 1<<20), off, false); err != nil {
			t.Fatal(err)
		}
	}
	c.waitSynced(20 * time.Second)
	// beta's copy out of the cache (durable first), so that the resync
	// writes into an uncached file, as the control did.
	f, err := os.Open(c.nodes[1].path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := beta.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if err := beta.Invalidate("alpha"); err != nil {
		t.Fatal(err)
	}
	if d := beta.Status().Disk; d == "UpToDate" {
		t.Fatalf("beta after invalidate: disk %s", d)
	}
	c.waitSynced(20 * time.Second)
	if cached, large := testtool.CachedLarge(t, f, testSize); large != 0 {
		t.Fatalf("after the full resync %d of beta's %d cached pages are in large folios", large, cached)
	}
	c.assertEqualStores()
}
