package check

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/units"
)

// Eval judges every target on s: the IOPS ratios, the memory bound and the
// drills.
func Eval(s *result.Summary) []result.Check {
	var cs []result.Check
	for _, c := range Ratios {
		ck := result.Check{Issue: c.Issue, Name: fmt.Sprintf("%s/%s IOPS on %s", c.Num, c.Den, c.Workload), Limit: fmt.Sprintf(">= %.2fx", c.Min)}
		num, den := s.Result(c.Workload, c.Num), s.Result(c.Workload, c.Den)
		switch {
		case num == nil || den == nil:
			ck.Status, ck.Detail = "SKIP", fmt.Sprintf("needs %s and %s with %s in the run", c.Num, c.Den, c.Workload)
		case num.Error != "":
			ck.Status, ck.Detail = "FAIL", c.Num+": "+num.Error
		case den.Error != "" || den.IOPS == 0:
			ck.Status, ck.Detail = "SKIP", c.Den+" failed: "+den.Error
		default:
			ck.Value = num.IOPS / den.IOPS
			ck.Status = passFail(ck.Value >= c.Min)
			ck.Detail = fmt.Sprintf("%sx (%s %.0f, %s %.0f IOPS)", shown(ck.Value, c.Min, 2, true), c.Num, num.IOPS, c.Den, den.IOPS)
			if b, _ := CPUBound(s, c.Num, c.Den, c.Workload); c.OfBound > 0 && b > 0 {
				ck.Detail += fmt.Sprintf("; %.0f %% of the CPU bound (target %.0f %%)", 100*ck.Value/b, 100*c.OfBound)
				if ck.Value < c.Min && ck.Value >= c.OfBound*b {
					ck.Status = "PASS"
					ck.Detail += fmt.Sprintf("; %.2fx is out of reach on this machine, the bound is met instead", c.Min)
				}
			}
			if rr := roundRatios(num, den); rr != "" {
				ck.Detail += "; round by round " + rr
			}
			if c.Note != "" {
				ck.Detail += "; " + c.Note
			}
			if p := s.Result(c.Workload, c.Num+"-pinned"); p != nil && p.Error == "" {
				ck.Detail += fmt.Sprintf("; with each node on CPUs of its own (%s-pinned, not judged): %.2fx", c.Num, p.IOPS/den.IOPS)
			}
			m, md := s.Result(c.Workload, c.Num+"-machines"), s.Result(c.Workload, result.StandaloneMachine)
			if c.Den == result.Standalone && m != nil && m.Error == "" && md != nil && md.Error == "" && md.IOPS > 0 {
				ck.Detail += fmt.Sprintf("; one node per machine modelled (fio and the Primary on the first half of the CPUs, the peer on the rest, against standalone and fio on the first half: %s-machines/%s, not judged): %.2fx", c.Num, result.StandaloneMachine, m.IOPS/md.IOPS)
			}
			if b := LittleBound(s, c.Num, c.Workload); b > 0 {
				ck.Detail += fmt.Sprintf("; protocol C at this queue depth cannot exceed QD/RTT = %.0f IOPS (%.2fx) over the measured RTT", b, b/den.IOPS)
			}
			for _, bd := range []struct {
				where string
				bound func(*result.Summary, string, string, string) (float64, string)
			}{
				{"on this machine's CPUs", CPUBound},
				{"with both nodes' files on this machine's one disk", FlushBound},
			} {
				if b, why := bd.bound(s, c.Num, c.Den, c.Workload); b > 0 {
					ck.Detail += fmt.Sprintf("; %s it cannot exceed %.2fx: %s", bd.where, b, why)
					if b < c.Min && c.OfBound == 0 {
						ck.Detail += fmt.Sprintf("; so %.2fx is out of reach here (%.0f %% of the bound reached)", c.Min, 100*ck.Value/b)
					}
				}
			}
		}
		cs = append(cs, ck)
	}
	cs = append(cs, latencies(s)...)
	cs = append(cs, cpuPerIOs(s)...)
	cs = append(cs, rssBounds(s)...)
	ck := result.Check{Issue: 2, Name: "repd max RSS", Limit: "< 100 MiB"}
	switch ti := s.Target(result.Standalone); {
	case ti == nil || ti.MaxRSS == 0:
		ck.Status, ck.Detail = "SKIP", "repd did not run"
	default:
		ck.Value = float64(ti.MaxRSS) / (1 << 20)
		ck.Status = passFail(ti.MaxRSS < RSSLimit)
		ck.Detail = fmt.Sprintf("%.1f MiB", ck.Value)
	}
	cs = append(cs, ck)
	return append(cs, Drills(s.Drills)...)
}

