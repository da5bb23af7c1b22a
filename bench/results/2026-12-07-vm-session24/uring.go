//go:build ignore

// uring measures the CPU time of 4 KiB buffered writes at random places
// in a 512 MiB file (written over once in 4 KiB pieces, so cached in 4 KiB
// pages): pwrite(2) one at a time, against io_uring's IORING_OP_WRITE
// submitted and awaited in batches of 1, 8 and 32 with one io_uring_enter
// each (raw system calls, no library). CPU time is the process's, io_uring's
// worker threads included.
//
//	go run bench/results/2026-12-07-vm-session24/uring.go [-f FILE] [-n WRITES]
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  [10]uint32
	cqOff                                                                  [10]uint32
}

type ring struct {
	fd                               int
	sq, cq, sqes                     []byte
	sqHead, sqTail, sqMask, sqArray  unsafe.Pointer
	cqHead, cqTail, cqMask, cqesBase unsafe.Pointer
	entries                          uint32
}

func u32(p unsafe.Pointer) *uint32 { return (*uint32)(p) }

func setup(n uint32) (*ring, error) {
	var p params
	fd, _, e := syscall.Syscall(425, uintptr(n), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, e
	}
	r := &ring{fd: int(fd), entries: p.sqEntries}
	sqSize := p.sqOff[6] + p.sqEntries*4
	cqSize := p.cqOff[5] + p.cqEntries*16
	var err error
	if r.sq, err = unix.Mmap(r.fd, 0, int(sqSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, err
	}
	if r.cq, err = unix.Mmap(r.fd, 0x8000000, int(cqSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, err
	}
	if r.sqes, err = unix.Mmap(r.fd, 0x10000000, int(p.sqEntries*64), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, err
	}
	b := unsafe.Pointer(&r.sq[0])
	r.sqHead, r.sqTail, r.sqMask, r.sqArray = unsafe.Add(b, p.sqOff[0]), unsafe.Add(b, p.sqOff[1]), unsafe.Add(b, p.sqOff[2]), unsafe.Add(b, p.sqOff[6])
	c := unsafe.Pointer(&r.cq[0])
	r.cqHead, r.cqTail, r.cqMask, r.cqesBase = unsafe.Add(c, p.cqOff[0]), unsafe.Add(c, p.cqOff[1]), unsafe.Add(c, p.cqOff[2]), unsafe.Add(c, p.cqOff[5])
	return r, nil
}

// batch submits one write per offset and waits for them all.
func (r *ring) batch(fd int, buf []byte, offs []int64) error {
	tail := atomic.LoadUint32(u32(r.sqTail))
	mask := *u32(r.sqMask)
	for i, off := range offs {
		idx := (tail + uint32(i)) & mask
		s := r.sqes[idx*64 : idx*64+64]
		clear(s)
		s[0] = 23 // IORING_OP_WRITE
		*(*int32)(unsafe.Pointer(&s[4])) = int32(fd)
		*(*uint64)(unsafe.Pointer(&s[8])) = uint64(off)
		*(*uint64)(unsafe.Pointer(&s[16])) = uint64(uintptr(unsafe.Pointer(&buf[0])))
		*(*uint32)(unsafe.Pointer(&s[24])) = uint32(len(buf))
		*(*uint64)(unsafe.Pointer(&s[32])) = uint64(i)
		*(*uint32)(unsafe.Add(r.sqArray, 4*idx)) = idx
	}
	atomic.StoreUint32(u32(r.sqTail), tail+uint32(len(offs)))
	_, _, e := syscall.Syscall6(426, uintptr(r.fd), uintptr(len(offs)), uintptr(len(offs)), 1, 0, 0)
	if e != 0 {
		return e
	}
	head := atomic.LoadUint32(u32(r.cqHead))
	ctail := atomic.LoadUint32(u32(r.cqTail))
	cm := *u32(r.cqMask)
	for ; head != ctail; head++ {
		res := *(*int32)(unsafe.Add(r.cqesBase, 16*(head&cm)+8))
		if res != int32(len(buf)) {
			return fmt.Errorf("write: res %d", res)
		}
	}
	atomic.StoreUint32(u32(r.cqHead), head)
	return nil
}

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func main() {
	path := flag.String("f", "/var/tmp/uring.img", "")
	n := flag.Int("n", 200000, "")
	flag.Parse()
	const size = 512 << 20
	f, err := os.OpenFile(*path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		panic(err)
	}
	defer os.Remove(*path)
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	for off := int64(0); off < size; off += 4096 {
		f.WriteAt(buf, off)
	}
	f.Sync()
	fd := int(f.Fd())
	r, err := setup(64)
	if err != nil {
		panic(err)
	}
	offs := make([]int64, *n)
	for i := range offs {
		offs[i] = rand.Int64N(size/4096) * 4096
	}
	for round := 0; round < 3; round++ {
		t, c := time.Now(), cpu()
		for _, off := range offs {
			if _, err := unix.Pwrite(fd, buf, off); err != nil {
				panic(err)
			}
		}
		fmt.Printf("pwrite        %.2f us CPU, %.2f us wall per write\n", float64(cpu()-c)/1e3/float64(*n), float64(time.Since(t))/1e3/float64(*n))
		for _, b := range []int{1, 8, 32} {
			t, c = time.Now(), cpu()
			for i := 0; i+b <= len(offs); i += b {
				if err := r.batch(fd, buf, offs[i:i+b]); err != nil {
					panic(err)
				}
			}
			fmt.Printf("io_uring %3d  %.2f us CPU, %.2f us wall per write\n", b, float64(cpu()-c)/1e3/float64(*n), float64(time.Since(t))/1e3/float64(*n))
		}
	}
}
