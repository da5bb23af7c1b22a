package procfs

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RSS returns a process's resident set size in bytes (VmRSS).
func RSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		v, ok := strings.CutPrefix(s.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(v) // "12345 kB"
		if len(fields) == 0 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS %q: %w", v, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// SampleRSS samples the processes' RSS every interval until the returned
// function is called; that function returns the largest RSS seen in any one
// of them (0 if none could be read).
func SampleRSS(pids []int, every time.Duration) (stop func() int64) {
	if len(pids) == 0 {
		return func() int64 { return 0 }
	}
	var (
		mu   sync.Mutex
		max  int64
		quit = make(chan struct{})
		done = make(chan struct{})
	)
	sample := func() {
		for _, pid := range pids {
			if n, err := RSS(pid); err == nil {
				mu.Lock()
				if n > max {
					max = n
				}
				mu.Unlock()
			}
		}
	}
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		sample()
		for {
			select {
			case <-quit:
				sample()
				return
			case <-t.C:
				sample()
			}
		}
	}()
	var once sync.Once
	return func() int64 {
		once.Do(func() { close(quit); <-done })
		mu.Lock()
		defer mu.Unlock()
		return max
	}
}
