package target

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/repd/repd/bench/internal/result"
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

// machines models one node per machine on this one: the Primary and fio
// on the first half of the CPUs the bench may use (the application's
// machine), the peer on the rest (a machine of its own). Its standalone
// twin, repd-machine, runs repd and fio on the same first half, so the
// ratio of the two compares like with like: what replication costs the
// application's machine, with the peer's work on its own CPUs as it
// would be. On a 2-vCPU guest this also keeps fio and the Primary on one
// vCPU, whose hand-offs then cost no interrupt between vCPUs, while the
// guest would otherwise move the three processes between its vCPUs at
// every write. Not in the default run (--targets
// repd,repd-machine,repd-c1,repd-c1-machines).
func machines(proto string) Target {
	base := Replicated(proto, 1, "none", nil)
	rc := RepdConfig{Name: base.Name + "-machines", Nodes: []string{"alpha", "bravo"}, Protocol: proto}
	rc.Desc = fmt.Sprintf("repd protocol %s, 1 peer, loopback, one node per machine modelled: fio and the Primary on the first half of the CPUs, the peer on the rest", proto)
	t := machineTarget(rc)
	t.Meta = base.Meta
	t.Meta.Machines = true
	return t
}

// machine is repd standalone with fio, both on the first half of the
// CPUs: the application's machine of the -machines targets.
func machine() Target {
	rc := RepdConfig{Name: result.StandaloneMachine, Desc: "repd standalone (one node) and fio on the first half of the CPUs: the Primary's machine of the -machines targets", Nodes: []string{"alpha"}, Protocol: "C"}
	t := machineTarget(rc)
	t.Meta = result.TargetMeta{Kind: "repd", Group: result.GroupLoopback, Machines: true}
	return t
}

// machineTarget starts rc with node 0 on the first half of the CPUs, node
// 1 (if any) on the rest, and fio on node 0's CPUs.
func machineTarget(rc RepdConfig) Target {
	return Target{
		Name: rc.Name,
		Desc: rc.Desc,
		Start: func(ctx context.Context, env Env) (*Endpoint, error) {
			first, rest, err := halves()
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrSkip, err)
			}
			rc.CPUMasks = []string{HexMask(first), HexMask(rest)}[:len(rc.Nodes)]
			c, err := StartCluster(ctx, env, rc)
			if err != nil {
				return nil, err
			}
			ep := c.Endpoint()
			ep.FioArgs = append(ep.FioArgs, "--cpus_allowed="+cpuList(first))
			ep.Notes = append(ep.Notes, fmt.Sprintf("cpu-mask %s; fio --cpus_allowed=%s", strings.Join(rc.CPUMasks, " / "), cpuList(first)))
			return ep, nil
		},
	}
}

// cpuList writes CPUs as fio's cpus_allowed takes them: "0,1,2".
func cpuList(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}

// splitCPUs is the cpu-masks of a Primary and its peer: the first half
// of the CPUs this process may run on, and the rest.
func splitCPUs() ([]string, error) {
	first, rest, err := halves()
	if err != nil {
		return nil, err
	}
	return []string{HexMask(first), HexMask(rest)}, nil
}

// halves is the first half of the CPUs this process may run on, and the
// rest.
func halves() (first, rest []int, err error) {
	cpus, err := affinityOf(0)
	if err != nil {
		return nil, nil, fmt.Errorf("read the CPU affinity: %w", err)
	}
	if len(cpus) < 2 {
		return nil, nil, fmt.Errorf("needs two CPUs to pin the nodes apart; this process may run on %d", len(cpus))
	}
	half := len(cpus) / 2
	return cpus[:half], cpus[half:], nil
}

// affinityOf is the CPUs the thread or process pid may run on (0: this
// one).
func affinityOf(pid int) ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(pid, &set); err != nil {
		return nil, err
	}
	var cpus []int
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
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
