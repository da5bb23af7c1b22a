//go:build ignore

// folios counts, for each file named, its 4 KiB pages in the page cache
// (mincore over a read-only mapping, which faults nothing in) and how many
// of those belong to a large folio (each cached page mapped, its frame
// number from /proc/self/pagemap, its flags from /proc/kpageflags:
// compound head or tail). Root only.
//
//	go run bench/results/2026-12-07-vm-session24/folios.go FILE...
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	for _, p := range os.Args[1:] {
		f, err := os.Open(p)
		if err != nil {
			panic(err)
		}
		st, _ := f.Stat()
		size := int(st.Size())
		m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			panic(err)
		}
		vec := make([]byte, size/4096)
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(size), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			panic(e)
		}
		var s byte
		cached := 0
		for i, v := range vec {
			if v&1 != 0 {
				cached++
				s += m[i*4096]
			}
		}
		pm, _ := os.Open("/proc/self/pagemap")
		kf, _ := os.Open("/proc/kpageflags")
		ents := make([]byte, 8*(size/4096))
		pm.ReadAt(ents, int64(uintptr(unsafe.Pointer(&m[0])))/4096*8)
		large := 0
		var fl [8]byte
		for i := range vec {
			if vec[i]&1 == 0 {
				continue
			}
			e := binary.LittleEndian.Uint64(ents[8*i:])
			if e&(1<<63) == 0 {
				continue
			}
			kf.ReadAt(fl[:], int64(e&(1<<55-1))*8)
			if binary.LittleEndian.Uint64(fl[:])&(1<<15|1<<16) != 0 {
				large++
			}
		}
		fmt.Printf("%s: %d pages, %d cached, %d in large folios %v\n", p, size/4096, cached, large, s == 255)
		unix.Munmap(m)
	}
}
