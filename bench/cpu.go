package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU returns the CPU time (user + system) a process has used, from
// /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
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

// pidsCPU sums procCPU over pids, skipping those that are gone.
func pidsCPU(pids []int) time.Duration {
	var t time.Duration
	for _, pid := range pids {
		if c, err := procCPU(pid); err == nil {
			t += c
		}
	}
	return t
}

// CPUStats is the CPU time one job cost per I/O over fio's measured window
// (after ramp_time): the target's processes (server, peers) and fio itself.
type CPUStats struct {
	TargetUs float64 `json:"target_us_per_io"`
	FioUs    float64 `json:"fio_us_per_io"`
	// Util is (target + fio CPU time) / (window × CPUs): near 1, the job
	// was bound by this machine's CPUs.
	Util float64 `json:"cpu_util"`
}

// Total is the CPU time per I/O of the target and fio together.
func (c *CPUStats) Total() float64 { return c.TargetUs + c.FioUs }

// treeCPU is procCPU of pid and of its descendants (fio runs each job in a
// child process).
func treeCPU(pid int) time.Duration {
	t, err := procCPU(pid)
	if err != nil {
		return 0
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, c := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(c); err == nil {
				t += treeCPU(n)
			}
		}
	}
	return t
}
