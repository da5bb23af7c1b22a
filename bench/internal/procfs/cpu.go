// Package procfs accounts for processes from /proc: CPU time (of one
// process, a process tree, this process) and resident memory, sampled
// while a job runs.
package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// CPU returns the CPU time (user + system) a process has used, from
// /proc/PID/stat.
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var t time.Duration
	for _, k := range []int{11, 12} { // fields 14 (utime), 15 (stime)
		n, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat field %d: %w", pid, k+3, err)
		}
		t += time.Duration(n) * clockTick
	}
	return t, nil
}

// PIDsCPU sums CPU over pids, skipping those that are gone.
func PIDsCPU(pids []int) time.Duration {
	var t time.Duration
	for _, pid := range pids {
		if c, err := CPU(pid); err == nil {
			t += c
		}
	}
	return t
}

// TreeCPU is CPU of pid and of its descendants (fio runs each job in a
// child process).
func TreeCPU(pid int) time.Duration {
	t, err := CPU(pid)
	if err != nil {
		return 0
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, c := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(c); err == nil {
				t += TreeCPU(n)
			}
		}
	}
	return t
}

// SelfCPU is this process's CPU time (user + system), all threads.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
