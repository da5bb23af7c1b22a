//go:build ignore

// folio times 4 KiB pwrites at random places in a 512 MiB file on the
// disk's filesystem (/var/tmp), by what filled the file's page cache
// before them: each case drops the cache (sync, drop_caches), fills it one
// way, then times 100,000 pwrites (CPU time of the process per write).
// The cases alternate, three rounds. On a kernel whose filesystem keeps
// files in large folios, the fills that leave large folios (1 MiB writes
// into an uncached file, reads with readahead) make each 4 KiB write
// walk a whole folio. Also prints how fast each read fill went. Root
// (drop_caches), from the module root:
//
//	go run bench/results/2026-12-07-vm-session23/folio.go
package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const size = 512 << 20

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func drop() {
	if err := exec.Command("sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches").Run(); err != nil {
		panic(err)
	}
}

func main() {
	path := "/var/tmp/folio.img"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		panic(err)
	}
	defer os.Remove(path)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for off := int64(0); off < size; off += 1 << 20 {
		f.WriteAt(big, off)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	writes := func() float64 {
		const n = 100000
		c0 := cpu()
		for range n {
			f.WriteAt(big[:4096], rng.Int64N(size/4096)*4096)
		}
		return float64((cpu() - c0).Nanoseconds()) / 1e3 / n
	}
	// read sweeps the file in 1 MiB reads through a new descriptor with
	// advice adv, naming the next MiB ahead with WILLNEED if ahead.
	read := func(adv int, ahead bool) string {
		g, err := os.Open(path)
		if err != nil {
			panic(err)
		}
		defer g.Close()
		unix.Fadvise(int(g.Fd()), 0, 0, adv)
		t0 := time.Now()
		for off := int64(0); off < size; off += 1 << 20 {
			if ahead {
				unix.Fadvise(int(g.Fd()), off+1<<20, 1<<20, unix.FADV_WILLNEED)
			}
			g.ReadAt(big, off)
		}
		return fmt.Sprintf("read at %4.0f MB/s", size/time.Since(t0).Seconds()/1e6)
	}
	cases := []struct {
		name string
		fill func() string
	}{
		{"1 MiB writes into the dropped cache", func() string {
			for off := int64(0); off < size; off += 1 << 20 {
				f.WriteAt(big, off)
			}
			return ""
		}},
		{"nothing (dropped)", func() string { return "" }},
		{"4 KiB writes into the dropped cache", func() string {
			for off := int64(0); off < size; off += 4096 {
				f.WriteAt(big[:4096], off)
			}
			return ""
		}},
		{"1 MiB reads, readahead", func() string { return read(unix.FADV_NORMAL, false) }},
		{"1 MiB reads, FADV_RANDOM", func() string { return read(unix.FADV_RANDOM, false) }},
		{"1 MiB reads, FADV_RANDOM + WILLNEED", func() string { return read(unix.FADV_RANDOM, true) }},
	}
	for round := range 3 {
		for _, c := range cases {
			drop()
			how := c.fill()
			fmt.Printf("round %d  %-38s %6.2f us per 4 KiB pwrite  %s\n", round, c.name, writes(), how)
		}
	}
}