// pair returns the results of num and den on workload, or a SKIP or FAIL
// check's status and detail if they cannot be compared.
func pair(s *result.Summary, workload, num, den string) (n, d *result.Result, status, detail string) {
	n, d = s.Result(workload, num), s.Result(workload, den)
	switch {
	case n == nil || d == nil:
		return nil, nil, "SKIP", fmt.Sprintf("needs %s and %s with %s in the run", num, den, workload)
	case n.Error != "":
		return nil, nil, "FAIL", num + ": " + n.Error
	case d.Error != "":
		return nil, nil, "SKIP", den + " failed: " + d.Error
	}
	return n, d, "", ""
}

// latencies judges the median write latencies (Latencies).
func latencies(s *result.Summary) []result.Check {
	var cs []result.Check
	for _, c := range Latencies {
		ck := result.Check{Issue: c.Issue, Name: fmt.Sprintf("%s p50 write latency on %s", c.Num, c.Workload), Limit: fmt.Sprintf("<= %s p50 + %.0f µs", c.Den, c.MaxAddUs)}
		num, den, st, why := pair(s, c.Workload, c.Num, c.Den)
		switch {
		case st != "":
			ck.Status, ck.Detail = st, why
		case num.Write == nil || den.Write == nil || den.Write.P50us == 0:
			ck.Status, ck.Detail = "SKIP", "no write latency measured"
		default:
			ck.Value = num.Write.P50us - den.Write.P50us
			ck.Status = passFail(ck.Value <= c.MaxAddUs)
			ck.Detail = fmt.Sprintf("+%s µs (%s %.0f µs, %s %.0f µs)", shown(ck.Value, c.MaxAddUs, 0, false), c.Num, num.Write.P50us, c.Den, den.Write.P50us)
			if f := s.Drills.FloorOK(); f != nil && f.RTTUs4KProcess > 0 {
				ck.Detail += fmt.Sprintf("; the floor drill's bare 4 KiB round trip (send, pwrite, answer) took %.0f µs between two processes (%.0f µs within one)", f.RTTUs4KProcess, f.RTTUs4K)
				// A protocol-C write is standalone's plus that round trip
				// to the peer, less the local pwrite that overlaps it.
				if add := max(f.RTTUs4KProcess-f.PwriteUs4K, 0); add > 0 {
					least := den.Write.P50us + add
					where := fmt.Sprintf("%.0f µs above it", num.Write.P50us-least)
					if num.Write.P50us < least {
						where = fmt.Sprintf("%.0f µs below it (the drill and the job ran at different times)", least-num.Write.P50us)
					}
					ck.Detail += fmt.Sprintf("; so %s's p50 cannot be below %.0f µs here (%s's + %.0f µs: the round trip less the %.1f µs pwrite that overlaps it); it is %s",
						c.Num, least, c.Den, add, f.PwriteUs4K, where)
					if add > c.MaxAddUs {
						ck.Detail += fmt.Sprintf("; +%.0f µs is out of reach on this machine", c.MaxAddUs)
					}
				}
			} else if f != nil && f.RTTUs4K > 0 {
				ck.Detail += fmt.Sprintf("; the floor drill's bare 4 KiB round trip (send, pwrite, answer) took %.0f µs", f.RTTUs4K)
			}
		}
		cs = append(cs, ck)
	}
	return cs
}

// cpuPerIOs judges the CPU time per write of replicated targets (CPUPerIOs).
func cpuPerIOs(s *result.Summary) []result.Check {
	var cs []result.Check
	for _, c := range CPUPerIOs {
		ck := result.Check{Issue: c.Issue, Name: fmt.Sprintf("%s CPU per write on %s", c.Num, c.Workload), Limit: fmt.Sprintf("<= %.0fx %s's", c.MaxX, c.Den)}
		num, den, st, why := pair(s, c.Workload, c.Num, c.Den)
		switch {
		case st != "":
			ck.Status, ck.Detail = st, why
		case num.CPU == nil || den.CPU == nil || den.CPU.TargetUs == 0:
			ck.Status, ck.Detail = "SKIP", "no CPU time measured (the bench reads it from /proc)"
		default:
			ck.Value = num.CPU.TargetUs / den.CPU.TargetUs
			ck.Status = passFail(ck.Value <= c.MaxX)
			ck.Detail = fmt.Sprintf("%sx (%s %.1f µs, %s %.1f µs of its processes' CPU per write; fio's left out)", shown(ck.Value, c.MaxX, 1, false), c.Num, num.CPU.TargetUs, c.Den, den.CPU.TargetUs)
		}
		cs = append(cs, ck)
	}
	return cs
}

