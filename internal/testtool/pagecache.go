package testtool

import (
	"encoding/binary"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CachedPages counts the pages of f's first size bytes in the page cache
// (mincore over a mapping, which does not fault them in).
func CachedPages(t testing.TB, f *os.File, size int) int {
	t.Helper()
	m, vec := resident(t, f, size)
	defer unix.Munmap(m)
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// CachedLarge counts the pages of f's first size bytes in the page cache
// and, of those, the ones that belong to a large folio: only cached pages
// are mapped (nothing is read in), each one's frame number comes from
// /proc/self/pagemap and its flags (compound head or tail) from
// /proc/kpageflags, which give frame numbers to root only (RequireRoot).
// A 4 KiB write into a large folio costs this kernel several times what
// it costs into a 4 KiB page (README, Configuration), so what writes or
// reads a device file in large pieces is checked with it.
func CachedLarge(t testing.TB, f *os.File, size int) (cached, large int) {
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
	base := int64(uintptr(unsafe.Pointer(&m[0]))) / 4096 * 8
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

// touched keeps CachedLarge's loads of the mapping from being optimized
// out.
var touched byte

// resident maps f's first size bytes read-only and returns the mapping
// (the caller unmaps it) and mincore's vector over it (bit 0 of each
// page's byte: in the page cache).
func resident(t testing.TB, f *os.File, size int) (m, vec []byte) {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	vec = make([]byte, size/4096)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(size), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		unix.Munmap(m)
		t.Fatal(errno)
	}
	return m, vec
}
