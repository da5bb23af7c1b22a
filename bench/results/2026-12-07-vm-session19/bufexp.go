//go:build ignore

// bufexp measures, outside repd, two things a 1 MiB protocol-C write pays
// for: a 1 MiB pwrite into the page cache and a 1 MiB send and receive
// over loopback TCP, as CPU time of this process (both ends) per MiB. It
// compares buffers in the Go heap (4 KiB pages: the runtime does not ask
// for transparent huge pages and this machine's THP setting is madvise)
// with buffers mapped with MADV_HUGEPAGE, and the socket buffer and read
// sizes repd leaves to the kernel with explicit ones. Cases are
// interleaved, the order reversed every other round. The session-19
// README has the results. From the module root:
//
//	go run ./bench/results/2026-12-07-vm-session19/bufexp.go -dir /var/tmp
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"
	"unsafe"
)

const mib = 1 << 20

// hugeBuf maps n bytes at a 2 MiB boundary with MADV_HUGEPAGE and
// touches them.
func hugeBuf(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n+2*mib, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	off := (2*mib - int(uintptr(unsafe.Pointer(&b[0]))%(2*mib))) % (2 * mib)
	b = b[off : off+n]
	const madvHugepage = 14
	if err := syscall.Madvise(b, madvHugepage); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func heapBuf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// cpu is this process's user and system time so far.
func cpu() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const ops = 3000

// pwrite overwrites ops MiB round the 256 MiB file f and returns the CPU
// per MiB in µs.
func pwrite(f *os.File, bufs [][]byte) float64 {
	c0 := cpu()
	for i := 0; i < ops; i++ {
		if _, err := f.WriteAt(bufs[i%len(bufs)], int64(i%256)*mib); err != nil {
			panic(err)
		}
	}
	return float64(cpu()-c0) / 1e3 / ops
}

// tcp sends ops MiB from bufs over loopback, read into rbuf, with the
// given socket buffer sizes (0: the kernel's autotuning), and returns the
// CPU of both ends per MiB in µs.
func tcp(bufs [][]byte, rbuf []byte, sndbuf, rcvbuf int) float64 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			panic(err)
		}
		defer c.Close()
		if rcvbuf > 0 {
			c.(*net.TCPConn).SetReadBuffer(rcvbuf)
		}
		for tot := 0; tot < ops*mib; {
			k, err := c.Read(rbuf)
			if err != nil {
				panic(err)
			}
			tot += k
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	if sndbuf > 0 {
		c.(*net.TCPConn).SetWriteBuffer(sndbuf)
	}
	c0 := cpu()
	for i := 0; i < ops; i++ {
		if _, err := c.Write(bufs[i%len(bufs)]); err != nil {
			panic(err)
		}
	}
	<-done
	return float64(cpu()-c0) / 1e3 / ops
}

func main() {
	dir := flag.String("dir", os.TempDir(), "directory for the 256 MiB file the pwrite cases overwrite")
	rounds := flag.Int("rounds", 7, "rounds, the cases interleaved in each")
	flag.Parse()
	// Written whole and synced first, as the bench preconditions its
	// devices: a sparse file's first writes allocate blocks, and a fresh
	// file per case made whichever case came first look dearer.
	name := filepath.Join(*dir, "bufexp.img")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		panic(err)
	}
	defer os.Remove(name)
	defer f.Close()
	fill := heapBuf(mib)
	for i := int64(0); i < 256; i++ {
		if _, err := f.WriteAt(fill, i*mib); err != nil {
			panic(err)
		}
	}
	if err := f.Sync(); err != nil {
		panic(err)
	}
	var heap, huge [][]byte
	for i := 0; i < 8; i++ {
		heap = append(heap, heapBuf(mib))
		huge = append(huge, hugeBuf(mib))
	}
	cases := []struct {
		name string
		run  func() float64
	}{
		{"pwrite, heap buffers", func() float64 { return pwrite(f, heap) }},
		{"pwrite, MADV_HUGEPAGE buffers", func() float64 { return pwrite(f, huge) }},
		{"tcp, heap buffers", func() float64 { return tcp(heap, heapBuf(mib), 0, 0) }},
		{"tcp, MADV_HUGEPAGE buffers", func() float64 { return tcp(huge, hugeBuf(mib), 0, 0) }},
		{"tcp, 256 KiB reads", func() float64 { return tcp(heap, heapBuf(256<<10), 0, 0) }},
		{"tcp, 64 KiB reads", func() float64 { return tcp(heap, heapBuf(64<<10), 0, 0) }},
		{"tcp, SO_SNDBUF 4 MiB", func() float64 { return tcp(heap, heapBuf(mib), 4*mib, 0) }},
		{"tcp, SO_RCVBUF 4 MiB", func() float64 { return tcp(heap, heapBuf(mib), 0, 4*mib) }},
		{"tcp, both 4 MiB", func() float64 { return tcp(heap, heapBuf(mib), 4*mib, 4*mib) }},
	}
	res := make([][]float64, len(cases))
	for r := 0; r < *rounds; r++ {
		for k := range cases {
			i := k
			if r%2 == 1 { // the order reversed every other round
				i = len(cases) - 1 - k
			}
			res[i] = append(res[i], cases[i].run())
		}
	}
	for i, c := range cases {
		v := append([]float64(nil), res[i]...)
		sort.Float64s(v)
		fmt.Printf("%-32s median %6.1f µs CPU per MiB (min %.1f, max %.1f, %d rounds)\n", c.name, v[len(v)/2], v[0], v[len(v)-1], len(v))
	}
}
