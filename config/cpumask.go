package config

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxCPUs is the highest CPU count a cpu-mask can name: the kernel's
// CPU_SETSIZE as sched_setaffinity(2) takes it from Go (unix.CPUSet).
const MaxCPUs = 1024

// CPUMask is a set of CPUs, written as DRBD writes its cpu-mask: a
// hexadecimal number, bit 0 for CPU 0 ("3" is CPUs 0 and 1, "0x4" CPU 2),
// optionally in comma-separated groups of 8 hex digits (the first may
// have fewer) with the highest CPUs first ("1,00000000" is CPU 32). "0" or "" is the empty
// set: no affinity, the scheduler decides (the default). A string in TOML;
// an integer is refused, since DRBD's "cpu-mask 10" means CPU 4, not CPUs
// 1 and 3.
type CPUMask struct {
	cpus []int // ascending
	text string
	set  bool // written in the file, even as "0"
}

// ParseCPUMask parses DRBD's hexadecimal cpu-mask notation.
func ParseCPUMask(s string) (CPUMask, error) {
	t := strings.TrimSpace(s)
	hex := strings.TrimPrefix(strings.TrimPrefix(t, "0x"), "0X")
	if hex == "" {
		if t != "" {
			return CPUMask{}, fmt.Errorf("cpu-mask %q: no hex digits after 0x", s)
		}
		return CPUMask{}, nil
	}
	if len(hex) > MaxCPUs/4+MaxCPUs/32 {
		return CPUMask{}, fmt.Errorf("cpu-mask %q: longer than a mask of %d CPUs", s, MaxCPUs)
	}
	groups := strings.Split(hex, ",")
	var digits strings.Builder
	for i, g := range groups {
		if len(groups) > 1 && (g == "" || len(g) > 8 || (i > 0 && len(g) != 8)) {
			return CPUMask{}, fmt.Errorf("cpu-mask %q: groups separated by commas have 8 hex digits each (the first may have fewer)", s)
		}
		digits.WriteString(g)
	}
	d := digits.String()
	var cpus []int
	for i := len(d) - 1; i >= 0; i-- {
		v, err := strconv.ParseUint(d[i:i+1], 16, 8)
		if err != nil {
			return CPUMask{}, fmt.Errorf("cpu-mask %q: %q is not a hex digit (write the mask in hex, e.g. \"3\" for CPUs 0 and 1)", s, d[i:i+1])
		}
		for b := range 4 {
			if v&(1<<b) == 0 {
				continue
			}
			cpu := (len(d)-1-i)*4 + b
			if cpu >= MaxCPUs {
				return CPUMask{}, fmt.Errorf("cpu-mask %q: names CPU %d, beyond the %d a mask can hold", s, cpu, MaxCPUs)
			}
			cpus = append(cpus, cpu)
		}
	}
	return CPUMask{cpus: cpus, text: t}, nil
}

// UnmarshalTOML implements toml.Unmarshaler.
func (m *CPUMask) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("cpu-mask %v: write the hexadecimal mask as a string, e.g. cpu-mask = \"3\" for CPUs 0 and 1", v)
	}
	x, err := ParseCPUMask(s)
	if err != nil {
		return err
	}
	*m = x
	m.set = true
	return nil
}

// CPUs is the mask's CPUs in ascending order; none for the empty mask.
func (m CPUMask) CPUs() []int { return m.cpus }

// Empty reports whether the mask names no CPU (no affinity).
func (m CPUMask) Empty() bool { return len(m.cpus) == 0 }

// String is the mask as written.
func (m CPUMask) String() string {
	if m.Empty() {
		return "0"
	}
	return m.text
}

// NodeCPUMask is node n's cpu-mask: its own if the file sets one (a node's
// "0" lets the scheduler decide for it under a resource-wide mask), else
// the resource's.
func (f *File) NodeCPUMask(n *Node) CPUMask {
	if n.CPUMask.set {
		return n.CPUMask
	}
	return f.Resource.CPUMask
}
