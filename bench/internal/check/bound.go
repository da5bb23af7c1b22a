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
	why := fmt.Sprintf("standalone cost %.1f µs of CPU per write (repd %.1f + fio %.1f) with the %d CPUs %.0f %% busy, "+
		"and each peer adds at least %.1f µs to send, %s (floor drill): at most %d CPUs / %.1f µs = %.0f IOPS",
		sa.CPU.Total(), sa.CPU.TargetUs, sa.CPU.FioUs, s.Machine.Nproc, 100*sa.CPU.Util, fl, what, s.Machine.Nproc, perIO, float64(s.Machine.Nproc)*1e6/perIO)
	return b, why + boundShare(s.Result(workload, num), perIO)
}

// boundShare says what keeps a target from the CPU bound: its IOPS are
// about its CPUs' busy share × CPUs / its CPU per write, the bound's CPUs
// / perIO, so it falls short by CPUs idle while its writes waited and by
// CPU spent per write beyond perIO. Empty without its CPU figures.
func boundShare(r *result.Result, perIO float64) string {
	if r == nil || r.Error != "" || r.CPU == nil || r.CPU.Total() == 0 || r.CPU.Util == 0 {
		return ""
	}
	c := r.CPU
	return fmt.Sprintf("; %s itself kept the CPUs %.0f %% busy and spent %.1f µs of CPU per write (its processes %.1f + fio %.1f) where the bound allows %.1f",
		r.Target, 100*c.Util, c.Total(), c.TargetUs, c.FioUs, perIO)
}

// FlushBound bounds the ratio of a protocol C target with one peer to
// standalone on a job that flushes (the database job), on this machine,
// where every node's files share one disk as the bench puts them: whatever
// the implementation, a flush under protocol C completes only once the
// Primary's and the Secondary's files are both durable, and the floor
// drill measured what two such fdatasyncs at once take on this disk
// (DatasyncSharedUs, against DatasyncUs alone). Each write between flushes
// also waits at least for the bare round trip between two processes, less
// the local pwrite that overlaps it (RTTUs4KProcess − PwriteUs4K, for
// 4 KiB: less than a 16 KiB write's). So a cycle of k writes and a flush
// takes at least standalone's cycle (k / its write IOPS) with its flush
// (fio's mean flush latency) replaced by the shared fdatasync, plus k
// round trips. 0 without the figures.
func FlushBound(s *result.Summary, num, den, workload string) (float64, string) {
	fl := s.Drills.FloorOK()
	if den != result.Standalone || fl == nil || fl.DatasyncSharedUs == 0 {
		return 0, ""
	}
	t := s.Target(num)
	sa := s.Result(workload, den)
	if t == nil || t.Meta.Kind != "repd" || t.Meta.Protocol != "C" || t.Meta.Peers != 1 ||
		sa == nil || sa.Error != "" || sa.Write == nil || sa.Write.IOPS == 0 || sa.Flush == nil || sa.Flush.N == 0 {
		return 0, ""
	}
	k := float64(sa.Write.IOs) / float64(sa.Flush.N)
	cycle := k * 1e6 / sa.Write.IOPS
	rtt := max(fl.RTTUs4KProcess-fl.PwriteUs4K, 0)
	least := cycle - sa.Flush.MeanUs + fl.DatasyncSharedUs + k*rtt
	if least <= 0 {
		return 0, ""
	}
	return cycle / least, fmt.Sprintf("standalone's cycle of %.1f writes and a flush took %.0f µs, its flush %.0f µs (fio's mean); "+
		"fdatasync after such writes took %.0f µs alone and %.0f µs with a second file's at the same time on this disk, "+
		"and each write waits at least %.0f µs more for the round trip (floor drill): at least %.0f µs a cycle",
		k, cycle, sa.Flush.MeanUs, fl.DatasyncUs, fl.DatasyncSharedUs, rtt, least)
}