// rssBounds judges replicated targets' memory (RSSBounds).
func rssBounds(s *result.Summary) []result.Check {
	var cs []result.Check
	for _, c := range RSSBounds {
		lim := c.Journal + c.Slack
		ck := result.Check{Issue: c.Issue, Name: fmt.Sprintf("%s max RSS on %s", c.Target, c.Workload),
			Limit: fmt.Sprintf("<= journal-size %s + %s", units.Bytes(c.Journal), units.Bytes(c.Slack))}
		r := s.Result(c.Workload, c.Target)
		switch {
		case r == nil:
			ck.Status, ck.Detail = "SKIP", fmt.Sprintf("needs %s with %s in the run", c.Target, c.Workload)
		case r.MaxRSS == 0:
			ck.Status, ck.Detail = "SKIP", "no RSS sampled"
		default:
			ck.Value = float64(r.MaxRSS) / (1 << 20)
			ck.Status = passFail(r.MaxRSS <= lim)
			ck.Detail = fmt.Sprintf("%.1f MiB (the largest of its processes), limit %s", ck.Value, units.Bytes(lim))
		}
		cs = append(cs, ck)
	}
	return cs
}

// Drills judges the drills: RTO, RPO, the wire ratios and the sync drill.
func Drills(d *result.Drills) []result.Check {
	skip := func(issue int, name, limit, why string) result.Check {
		return result.Check{Issue: issue, Name: name, Limit: limit, Status: "SKIP", Detail: why}
	}
	if d == nil {
		d = &result.Drills{}
	}
	var cs []result.Check
	const rtoName, rtoLimit = "RTO: kill -9 primary until first write on promoted secondary", "< 2 s"
	switch r := d.RTO; {
	case r == nil:
		cs = append(cs, skip(7, rtoName, rtoLimit, "rto drill not run"))
	case r.Error != "":
		cs = append(cs, result.Check{Issue: 7, Name: rtoName, Limit: rtoLimit, Status: "FAIL", Detail: r.Error})
	default:
		cs = append(cs, result.Check{Issue: 7, Name: rtoName, Limit: rtoLimit, Value: r.TotalMs, Status: passFail(r.TotalMs < RTOLimitMs),
			Detail: fmt.Sprintf("%.0f ms (detect %.0f, promote %.0f, first write %.0f)", r.TotalMs, r.DetectMs, r.PromoteMs, r.FirstWriteMs)})
	}
	cs = append(cs, rtoAuto(d.RTOAuto))
	for _, proto := range []string{"C", "A"} {
		name := "RPO under protocol " + proto + " over the WAN link"
		limit := "0 bytes lost"
		if proto == "A" {
			limit = "lost <= journal-size"
		}
		i := slices.IndexFunc(d.RPO, func(r result.RPOResult) bool { return r.Protocol == proto })
		if i < 0 {
			cs = append(cs, skip(7, name, limit, "rpo drill not run"))
			continue
		}
		r := d.RPO[i]
		ck := result.Check{Issue: 7, Name: name, Limit: limit, Value: float64(r.LostBytes)}
		switch {
		case r.Error != "":
			ck.Status, ck.Detail = "FAIL", r.Error
		case r.Acked == 0:
			ck.Status, ck.Detail = "FAIL", "no write was acknowledged"
		case proto == "C":
			ck.Status = passFail(r.LostBytes == 0)
		default:
			ck.Status = passFail(r.LostBytes <= r.JournalBound)
		}
		if r.Error == "" {
			ck.Detail = fmt.Sprintf("%d of %d acknowledged writes lost (%s, %.2f s of writes); journal-size %s",
				r.LostWrites, r.Acked, units.Bytes(r.LostBytes), r.LostSeconds, units.Bytes(r.JournalBound))
		}
		cs = append(cs, ck)
	}
	for _, kind := range []string{"csv", "repeat-4k", "random"} {
		lim := WireLimits[kind]
		name := "wire/logical bytes, zstd, " + kind
		limit := fmt.Sprintf("<= %.3f", lim)
		i := slices.IndexFunc(d.Wire, func(w result.WireResult) bool { return w.Data == kind })
		if i < 0 {
			cs = append(cs, skip(5, name, limit, "wire drill not run"))
			continue
		}
		w := d.Wire[i]
		ck := result.Check{Issue: 5, Name: name, Limit: limit, Value: w.Ratio}
		if w.Error != "" {
			ck.Status, ck.Detail = "FAIL", w.Error
		} else {
			ck.Status = passFail(w.Ratio <= lim)
			ck.Detail = fmt.Sprintf("%.3f (%s on the wire for %s written)", w.Ratio, units.Bytes(w.Wire), units.Bytes(w.Logical))
		}
		cs = append(cs, ck)
	}
	cs = append(cs, Sync(d.Sync)...)
	return append(cs, Backup(d.Backup)...)
}

