// Package sysinfo describes the machine a benchmark ran on.
package sysinfo

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/repd/repd/bench/internal/result"
)

// Machine describes this machine, the tools the benchmark drives and the
// commit of the repd under test (repo; scratch is where the files go).
func Machine(repo, scratch string) result.Machine {
	host, _ := os.Hostname()
	m := result.Machine{
		Host:       host,
		Nproc:      runtime.NumCPU(),
		CPU:        procField("/proc/cpuinfo", "model name"),
		Kernel:     firstLine(readFile("/proc/sys/kernel/osrelease")),
		MemTotal:   memTotal(),
		LoadAvg:    LoadAvg(),
		Filesystem: filesystemOf(scratch),
		Fio:        toolVersion("fio", "--version"),
		Nbdkit:     toolVersion("nbdkit", "--version"),
		QemuNBD:    toolVersion("qemu-nbd", "--version"),
		Go:         runtime.Version(),
	}
	if repo != "" {
		if out, err := exec.Command("git", "-C", repo, "rev-parse", "--short", "HEAD").Output(); err == nil {
			m.Commit = strings.TrimSpace(string(out))
			// The binaries are built from the working tree, which may differ.
			// --no-optional-locks: never take the index lock of a checkout
			// others are committing in.
			diff := exec.Command("git", "-C", repo, "--no-optional-locks", "diff", "--quiet", "HEAD", "--")
			if err := diff.Run(); err != nil {
				m.Commit += " (+ uncommitted changes)"
			}
		}
	}
	return m
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(s)
}

// procField finds "key : value" in a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func toolVersion(tool string, args ...string) string {
	out, err := exec.Command(tool, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "not available"
	}
	return firstLine(string(out))
}

// filesystemOf names the mount holding dir: "ext4 /dev/vda on /".
func filesystemOf(dir string) string {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	best := ""
	var bestFields []string
	for _, line := range strings.Split(readFile("/proc/self/mounts"), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		mp := f[1]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, bestFields = mp, f
		}
	}
	if bestFields == nil {
		return ""
	}
	return bestFields[2] + " " + bestFields[0] + " on " + bestFields[1]
}

// memTotal is MemTotal from /proc/meminfo in GiB.
func memTotal() string {
	f := strings.Fields(procField("/proc/meminfo", "MemTotal")) // "24684084 kB"
	if len(f) != 2 || f[1] != "kB" {
		return strings.Join(f, " ")
	}
	kb, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return strings.Join(f, " ")
	}
	return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
}

// LoadAvg is the 1, 5 and 15 minute load averages.
func LoadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
