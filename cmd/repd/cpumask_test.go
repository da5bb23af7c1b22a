package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/repd/repd/config"
)

// maskFor is the hexadecimal cpu-mask naming exactly cpu.
func maskFor(cpu int) string {
	return strconv.Itoa(1<<(cpu%4)) + strings.Repeat("0", cpu/4)
}

// TestMain runs pinChild instead of the tests in the child processes of
// TestPinCPUs.
func TestMain(m *testing.M) {
	if s, ok := os.LookupEnv("REPD_TEST_CPU_MASK"); ok {
		if err := pinChild(s); err != nil {
			fmt.Println("child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// pinChild runs in a child process of TestPinCPUs: it starts threads,
// applies the cpu-mask s, starts more, and prints how many threads have
// each Cpus_allowed_list, and GOMAXPROCS.
func pinChild(s string) error {
	m, err := config.ParseCPUMask(s)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	block := func(n int) { // n threads, each blocked in a system call
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				ts := unix.NsecToTimespec(int64(500 * time.Millisecond))
				_ = unix.Nanosleep(&ts, nil)
			}()
		}
	}
	block(8)
	time.Sleep(50 * time.Millisecond)
	if err := pinCPUs(m, slog.New(slog.NewTextHandler(os.Stdout, nil))); err != nil {
		fmt.Println("error:", err)
		return nil
	}
	block(8) // threads started after the pinning
	time.Sleep(50 * time.Millisecond)
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	lists := map[string]int{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", e.Name(), "status"))
		if err != nil {
			continue // the thread ended
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
				lists[strings.TrimSpace(v)]++
			}
		}
	}
	fmt.Printf("gomaxprocs=%d threads=%d\n", runtime.GOMAXPROCS(0), len(ents))
	for _, l := range slices.Sorted(func(yield func(string) bool) {
		for k := range lists {
			if !yield(k) {
				return
			}
		}
	}) {
		fmt.Printf("allowed=%s threads=%d\n", l, lists[l])
	}
	wg.Wait()
	return nil
}

// TestPinCPUs: a node's cpu-mask pins every thread of the process, those
// the runtime starts later too, and shrinks GOMAXPROCS to the CPUs left,
// unless GOMAXPROCS is set; CPUs the process may not use are ignored with
// a warning, and a mask of only such CPUs is an error that names them.
func TestPinCPUs(t *testing.T) {
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := range config.MaxCPUs {
		if allowed.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	last := cpus[len(cpus)-1]
	absent := config.MaxCPUs - 1
	if allowed.IsSet(absent) {
		t.Fatalf("this test needs CPU %d to be one the process may not use", absent)
	}
	child := func(mask string, env ...string) string {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(append(slices.DeleteFunc(os.Environ(), func(s string) bool { return strings.HasPrefix(s, "GOMAXPROCS=") }), "REPD_TEST_CPU_MASK="+mask), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child with cpu-mask %q: %v\n%s", mask, err, out)
		}
		return string(out)
	}
	want := fmt.Sprintf("allowed=%d threads=", last)
	out := child(maskFor(last))
	if !strings.Contains(out, "gomaxprocs=1 ") || !strings.Contains(out, want) || strings.Count(out, "allowed=") != 1 {
		t.Fatalf("cpu-mask %s: want every thread on CPU %d and GOMAXPROCS 1:\n%s", maskFor(last), last, out)
	}
	if !strings.Contains(out, `msg="pinned to CPUs by cpu-mask"`) {
		t.Fatalf("no log line for the pinning:\n%s", out)
	}
	threads := 0
	if i := strings.Index(out, want); i >= 0 {
		threads, _ = strconv.Atoi(strings.Fields(out[i+len(want):])[0])
	}
	if threads < 17 { // 16 blocked threads and the main one at least
		t.Fatalf("only %d threads counted on CPU %d:\n%s", threads, last, out)
	}

	// An absent CPU beside a present one: a warning, pinned to the present.
	mixed := strings.TrimLeft(maskFor(absent), "0")
	mixed = mixed[:len(mixed)-len(maskFor(last))] + maskFor(last)
	if m, err := config.ParseCPUMask(mixed); err != nil || !slices.Equal(m.CPUs(), []int{last, absent}) {
		t.Fatalf("mask %q = %v, %v", mixed, m.CPUs(), err)
	}
	out = child(mixed)
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, fmt.Sprintf("ignored=[%d]", absent)) || !strings.Contains(out, want) || strings.Count(out, "allowed=") != 1 {
		t.Fatalf("cpu-mask with absent CPU %d: want a warning and every thread on CPU %d:\n%s", absent, last, out)
	}

	// Only absent CPUs: an error naming them and what the process may use.
	out = child(maskFor(absent))
	if !strings.Contains(out, fmt.Sprintf("error: cpu-mask %s: names CPUs [%d], none of which this process may use (it may use ", maskFor(absent), absent)) {
		t.Fatalf("cpu-mask of absent CPU %d: want an error:\n%s", absent, out)
	}

	// GOMAXPROCS in the environment is left as it is.
	out = child(maskFor(last), "GOMAXPROCS=3")
	if !strings.Contains(out, "gomaxprocs=3 ") || !strings.Contains(out, want) {
		t.Fatalf("cpu-mask with GOMAXPROCS=3: want GOMAXPROCS kept and the threads pinned:\n%s", out)
	}
}