// Backup judges the backup drill (issue 19): the incremental's bytes read
// and time, and the Primary's writes during backups from the Secondary.
func Backup(r *result.BackupResult) []result.Check {
	const (
		readName = "backup drill: incremental after 1% rewritten (64 KiB blocks): bytes read / device"
		timeName = "backup drill: incremental backup time / full backup time"
		loadName = "backup drill: fio 4k randwrite QD32 on the Primary during backups from the Secondary / without"
	)
	cks := []result.Check{
		{Issue: 19, Name: readName, Limit: fmt.Sprintf("<= %g%%", 100*BackupIncReadMax)},
		{Issue: 19, Name: timeName, Limit: fmt.Sprintf("<= 1/%.0f", 1/BackupIncTimeMax)},
		{Issue: 19, Name: loadName, Limit: fmt.Sprintf(">= %.2fx", BackupLoadMin)},
	}
	if r == nil {
		for i := range cks {
			cks[i].Status, cks[i].Detail = "SKIP", "backup drill not run"
		}
		return cks
	}
	dev := units.Bytes(r.DeviceBytes)
	quick := ""
	if r.Quick {
		quick = " (--quick: " + dev + ", not the 1 GiB of the issue)"
	}
	read, tm, load := &cks[0], &cks[1], &cks[2]
	switch inc, full := r.Inc, r.Full; {
	case full == nil || inc == nil || full.Error != "" || inc.Error != "":
		why := r.Error
		for _, b := range []*result.BackupRun{full, inc} {
			if b != nil && b.Error != "" {
				why = b.Error
			}
		}
		read.Status, read.Detail = "FAIL", "not measured: "+why
		tm.Status, tm.Detail = "FAIL", "not measured: "+why
	default:
		read.Value = 100 * r.IncReadShare
		read.Status = passFail(r.IncReadShare <= BackupIncReadMax)
		read.Detail = fmt.Sprintf("%.2f%%: read %s of %s for %s rewritten%s", read.Value, units.Bytes(inc.BytesRead), dev, units.Bytes(r.RewrittenBytes), quick)
		tm.Value = r.IncTimeRatio
		tm.Status = passFail(r.IncTimeRatio > 0 && r.IncTimeRatio <= BackupIncTimeMax)
		tm.Detail = fmt.Sprintf("1/%.0f: incremental %.0f ms, full %.0f ms (repctl backup start to exit; a repctl status took %.0f ms then); "+
			"by the durations repctl reported, %.2f s and %.2f s (1/%.0f)%s", 1/r.IncTimeRatio, inc.WallMs, full.WallMs, r.CtlFloorMs,
			inc.ReportedSeconds, full.ReportedSeconds, full.ReportedSeconds/max(inc.ReportedSeconds, 1e-9), quick)
	}
	i := slices.IndexFunc(r.Load, func(l result.BackupLoad) bool { return l.Case == "backup" })
	switch {
	case i < 0:
		load.Status, load.Detail = "FAIL", "not measured: "+r.Error
	case r.Load[i].Error != "":
		load.Status, load.Detail = "FAIL", r.Load[i].Error
	case r.BaseIOPS == 0:
		load.Status, load.Detail = "FAIL", "no run without a backup: "+r.Error
	default:
		load.Value = r.BackupRatio
		load.Status = passFail(r.BackupRatio >= BackupLoadMin)
		load.Detail = fmt.Sprintf("%sx (%.0f IOPS during %d full backups from the Secondary, %.0f without)", shown(r.BackupRatio, BackupLoadMin, 2, true), r.Load[i].IOPS, r.Load[i].Backups, r.BaseIOPS)
		if len(r.BackupRatios) > 1 {
			rs := make([]string, len(r.BackupRatios))
			for k, v := range r.BackupRatios {
				rs[k] = fmt.Sprintf("%.2f", v)
			}
			load.Detail = fmt.Sprintf("%sx: the median of %d runs during full backups from the Secondary, each over the runs without just before and after it (%s)",
				shown(r.BackupRatio, BackupLoadMin, 2, true), len(r.BackupRatios), strings.Join(rs, ", "))
		}
		if j := slices.IndexFunc(r.Load, func(l result.BackupLoad) bool { return l.Case == "backup-paced" && l.Error == "" }); j >= 0 {
			load.Detail += fmt.Sprintf("; with the backups at --rate %s (no target) %.2fx", r.Load[j].Rate, r.Load[j].IOPS/r.BaseIOPS)
		}
		if r.SnapshotRatio > 0 {
			load.Detail += fmt.Sprintf("; with a fresh snapshot on the Primary itself (copy-on-write, no target) %.2fx", r.SnapshotRatio)
		}
		if r.SecondarySnapshotRatio > 0 {
			load.Detail += fmt.Sprintf(", on the Secondary alone %.2fx", r.SecondarySnapshotRatio)
		}
		if r.SecondaryLazyRatio > 0 {
			load.Detail += fmt.Sprintf(" (a lazy one, as backups take: %.2fx)", r.SecondaryLazyRatio)
		}
	}
	return cks
}

