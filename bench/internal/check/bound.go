package check

import (
	"fmt"
	"strings"

	"github.com/repd/repd/bench/internal/result"
)

// The bounds below are models of what a target can reach at all on this
// machine and link, whatever the implementation; a check's detail quotes
// them next to the measured ratio.

// LittleBound is the most IOPS a protocol C link target can reach on a
// workload by Little's law: every write waits at least one round trip of
// the link, so IOPS <= queue depth / RTT (0 if it does not apply).
func LittleBound(s *result.Summary, target, workload string) float64 {
	t := s.Target(target)
	if t == nil || t.Meta.Protocol != "C" || t.Meta.Link == "" {
		return 0
	}
	qd := 0
	switch workload {
	case "randwrite-4k-qd32":
		qd = 32
	case "randwrite-4k-qd1":
		qd = 1
	default:
		return 0
	}
	for _, l := range s.Links {
		if l.Name == t.Meta.Link && l.MeasuredRTTms > 0 {
			return float64(qd) / (l.MeasuredRTTms / 1000)
		}
	}
	return 0
}

// CPUBound bounds the ratio of a replicated target's IOPS to standalone's
// on one machine, whatever the implementation: each of its writes costs at
// least what a standalone write cost (target and fio, CPU per I/O) plus,
// per peer, the floor drill's cost of sending, receiving and writing the
// bytes once more (with a frame MAC, that of tagging the frame and
// checking the tag too), and all of it shares these CPUs. Hence its IOPS are at
// most CPUs / (standalone CPU per I/O + peers × floor), against
// standalone's measured IOPS. 0 without the CPU figures or the floor
// drill.
func CPUBound(s *result.Summary, num, den, workload string) (float64, string) {
	if den != result.Standalone || s.Drills == nil || s.Drills.Floor == nil || s.Drills.Floor.Error != "" || s.Machine.Nproc == 0 {
		return 0, ""
	}
	t := s.Target(num)
	var sa *result.Result
	for i := range s.Results {
		if r := &s.Results[i]; r.Workload == workload && r.Target == result.Standalone && r.Error == "" {
			sa = r
		}
	}
	if t == nil || t.Meta.Kind != "repd" || t.Meta.Peers == 0 || sa == nil || sa.CPU == nil || sa.IOPS == 0 {
		return 0, ""
	}
	fl, mac := s.Drills.Floor.Us4K, s.Drills.Floor.MACUs4K
	what := "receive and pwrite 4 KiB"
	if workload == "seqwrite-1m-qd8" {
		fl, mac, what = s.Drills.Floor.Us1M, s.Drills.Floor.MACUs1M, "receive and pwrite 1 MiB"
	} else if !strings.HasPrefix(workload, "randwrite-4k") {
		return 0, ""
	}
	perPeer := fl
	if t.Meta.FrameMAC && mac > 0 {
		// Its frames carry tags: each peer's copy is tagged and checked.
		perPeer += mac
		what += fmt.Sprintf(", and %.1f µs to tag its frame and check the tag", mac)
	}
	perIO := sa.CPU.Total() + float64(t.Meta.Peers)*perPeer
	b := float64(s.Machine.Nproc) * 1e6 / perIO / sa.IOPS
	return b, fmt.Sprintf("standalone cost %.1f µs of CPU per write (repd %.1f + fio %.1f) with the %d CPUs %.0f %% busy, "+
		"and each peer adds at least %.1f µs to send, %s (floor drill): at most %d CPUs / %.1f µs = %.0f IOPS",
		sa.CPU.Total(), sa.CPU.TargetUs, sa.CPU.FioUs, s.Machine.Nproc, 100*sa.CPU.Util, fl, what, s.Machine.Nproc, perIO, float64(s.Machine.Nproc)*1e6/perIO)
}
