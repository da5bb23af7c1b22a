package target

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// pinned is repd-c1 or repd-a1 with each node's threads on CPUs of its
// own (cpu-mask): the Primary on the first half of the CPUs the bench may
// use, the peer on the rest; fio is not pinned. Two machines do not
// share CPUs, while on one VM the guest may place both nodes and fio on
// one vCPU at low load (the database job's writes under protocol C then
// take turns on it); this variant shows what the same code does when the
// nodes cannot. It is not two machines either: the Primary gets half the
// CPUs, which standalone has all of. Not in the default run (--targets
// repd-c1,repd-c1-pinned).
func pinned(proto string) Target {
	base := Replicated(proto, 1, "none", nil)
	rc := RepdConfig{Name: base.Name + "-pinned", Nodes: []string{"alpha", "bravo"}, Protocol: proto}
	masks, err := splitCPUs()
	rc.CPUMasks = masks
	rc.Desc = fmt.Sprintf("repd protocol %s, 1 peer, loopback, each node pinned to its own CPUs (cpu-mask %s)", proto, strings.Join(masks, " / "))
	t := repdTarget(rc)
	t.Meta = base.Meta
	t.Meta.Pinned = true
	if err != nil {
		t.Desc = fmt.Sprintf("repd protocol %s, 1 peer, loopback, each node pinned to its own CPUs", proto)
		t.Start = func(context.Context, Env) (*Endpoint, error) { return nil, fmt.Errorf("%w: %v", ErrSkip, err) }
	}
	return t
}

// splitCPUs is the cpu-masks of a Primary and its peer: the first half
// of the CPUs this process may run on, and the rest.
func splitCPUs() ([]string, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("read the CPU affinity: %w", err)
	}
	var cpus []int
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		return nil, fmt.Errorf("needs two CPUs to pin the nodes apart; this process may run on %d", len(cpus))
	}
	half := len(cpus) / 2
	return []string{HexMask(cpus[:half]), HexMask(cpus[half:])}, nil
}

// HexMask writes CPUs as a cpu-mask (hexadecimal, bit 0 for CPU 0).
func HexMask(cpus []int) string {
	top := 0
	for _, c := range cpus {
		top = max(top, c)
	}
	digits := make([]byte, top/4+1)
	for _, c := range cpus {
		digits[len(digits)-1-c/4] |= 1 << (c % 4)
	}
	for i, d := range digits {
		digits[i] = "0123456789abcdef"[d]
	}
	return string(digits)
}