// rtoAuto judges the rto-auto drill's case with timeout = "2s" (issue 18).
func rtoAuto(rs []result.RTOAutoResult) result.Check {
	ck := result.Check{Issue: 18, Name: "RTO auto: Primary's host cut off (partition), timeout 2s, until a write completes on the elected successor",
		Limit: fmt.Sprintf("<= %g s", RTOAutoLimitMs/1000.0)}
	i := slices.IndexFunc(rs, func(r result.RTOAutoResult) bool { return r.TimeoutMs == RTOAutoTimeoutMs })
	if i < 0 {
		ck.Status, ck.Detail = "SKIP", "rto-auto drill not run"
		return ck
	}
	switch r := rs[i]; {
	case r.Error != "":
		ck.Status, ck.Detail = "FAIL", r.Error
	case r.Successor == "":
		ck.Status, ck.Detail = "FAIL", "no successor served a write"
	default:
		ck.Value = r.TotalMs
		ck.Status = passFail(r.TotalMs <= RTOAutoLimitMs)
		ck.Detail = fmt.Sprintf("%.0f ms (%s elected at %.0f ms, the old lease over by %.0f ms; lease %.0f ms, promise %.0f ms; %d client connections)",
			r.TotalMs, r.Successor, r.ElectedMs, r.LeaseEndMs, r.LeaseMs, r.PromiseMs, r.Attempts)
	}
	return ck
}

