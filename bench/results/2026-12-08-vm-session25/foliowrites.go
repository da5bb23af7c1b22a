//go:build ignore

// foliowrites measures what a 4 KiB pwrite costs into a file a restore
// left cached in large folios, against the same file once its clean pages
// were dropped (what Restore does since session 25). It writes a file of
// -size bytes in 64 KiB pieces (as Restore does), fsyncs it, then does
// -n 4 KiB pwrites at random aligned places and reports the CPU time
// (user + system) per write; then drops the file's clean pages
// (POSIX_FADV_DONTNEED) and does the same again; -rounds times. Root not
// needed. Run from anywhere:
//
//	go run bench/results/2026-12-08-vm-session25/foliowrites.go -dir /var/tmp
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func writes(f *os.File, size int64, n int) float64 {
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	c0 := cpu()
	for range n {
		off := rand.Int64N(size/4096) * 4096
		if _, err := unix.Pwrite(int(f.Fd()), buf, off); err != nil {
			panic(err)
		}
	}
	return float64(cpu()-c0) / float64(time.Microsecond) / float64(n)
}

func main() {
	dir := flag.String("dir", "/var/tmp", "a directory on the disk's filesystem")
	size := flag.Int64("size", 512<<20, "file size")
	n := flag.Int("n", 100000, "4 KiB writes per pass")
	rounds := flag.Int("rounds", 3, "")
	flag.Parse()
	for r := range *rounds {
		path := filepath.Join(*dir, fmt.Sprintf("foliowrites-%d", os.Getpid()))
		f, err := os.Create(path)
		if err != nil {
			panic(err)
		}
		piece := make([]byte, 64<<10)
		for i := range piece {
			piece[i] = byte(i * 7)
		}
		for off := int64(0); off < *size; off += int64(len(piece)) {
			if _, err := f.WriteAt(piece, off); err != nil {
				panic(err)
			}
		}
		if err := f.Sync(); err != nil {
			panic(err)
		}
		large := writes(f, *size, *n)
		f.Sync()
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		small := writes(f, *size, *n)
		fmt.Printf("round %d: CPU µs per 4 KiB pwrite: cached as written (large folios) %.2f, after the drop %.2f (%.2fx)\n", r, large, small, large/small)
		f.Close()
		os.Remove(path)
	}
}
