package main

import (
	"os"
	"strings"
	"syscall"
)

// Go's runtime has a monitor thread (sysmon) that sleeps in a futex
// whenever every P is idle, and the next system call any goroutine makes
// wakes it, after which it polls every 20 µs until the P's are idle again.
// A node serving one write at a time (queue depth 1, a database's commit)
// goes idle between writes, so every write paid that wake-up and a few
// polls: context switches on the write's path, on a VM an inter-processor
// interrupt each. The runtime keeps sysmon out of that sleep while
// schedtrace is set; it then backs off to a 10 ms poll when there is
// nothing to retake. With the longest period schedtrace takes (2^31-1 ms,
// about 24.8 days) the trace it is meant for prints one line on stderr at
// most that often (once at start on a machine up longer than that, since
// the runtime counts from boot).
//
// Measured on this project's 2-vCPU bench VM (go run ./bench --targets
// repd,repd-c1 --workloads randwrite-4k-qd32,randwrite-4k-qd1 --repeat 2,
// once with GODEBUG=schedtrace=0, once without): protocol C, one peer, 4 KiB
// random writes at queue depth 1, p50 165 -> 81 µs and repd's CPU per write
// 237 -> 110 µs (standalone: 41 -> 32 µs, 48 -> 35 µs). At queue depth 32
// the P's are seldom all idle and nothing changed beyond noise.
const sysmonSetting = "schedtrace=2147483647"

// keepSysmonAwake re-executes this program with sysmonSetting added to
// GODEBUG (GODEBUG is read once, at start), unless GODEBUG already sets
// schedtrace: GODEBUG=schedtrace=0 keeps Go's default. It returns only if
// it did not re-execute (the setting was there, or exec failed, in which
// case repd runs with Go's default).
func keepSysmonAwake() {
	env, ok := withSysmonSetting(os.Environ())
	if !ok {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, os.Args, env) // returns only on failure
}

// withSysmonSetting returns env with sysmonSetting added to GODEBUG, and
// false if GODEBUG already sets schedtrace.
func withSysmonSetting(env []string) ([]string, bool) {
	out := make([]string, 0, len(env)+1)
	found := false
	for _, kv := range env {
		v, isDebug := strings.CutPrefix(kv, "GODEBUG=")
		if !isDebug {
			out = append(out, kv)
			continue
		}
		for _, s := range strings.Split(v, ",") {
			if k, _, _ := strings.Cut(s, "="); strings.TrimSpace(k) == "schedtrace" {
				return env, false
			}
		}
		found = true
		if v != "" {
			v += ","
		}
		out = append(out, "GODEBUG="+v+sysmonSetting)
	}
	if !found {
		out = append(out, "GODEBUG="+sysmonSetting)
	}
	return out, true
}