// Sync judges the sync drill (issue 4).
func Sync(r *result.SyncResult) []result.Check {
	const (
		resyncName = "resync of 10% dirty (1 MiB pieces) / fio 1 MiB seq write, same cluster"
		csumsName  = "checksum resync of an identical device: bytes the source sends"
		verifyName = "online verify of the device: rate (no target), differences"
	)
	resyncLimit := fmt.Sprintf(">= %.2fx", SyncRatioMin)
	csumsLimit := fmt.Sprintf("< %g%% of the device", 100*CSumsSourceMax)
	const verifyLimit = "completes, 0 KiB differ"
	if r == nil {
		return []result.Check{
			{Issue: 4, Name: resyncName, Limit: resyncLimit, Status: "SKIP", Detail: "sync drill not run"},
			{Issue: 4, Name: csumsName, Limit: csumsLimit, Status: "SKIP", Detail: "sync drill not run"},
			{Issue: 4, Name: verifyName, Limit: verifyLimit, Status: "SKIP", Detail: "sync drill not run"},
		}
	}
	dev := units.Bytes(r.DeviceBytes)
	ck := result.Check{Issue: 4, Name: resyncName, Limit: resyncLimit}
	i := slices.IndexFunc(r.Resync, func(c result.SyncCase) bool { return c.Name == "1m" })
	switch {
	case i < 0:
		ck.Status, ck.Detail = "FAIL", "not measured: "+r.Error
	case r.Resync[i].Error != "":
		ck.Status, ck.Detail = "FAIL", r.Resync[i].Error
	case r.RefMeanMBps == 0:
		ck.Status, ck.Detail = "SKIP", "no fio reference: "+r.Error
	default:
		c := r.Resync[i]
		ck.Value = c.Ratio
		ck.Status = passFail(c.Ratio >= SyncRatioMin)
		ck.Detail = fmt.Sprintf("%sx: %s dirty of %s resynced in %.0f ms, %.0f MB/s; fio %.0f MB/s (mean of %s)",
			shown(c.Ratio, SyncRatioMin, 2, true), units.Bytes(c.DirtyBytes), dev, c.ResyncMs, c.RateMBps, r.RefMeanMBps, units.MBpsList(r.RefMBps))
	}
	cs := []result.Check{ck}
	ck = result.Check{Issue: 4, Name: csumsName, Limit: csumsLimit}
	switch c := r.CSumsResync; {
	case c == nil:
		ck.Status, ck.Detail = "FAIL", "not measured: "+r.Error
	case c.Error != "":
		ck.Status, ck.Detail = "FAIL", c.Error
	default:
		ck.Value = c.SourcePct
		ck.Status = passFail(float64(c.SourceSent) < CSumsSourceMax*float64(r.DeviceBytes))
		ck.Detail = fmt.Sprintf("%s sent (%.3f%% of %s), %s of hashes received (%.2f%%), in %.0f ms (%.0f MB/s)",
			units.Bytes(c.SourceSent), c.SourcePct, dev, units.Bytes(c.HashesRecv), c.HashesPct, c.ResyncMs, c.RateMBps)
	}
	cs = append(cs, ck)
	ck = result.Check{Issue: 4, Name: verifyName, Limit: verifyLimit}
	switch v := r.Verify; {
	case v == nil:
		ck.Status, ck.Detail = "FAIL", "not measured: "+r.Error
	case v.Error != "":
		ck.Status, ck.Detail = "FAIL", v.Error
	default:
		ck.Value = v.RateMBps
		ck.Status = passFail(v.MismatchKiB == 0)
		ck.Detail = fmt.Sprintf("%.0f MB/s (%s in %.0f ms), %d KiB differ", v.RateMBps, dev, v.Ms, v.MismatchKiB)
	}
	return append(cs, ck)
}

// shown formats a judged value v with d decimals, or more where d would
// round it onto the other side of the limit it was judged against: a
// ratio of 0.6451 against ">= 0.65" reads 0.645, not 0.65, so that a FAIL
// never shows a value that meets its limit, nor a PASS one that misses it.
// atLeast is the limit's sense: v >= limit passes, else v <= limit.
func shown(v, limit float64, d int, atLeast bool) string {
	ok := func(x float64) bool {
		if atLeast {
			return x >= limit
		}
		return x <= limit
	}
	for ; ; d++ {
		s := strconv.FormatFloat(v, 'f', d, 64)
		if r, _ := strconv.ParseFloat(s, 64); ok(r) == ok(v) || d >= 6 {
			return s
		}
	}
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// roundRatios lists num's IOPS over den's round by round ("0.37x 0.41x
// 0.38x"): the bench interleaves the targets in every round, so round i of
// both ran side by side, and the spread of these ratios is the noise the
// median ratio is judged through. Empty unless both ran the same number of
// rounds, more than one, every round with IOPS.
func roundRatios(num, den *result.Result) string {
	a, b := num.RoundsIOPS, den.RoundsIOPS
	if len(a) < 2 || len(a) != len(b) {
		return ""
	}
	rs := make([]string, len(a))
	for i := range a {
		if a[i] <= 0 || b[i] <= 0 {
			return ""
		}
		rs[i] = fmt.Sprintf("%.2fx", a[i]/b[i])
	}
	return strings.Join(rs, " ")
}
