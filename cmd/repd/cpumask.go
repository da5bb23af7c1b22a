package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/repd/repd/config"
)

// pinCPUs applies a node's cpu-mask, as DRBD applies its own to its
// kernel threads: every thread of the process may run only on the mask's
// CPUs from now on. Threads the runtime starts later inherit the affinity
// of the thread that starts them. CPUs in the mask that this process may
// not run on (absent, offline, outside its cgroup's cpuset or the
// affinity it was started with) are ignored with a warning, as DRBD
// ignores CPUs that do not exist; a mask that leaves none is an error.
// Unless GOMAXPROCS is set in the environment, the runtime's parallelism
// shrinks to the CPUs left, so that it does not keep more threads running
// than it has CPUs. An empty mask does nothing.
func pinCPUs(mask config.CPUMask, log *slog.Logger) error {
	if mask.Empty() {
		return nil
	}
	var allowed, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return fmt.Errorf("cpu-mask: read this process's CPU affinity: %w", err)
	}
	var ignored []int
	for _, c := range mask.CPUs() {
		if allowed.IsSet(c) {
			set.Set(c)
		} else {
			ignored = append(ignored, c)
		}
	}
	if set.Count() == 0 {
		return fmt.Errorf("cpu-mask %s: names CPUs %v, none of which this process may use (it may use %s)", mask, mask.CPUs(), cpuList(&allowed))
	}
	if len(ignored) > 0 {
		log.Warn("cpu-mask names CPUs this process may not use; ignored", "cpu-mask", mask.String(), "ignored", fmt.Sprint(ignored))
	}
	n, err := setThreadsAffinity(&set)
	if err != nil {
		return fmt.Errorf("cpu-mask %s: %w", mask, err)
	}
	procs := runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") == "" && set.Count() < procs {
		procs = set.Count()
		runtime.GOMAXPROCS(procs)
	}
	log.Info("pinned to CPUs by cpu-mask", "cpu-mask", mask.String(), "cpus", cpuList(&set), "threads", n, "gomaxprocs", procs)
	return nil
}

// setThreadsAffinity gives every thread of this process the affinity set,
// listing the threads again until no new one appears (a thread started
// during a pass, by a thread not yet pinned, is pinned by the next). It
// returns how many threads it pinned.
func setThreadsAffinity(set *unix.CPUSet) (int, error) {
	done := map[int]bool{}
	for {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return len(done), fmt.Errorf("list this process's threads: %w", err)
		}
		fresh := 0
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
				return len(done), fmt.Errorf("set the CPU affinity of thread %d: %w", tid, err)
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return len(done), nil
		}
	}
}

// cpuList writes a CPU set as a list, "0-3,6".
func cpuList(s *unix.CPUSet) string {
	out := ""
	for c := 0; c < config.MaxCPUs; c++ {
		if !s.IsSet(c) {
			continue
		}
		end := c
		for end+1 < config.MaxCPUs && s.IsSet(end+1) {
			end++
		}
		if out != "" {
			out += ","
		}
		out += strconv.Itoa(c)
		if end > c {
			out += "-" + strconv.Itoa(end)
		}
		c = end
	}
	return out
}
