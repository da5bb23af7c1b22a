package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

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
		if n := cachedPages(t, s.f, size); n != 0 {
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

// cachedPages counts the pages of f's first size bytes in the page cache
// (mincore over a mapping, which does not fault them in).
func cachedPages(t *testing.T, f *os.File, size int) int {
	t.Helper()
	m, vec := resident(t, f, size)
	defer unix.Munmap(m)
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// resident maps f's first size bytes read-only and returns the mapping
// (the caller unmaps it) and mincore's vector over it (bit 0 of each
// page's byte: in the page cache).
func resident(t *testing.T, f *os.File, size int) (m, vec []byte) {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	vec = make([]byte, size/4096)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafePointer(m)), uintptr(size), uintptr(unsafePointer(vec))); errno != 0 {
		unix.Munmap(m)
		t.Fatal(errno)
	}
	return m, vec
}

// largePages counts the pages of f's first size bytes (all in the page
// cache) that belong to a large folio: mapped, each page's frame number
// from /proc/self/pagemap, its flags from /proc/kpageflags (compound head
// or tail).
func largePages(t *testing.T, f *os.File, size int) int {
	t.Helper()
	if n := cachedPages(t, f, size); n != size/4096 {
		t.Fatalf("only %d of %d pages cached after the sweep", n, size/4096)
	}
	_, large := cachedLarge(t, f, size)
	return large
}

// cachedLarge counts the pages of f's first size bytes in the page cache,
// and of those the ones that belong to a large folio (as largePages, for
// a file only partly cached: only cached pages are mapped, so nothing is
// read in).
func cachedLarge(t *testing.T, f *os.File, size int) (cached, large int) {
	t.Helper()
	m, vec := resident(t, f, size)
	defer unix.Munmap(m)
	for i, v := range vec {
		if v&1 != 0 {
			touched += m[i*4096] // map the cached page
		}
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		t.Fatal(err)
	}
	defer kf.Close()
	const present, pfnMask = 1 << 63, 1<<55 - 1
	const compoundHead, compoundTail = 1 << 15, 1 << 16
	ents := make([]byte, 8*(size/4096))
	base := int64(uintptr(unsafePointer(m))) / 4096 * 8
	if _, err := pm.ReadAt(ents, base); err != nil {
		t.Fatal(err)
	}
	var fl [8]byte
	for i := 0; i < size/4096; i++ {
		if vec[i]&1 == 0 {
			continue
		}
		cached++
		e := binary.LittleEndian.Uint64(ents[8*i:])
		if e&present == 0 || e&pfnMask == 0 {
			t.Fatalf("page %d: not mapped, or no frame number (pagemap entry %#x)", i, e)
		}
		if _, err := kf.ReadAt(fl[:], int64(e&pfnMask)*8); err != nil {
			t.Fatal(err)
		}
		if binary.LittleEndian.Uint64(fl[:])&(compoundHead|compoundTail) != 0 {
			large++
		}
	}
	return cached, large
}

// touched keeps largePages' loads of the mapping from being optimized out.
var touched byte

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

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
	if cached, large := cachedLarge(t, s.f, testSize); large == 0 {
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
	if cached, large := cachedLarge(t, f, testSize); large != 0 {
		t.Fatalf("after the full resync %d of beta's %d cached pages are in large folios", large, cached)
	}
	c.assertEqualStores()
}
