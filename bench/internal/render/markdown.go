// Package render writes a benchmark run for people: the Markdown report
// (report.md) and the gnuplot charts, from a result.Summary alone.
package render

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/repd/repd/bench/internal/check"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/units"
)

// CheckLines are the PASS/FAIL lines printed by --check.
func CheckLines(cs []result.Check) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "%s  issue %d: %s (%s): %s\n", c.Status, c.Issue, c.Name, c.Limit, c.Detail)
	}
	return b.String()
}

// Markdown renders the report; workloads describe the workloads by name.
func Markdown(s *result.Summary, workloads map[string]string) string {
	var b strings.Builder
	m := s.Machine
	fmt.Fprintf(&b, "# repd benchmark %s\n\n", s.Started.Format("2006-01-02 15:04:05 MST"))
	if s.Interrupted {
		b.WriteString("**Interrupted: partial results.**\n\n")
	}
	fmt.Fprintf(&b, "- machine: %s, %d CPUs, %s, %s RAM, kernel %s\n", m.Host, m.Nproc, m.CPU, m.MemTotal, m.Kernel)
	fmt.Fprintf(&b, "- load average (1/5/15 min): %s at start, %s at end; the machine is shared, expect noise\n", m.LoadAvg, s.LoadEnd)
	fmt.Fprintf(&b, "- tools: %s; %s; %s; %s\n", m.Fio, m.Nbdkit, m.QemuNBD, m.Go)
	if m.Commit != "" {
		fmt.Fprintf(&b, "- repd commit: %s\n", m.Commit)
	}
	o := s.Options
	fill := "sparse"
	if o.Prealloc {
		fill = "fallocated"
	}
	fmt.Fprintf(&b, "- backing: fresh %s %s file per node on %s; NBD over %s; peers on loopback TCP\n", fill, units.Size(o.SizeBytes), m.Filesystem, o.Transport)
	cache := "; the page cache kept between jobs"
	if o.DropCache {
		cache = ", then the page cache dropped, so every job starts from a cold cache whatever ran before it"
	}
	fmt.Fprintf(&b, "- each job: %d s + %d s ramp, targets interleaved per workload; reads after a 1M sequential prefill; sync(2) before every job, so no job pays for an earlier job's writeback%s\n", o.RuntimeSec, o.RampSec, cache)
	if o.Precondition {
		b.WriteString("- before every run of a write job, one sequential pass over the whole target with the job's block size (then sync(2)): the job is measured in its steady state, every block it writes written before and cached on every node, not while the page cache is first allocated (which the slower targets' windows would include more of); not the targets behind a shaped link, through which the pass would take too long\n")
	}
	if o.Repeat > 1 {
		fmt.Fprintf(&b, "- %d rounds of every job (each round runs every target once, in turn, starting one target later than the round before); each figure is the job's median round, ratios are ratios of medians\n", o.Repeat)
	}
	if !s.Finished.IsZero() {
		fmt.Fprintf(&b, "- duration: %s\n", s.Finished.Sub(s.Started).Round(time.Second))
	}
	b.WriteString("\n")

	group := map[string]string{}
	for _, t := range s.Targets {
		group[t.Name] = t.Meta.Group
	}
	titles := map[string]string{
		result.GroupLoopback:    "## Loopback: every workload, nodes on one machine, no added delay",
		result.GroupCompression: "## Compression (zstd) on loopback (run interleaved with the loopback targets)",
		result.GroupLinks:       "## Links: replication through a link-shaping proxy (faultnet)",
	}
	for _, g := range []string{result.GroupLoopback, result.GroupCompression, result.GroupLinks} {
		var rows []result.Result
		for _, r := range s.Results {
			if group[r.Target] == g {
				rows = append(rows, r)
			}
		}
		if len(rows) == 0 {
			continue
		}
		b.WriteString(titles[g] + "\n\n")
		if g == result.GroupLinks && len(s.Links) > 0 {
			b.WriteString("| link | shaping | added RTT | measured RTT through the proxy |\n|---|---|---:|---:|\n")
			for _, l := range s.Links {
				m := fmt.Sprintf("%.2f ms", l.MeasuredRTTms)
				if l.Error != "" {
					m = "error: " + mdEscape(l.Error)
				}
				fmt.Fprintf(&b, "| %s | %s | %g ms | %s |\n", l.Name, l.Desc, l.RTTms, m)
			}
			b.WriteString("\n*measured RTT*: median of 25 round trips of a 4 KiB message through a proxy shaped like the link to a loopback echo server. " +
				"What exceeds the added RTT is the proxy's own cost (it runs in the harness, on the same CPUs): read the link results against the measured RTT. " +
				"A link without a bandwidth cap carries a 10 Gbit/s bandwidth-delay product in flight per direction (at least 4 MiB); a capped one is paced to its cap.\n\n")
		}
		b.WriteString("| workload | target | IOPS | MB/s | p50 µs | p99 µs | × standalone | × nbdkit | CPU µs/IO target + fio | CPUs busy | rounds (IOPS) |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, r := range rows {
			name := workloads[r.Workload]
			if name == "" {
				name = r.Workload
			}
			if r.Error != "" {
				fmt.Fprintf(&b, "| %s | %s | error | | | | | | | | |\n", name, r.Target)
				continue
			}
			p50, p99 := Latencies(r)
			var rounds []string
			for _, x := range r.RoundsIOPS {
				rounds = append(rounds, fmt.Sprintf("%.0f", x))
			}
			cpu, busy := "", ""
			if c := r.CPU; c != nil {
				cpu = fmt.Sprintf("%.1f + %.1f", c.TargetUs, c.FioUs)
				busy = fmt.Sprintf("%.0f %%", 100*c.Util)
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.1f | %s | %s | %s | %s | %s | %s | %s |\n", name, r.Target, r.IOPS, r.MBps, p50, p99, ratio(r.RatioStandalone), ratio(r.RatioNbdkit), cpu, busy, strings.Join(rounds, " "))
		}
		b.WriteString("\n*CPU µs/IO*: CPU time (user + system) of the target's processes (server and its peers) and of fio, from the end of ramp_time to fio's exit, per I/O fio counted; *CPUs busy*: both together over that span, as a share of all CPUs. Near 100 %, the job was bound by this machine's CPUs, and a target's IOPS follow the inverse of its CPU per I/O.\n\n")
	}
	if len(s.Charts) > 0 {
		b.WriteString("Charts: ")
		for i, c := range s.Charts {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "[%s](%s)", c, c)
		}
		b.WriteString("\n\n")
	}
	if s.ChartNote != "" {
		b.WriteString(s.ChartNote + "\n\n")
	}
	drillsMarkdown(&b, s.Drills)

	b.WriteString("## Targets\n\n| target | status | max server RSS | notes |\n|---|---|---:|---|\n")
	for _, t := range s.Targets {
		rss := ""
		if t.MaxRSS > 0 {
			rss = fmt.Sprintf("%.1f MiB", float64(t.MaxRSS)/(1<<20))
		}
		notes := append([]string{t.Desc}, t.Notes...)
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, mdEscape(t.Status), rss, mdEscape(strings.Join(notes, "; ")))
	}

	var errs []string
	for _, r := range s.Results {
		if r.Error != "" {
			errs = append(errs, fmt.Sprintf("- %s on %s: %s", r.Workload, r.Target, r.Error))
		}
	}
	if len(errs) > 0 {
		b.WriteString("\nErrors:\n\n" + strings.Join(errs, "\n") + "\n")
	}
	if len(s.Checks) > 0 {
		b.WriteString("\n## Checks\n\n```\n" + CheckLines(s.Checks) + "```\n")
	}
	return b.String()
}

func ratio(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", v)
}

// drillsMarkdown renders the drills' results.
func drillsMarkdown(b *strings.Builder, d *result.Drills) {
	if d == nil {
		return
	}
	if r := d.Floor; r != nil {
		b.WriteString("## Floor drill: the least a peer's copy of a write costs\n\n")
		b.WriteString("A bare loop in the harness, no repd: the write's bytes (behind a 32-byte header) sent over loopback TCP in batches, received in 512 KiB reads, and written with pwrite into a file of the device's size that was written over once before. " +
			"No checksums, acks, journal or goroutine hand-offs: whatever replicates a write to a peer on this machine spends at least this much CPU time per write, on top of what the write costs standalone. " +
			"The issue-3 checks turn it into a bound on the replicated/standalone ratio.\n\n")
		if r.Error != "" {
			fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
		}
		b.WriteString("| 4 KiB random: send + receive + pwrite | of which pwrite | 1 MiB sequential: send + receive + pwrite | 4 KiB round trip at QD1 (p50 wall time), within a process | between two processes | frame MAC, tag + check: 4 KiB | 1 MiB |\n|---:|---:|---:|---:|---:|---:|---:|\n")
		fmt.Fprintf(b, "| %.2f µs | %.2f µs | %.0f µs | %.0f µs | %.0f µs | %.2f µs | %.0f µs |\n\n", r.Us4K, r.PwriteUs4K, r.Us1M, r.RTTUs4K, r.RTTUs4KProcess, r.MACUs4K, r.MACUs1M)
		b.WriteString("The frame MAC: AES-256-GCM over the frame (repd's internal/gmac, the same code), tagged by the sender and checked by the receiver; a target whose peers share a secret (the default) pays it per peer on top of the copy, and its CPU bound counts it.\n\n")
		b.WriteString("The round trip: one 4 KiB write at a time sent, received by a goroutine waiting for it, written with pwrite, answered with 8 bytes the sender waits for; " +
			"within one Go process the runtime can hand the frame from one goroutine to the other on one thread, between two processes (the peer a second copy of the harness, as a Secondary is a second repd) each side wakes the other's thread. " +
			"The second is the least protocol C can add to a write's latency at queue depth 1 here (less the local pwrite it overlaps).\n\n")
		if r.DatasyncSharedUs > 0 {
			fmt.Fprintf(b, "The database job's flushes: after 8 writes of 16 KiB at random places, fdatasync of such a file took %.0f µs alone and %.0f µs with a second file doing the same at the same time (mean wall times). "+
				"Every node's files share this machine's one disk, so a protocol-C flush, durable on both nodes, waits at least the second; the database check's bound counts it.\n\n", r.DatasyncUs, r.DatasyncSharedUs)
		}
	}
	if r := d.RTO; r != nil {
		b.WriteString("## RTO drill\n\n")
		fmt.Fprintf(b, "Two nodes, protocol %s, %s; fio 4k randwrite QD32 on the primary (%.0f writes/s), `kill -9` of the primary, "+
			"then on the secondary: wait until it sees the peer gone, `repctl primary`, connect over NBD and write 4 KiB.\n\n", r.Protocol, r.Link, r.LoadIOPS)
		if r.Error != "" {
			fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
		}
		b.WriteString("| failure detection | promote | first write | RTO total |\n|---:|---:|---:|---:|\n")
		fmt.Fprintf(b, "| %.0f ms | %.0f ms | %.0f ms | **%.0f ms** |\n\n", r.DetectMs, r.PromoteMs, r.FirstWriteMs, r.TotalMs)
		fmt.Fprintf(b, "Promotion: %s. Detection here is repd noticing the dead process's TCP connection close (instant on one host); "+
			"a dead *host* is noticed only by the peer timeout, and a cluster manager adds its own decision time.\n\n", r.Promote)
	}
	if len(d.RTOAuto) > 0 {
		rtoAutoMarkdown(b, d.RTOAuto)
	}
	if len(d.RPO) > 0 {
		b.WriteString("## RPO drill\n\n")
		b.WriteString("Two nodes over the WAN link; 32 writers put numbered 4 KiB blocks (header + incompressible filler) at distinct offsets through the primary and note each acknowledgment; " +
			"at the end the primary's site is lost with its link (the proxy stops forwarding and resets its connections, dropping what it holds, then `kill -9` of the primary) with writes in flight; " +
			"the secondary is promoted and every acknowledged block read back from it. A write counts as lost when its block on the new primary holds an older write. `on-congestion = \"block\"`. " +
			"*lost seconds*: from the oldest lost write's acknowledgment to the kill.\n\n")
		b.WriteString("| protocol | link | writes acked | MB/s | journal before kill | journal-size | lost writes | lost bytes | lost seconds of writes | promotion |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, r := range d.RPO {
			if r.Error != "" {
				fmt.Fprintf(b, "| %s | %s | error: %s | | | | | | | |\n", r.Protocol, r.Link, mdEscape(r.Error))
				continue
			}
			fmt.Fprintf(b, "| %s | %s | %d | %.1f | %s | %s | %d | %s | %.3f | %s |\n", r.Protocol, r.Link, r.Acked, r.WriteMBps,
				units.Bytes(r.JournalAtEnd), units.Bytes(r.JournalBound), r.LostWrites, units.Bytes(r.LostBytes), r.LostSeconds, mdEscape(r.Promote))
		}
		b.WriteString("\n")
	}
	if r := d.Resync; r != nil {
		b.WriteString("## Resync drill\n\n")
		fmt.Fprintf(b, "Two nodes, protocol C, loopback: the secondary stopped (SIGTERM), fio 4k randwrite QD32 capped at 20 MiB/s on the primary for %.0f s (%.1f MB/s measured), the secondary restarted.\n\n", r.OutageSeconds, r.FioWriteMBps)
		if r.Error != "" {
			fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
		}
		b.WriteString("| written | dirty (out of sync) | resynced | on the wire | restart→Connected | Connected→in sync | total | resync rate | dirty/s |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.0f ms | %.0f ms | %.0f ms | %.1f MB/s | %.1f MB/s |\n\n",
			units.Bytes(r.WrittenBytes), units.Bytes(r.DirtyBytes), units.Bytes(r.ResyncedBytes), units.Bytes(r.WireBytes),
			r.ConnectMs, r.ResyncMs, r.TotalMs, r.RateMBps, r.DirtyRateMBps)
	}
	if d.Sync != nil {
		syncMarkdown(b, d.Sync)
	}
	if d.Backup != nil {
		backupMarkdown(b, d.Backup)
	}
	if len(d.Wire) > 0 {
		b.WriteString("## Wire bytes (issue 5)\n\n")
		b.WriteString("Two nodes, protocol C, `compression = \"zstd\"`, loopback; 32 MiB of each kind written through NBD; wire = the primary's `bytes_sent` to the peer (frames, headers, everything), logical = bytes written.\n\n")
		b.WriteString("| data | write size | logical | wire | wire/logical | target | daemon counters |\n|---|---:|---:|---:|---:|---:|---|\n")
		for _, w := range d.Wire {
			if w.Error != "" {
				fmt.Fprintf(b, "| %s | %d | error: %s | | | | |\n", w.Data, w.WriteSize, mdEscape(w.Error))
				continue
			}
			var cs []string
			for k, v := range w.Counters {
				cs = append(cs, fmt.Sprintf("%s %.0f", k, v))
			}
			slices.Sort(cs)
			fmt.Fprintf(b, "| %s | %s | %s | %s | %.3f | ≤ %.2f | %s |\n", w.Data, units.Bytes(int64(w.WriteSize)), units.Bytes(w.Logical), units.Bytes(w.Wire), w.Ratio, check.WireLimits[w.Data], strings.Join(cs, ", "))
		}
		b.WriteString("\n")
	}
}

// rtoAutoMarkdown renders the automatic failover drill (issue 18).
func rtoAutoMarkdown(b *strings.Builder, rs []result.RTOAutoResult) {
	r0 := rs[0]
	b.WriteString("## Automatic failover drill (rto-auto)\n\n")
	fmt.Fprintf(b, "Two data nodes (alpha, bravo) and a witness (tie), protocol %s, %s; quorum %s, `auto-promote = true`, `on-no-quorum = %q`. "+
		"fio 4k randwrite QD32 on the Primary alpha; then alpha's host is cut off: a partition at the proxies on its peer links "+
		"(the connections stay open, nothing flows: the others notice only by their timeouts). No operator: bravo and the witness elect bravo. "+
		"A failover client, as an application's would, tries each surviving data node (connect, one 4 KiB write, a second at most) until a write completes. "+
		"Times from the cut. The lease: a voter's acknowledgement counts for one timeout; a voter helps no other node to Primary until 9/8 of the timeout after it last heard from the Primary, "+
		"so the old Primary's lease is over before the successor starts (*lease over by*: the earliest bound its status gave, polled every 20 ms; "+
		"*suspends I/O*: its event, when fio's writes, held for the unreachable peer until the timeout, meet the expired lease).\n\n", r0.Protocol, r0.Link, r0.Quorum, r0.OnNoQuorum)
	b.WriteString("| timeout | lease | promise | fio before the cut | old Primary's lease over by | old Primary suspends I/O | successor elected | write on the successor (RTO) | target | client connections | old Primary after the heal | load |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, r := range rs {
		target := "none"
		if r.TimeoutMs == check.RTOAutoTimeoutMs {
			target = fmt.Sprintf("≤ %.0f ms", float64(check.RTOAutoLimitMs))
		}
		if r.Error != "" {
			fmt.Fprintf(b, "| %s | %.0f ms | %.0f ms | | | | | error: %s | %s | | | %s |\n", r.Timeout, r.LeaseMs, r.PromiseMs, mdEscape(r.Error), target, r.LoadAvg)
			continue
		}
		seen := func(v float64) string {
			if v == 0 {
				return "not seen"
			}
			return fmt.Sprintf("%.0f ms", v)
		}
		fmt.Fprintf(b, "| %s | %.0f ms | %.0f ms | %.0f writes/s | %s | %s | %.0f ms | **%.0f ms** (%s) | %s | %d | %s | %s |\n",
			r.Timeout, r.LeaseMs, r.PromiseMs, r.LoadIOPS, seen(r.LeaseEndMs), seen(r.SuspendedMs), r.ElectedMs, r.TotalMs, r.Successor, target, r.Attempts, mdEscape(r.Rejoined), r.LoadAvg)
	}
	b.WriteString("\n")
}

// Latencies formats p50 and p99 completion latency in µs: the one direction
// a workload does, or "r / w" for a mixed one.
func Latencies(r result.Result) (p50, p99 string) {
	active := func(d *result.DirStats) bool { return d != nil && d.IOs > 0 }
	switch {
	case active(r.Read) && active(r.Write):
		return fmt.Sprintf("r %s / w %s", us(r.Read.P50us), us(r.Write.P50us)),
			fmt.Sprintf("r %s / w %s", us(r.Read.P99us), us(r.Write.P99us))
	case active(r.Read):
		return us(r.Read.P50us), us(r.Read.P99us)
	case active(r.Write):
		return us(r.Write.P50us), us(r.Write.P99us)
	}
	return "", ""
}

func us(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", math.Round(v))
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

// syncMarkdown renders the sync drill (issue 4).
func syncMarkdown(b *strings.Builder, r *result.SyncResult) {
	b.WriteString("## Sync drill (issue #4)\n\n")
	dev := units.Bytes(r.DeviceBytes)
	fmt.Fprintf(b, "Two nodes (alpha Primary, bravo), protocol C, default configuration, loopback, a %s device", dev)
	if r.Quick {
		fmt.Fprintf(b, " (**--quick: %s, not the 1 GiB of the issue**)", dev)
	}
	b.WriteString(". *Reference*: fio 1 MiB sequential writes QD8 over the whole device through alpha with bravo connected " +
		"(every write replicated), ending with a flush (`end_fsync`: durable on both nodes, as a finished resync is), once at the start of the drill and once at the end: ")
	if len(r.RefMBps) > 0 {
		fmt.Fprintf(b, "%s MB/s, mean **%.0f MB/s**. ", units.MBpsList(r.RefMBps), r.RefMeanMBps)
	} else {
		b.WriteString("not measured. ")
	}
	if r.PrefillMBps > 0 {
		fmt.Fprintf(b, "Before them the same job wrote the fresh sparse backing files once (%.0f MB/s, not part of the reference: the resyncs write into written blocks). ", r.PrefillMBps)
	}
	b.WriteString("*Resync*: `repctl disconnect bravo` on alpha, fio randwrite of 10 % of the device in distinct blocks " +
		"(random map, `io_size` = 10 %), `repctl connect bravo`; *time* is from alpha's `SyncSource` event to its `Established` " +
		"(`repctl events`, the daemon's clock; the reconnect before it is not counted, *from connect* in the notes is). " +
		"*rate* is dirty bytes over the time. " +
		"*Checksum resync*: on a second cluster with `csums = true`, after fio wrote the whole device, `repctl invalidate-remote bravo` of identical data: bravo sends a hash of every block, alpha only the blocks that differ; " +
		"rate is the device over the time. *Verify*: `repctl verify bravo`, from `VerifySource` to its end. " +
		"*On the wire*: alpha's `bytes_sent` / `bytes_received` to bravo during the step (frames and headers included). " +
		"Before each fio run and each timed step both nodes' backing files are fsynced, untimed: repd writes through the page cache and a resync makes its data durable " +
		"(a barrier every 8 MiB, an fdatasync on the target), which would otherwise also write back what the fio run before it left dirty. MB/s = 10^6 bytes/s.\n\n")
	if r.Error != "" {
		fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
	}
	b.WriteString("| case | dirty | time | rate MB/s | × fio 1 MiB seq write | on the wire (alpha sent / received) | notes |\n")
	b.WriteString("|---|---:|---:|---:|---:|---|---|\n")
	ref := func(mbps float64) string {
		if r.RefMeanMBps == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", mbps/r.RefMeanMBps)
	}
	timing := func(t string) string {
		if t == "events" || t == "" {
			return ""
		}
		return "; timed " + t
	}
	for _, c := range r.Resync {
		name := fmt.Sprintf("resync, 10%% dirty in %s pieces", units.Bytes(c.WriteSize))
		if c.Error != "" {
			fmt.Fprintf(b, "| %s | | | | | | error: %s |\n", name, mdEscape(c.Error))
			continue
		}
		wire := fmt.Sprintf("%s / %s", units.Bytes(c.WireSent), units.Bytes(c.WireReceived))
		if c.DirtyBytes > 0 {
			wire += fmt.Sprintf(" (sent %.2f× dirty)", float64(c.WireSent)/float64(c.DirtyBytes))
		}
		fmt.Fprintf(b, "| %s | %s | %.0f ms | %.0f | **%s** | %s | from connect %.0f ms%s |\n", name, units.Bytes(c.DirtyBytes),
			c.ResyncMs, c.RateMBps, ref(c.RateMBps), wire, c.ConnectMs, timing(c.Timing))
	}
	if c := r.CSumsResync; c != nil {
		const name = "checksum resync, identical data"
		if c.Error != "" {
			fmt.Fprintf(b, "| %s | | | | | | error: %s |\n", name, mdEscape(c.Error))
		} else {
			fmt.Fprintf(b, "| %s | %s (all marked) | %.0f ms | %.0f | %s | source sent **%s (%.3f%% of the device)** / hashes received %s (%.2f%%) | %s found equal%s |\n",
				name, dev, c.ResyncMs, c.RateMBps, ref(c.RateMBps), units.Bytes(c.SourceSent), c.SourcePct, units.Bytes(c.HashesRecv), c.HashesPct,
				units.Bytes(c.EqualBytes), timing(c.Timing))
		}
	}
	if v := r.Verify; v != nil {
		const name = "online verify"
		if v.Error != "" {
			fmt.Fprintf(b, "| %s | | | | | | error: %s |\n", name, mdEscape(v.Error))
		} else {
			fmt.Fprintf(b, "| %s | %s compared | %.0f ms | %.0f | %s | %s / %s | %d KiB differ%s |\n",
				name, dev, v.Ms, v.RateMBps, ref(v.RateMBps), units.Bytes(v.WireSent), units.Bytes(v.WireRecv), v.MismatchKiB, timing(v.Timing))
		}
	}
	fmt.Fprintf(b, "\nTargets (`--check`): resync in 1 MiB pieces ≥ %.1f× the reference; checksum resync source bytes < %g%% of the device; verify: rate reported, no target.\n\n",
		check.SyncRatioMin, 100*check.CSumsSourceMax)
}

// backupMarkdown renders the backup drill (issue 19).
func backupMarkdown(b *strings.Builder, r *result.BackupResult) {
	b.WriteString("## Backup drill (issue #19)\n\n")
	dev := units.Bytes(r.DeviceBytes)
	fmt.Fprintf(b, "Two nodes (alpha Primary, bravo Secondary), protocol C, loopback, a %s device", dev)
	if r.Quick {
		fmt.Fprintf(b, " (**--quick: %s, not the 1 GiB of the issue**)", dev)
	}
	fmt.Fprintf(b, ", filled by fio (1 MiB sequential, random data, %.0f MB/s). Backups run on bravo: `repctl backup --to DIR` "+
		"(the snapshot is taken in alpha's write stream, the data read from bravo's export `bench@SNAPSHOT` over NBD into qcow2 files). "+
		"*Full*: the first backup. *Incremental*: after fio rewrote %s (1 %%) in distinct random 64 KiB blocks; it reads only what the dirty bitmap of the previous snapshot reports; done %d times in a row, the median by time is the one judged. "+
		"*time*: repctl backup from start to exit (snapshot, NBD, qcow2 writes, fsyncs, manifest); *reported*: what bravo recorded from repctl's report (`status` → `backup`). "+
		"Then fio 4k randwrite QD32 on alpha (%s): with no snapshot anywhere (*base*), while full backups from bravo run one after another (*backup*, each run between two *base* runs, the judged ratio the median of each over the mean of its two: "+
		"bravo copies on write for the backups' lazy snapshots and reads its disk, its export reads slowed to resource.snapshot-read-min-rate while it applies writes), right after a snapshot on alpha itself (*snapshot*: the copy-on-write of every first write into a 64 KiB chunk), "+
		"and right after a snapshot on bravo alone (*snapshot-secondary*: bravo's copy-on-write, which protocol C waits for, without a backup's reads and writes; *-lazy*: a lazy one, as repctl backup takes, whose copies skip the fdatasync). "+
		"Before each step both backing files are fsynced, untimed.\n\n", r.FillMBps, units.Bytes(r.RewrittenBytes), max(len(r.Incs), 1), fioRuns(r))
	if r.Error != "" {
		fmt.Fprintf(b, "**Error:** %s\n\n", mdEscape(r.Error))
	}
	b.WriteString("| backup | kind | read | qcow2 file | time | reported |\n|---|---|---:|---:|---:|---:|\n")
	type row struct {
		name string
		run  *result.BackupRun
	}
	rows := []row{{"full", r.Full}}
	for i := range r.Incs {
		name := fmt.Sprintf("incremental %d", i+1)
		if r.Inc != nil && r.Incs[i] == *r.Inc {
			name += " (median)"
		}
		rows = append(rows, row{name, &r.Incs[i]})
	}
	if len(r.Incs) == 0 {
		rows = append(rows, row{"incremental", r.Inc})
	}
	for _, x := range rows {
		if x.run == nil {
			continue
		}
		if x.run.Error != "" {
			fmt.Fprintf(b, "| %s | error: %s | | | | |\n", x.name, mdEscape(x.run.Error))
			continue
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %.0f ms | %.2f s |\n", x.name, x.run.Kind, units.Bytes(x.run.BytesRead), units.Bytes(x.run.FileBytes), x.run.WallMs, x.run.ReportedSeconds)
	}
	if r.Inc != nil && r.Inc.Error == "" && r.Full != nil {
		fmt.Fprintf(b, "\nIncremental: read **%.2f %%** of the device (target ≤ %g %%), in **1/%.0f** of the full's time (target ≤ 1/%.0f; by the times repctl reported, 1/%.0f). "+
			"A `repctl status` just before took %.0f ms on this machine: process start and scheduling, part of every wall time.",
			100*r.IncReadShare, 100*check.BackupIncReadMax, 1/r.IncTimeRatio, 1/check.BackupIncTimeMax, r.Full.ReportedSeconds/r.Inc.ReportedSeconds, r.CtlFloorMs)
	}
	if r.Verify != "" {
		fmt.Fprintf(b, " Verified: %s.", mdEscape(r.Verify))
	}
	b.WriteString("\n\n")
	if len(r.Load) > 0 {
		b.WriteString("| fio on the Primary | IOPS | p99 | × base | notes |\n|---|---:|---:|---:|---|\n")
		for _, l := range r.Load {
			if l.Error != "" {
				fmt.Fprintf(b, "| %s | | | | error: %s |\n", l.Case, mdEscape(l.Error))
				continue
			}
			x, note := "", ""
			if r.BaseIOPS > 0 {
				x = fmt.Sprintf("%.2f", l.IOPS/r.BaseIOPS)
			}
			switch l.Case {
			case "backup":
				x = "**" + x + "**"
				note = fmt.Sprintf("%d full backups from bravo ran; target ≥ %.1f×", l.Backups, check.BackupLoadMin)
			case "backup-paced":
				note = fmt.Sprintf("%d full backups from bravo ran, `--rate %s`; no target", l.Backups, l.Rate)
			case "snapshot":
				x = "**" + x + "**"
				note = fmt.Sprintf("alpha's store preserved %s; no target", units.Bytes(l.StoreBytes))
			case "snapshot-secondary", "snapshot-secondary-lazy":
				note = fmt.Sprintf("bravo's store preserved %s; no target", units.Bytes(l.StoreBytes))
			}
			fmt.Fprintf(b, "| %s | %.0f | %s µs | %s | %s |\n", l.Case, l.IOPS, us(l.P99Us), x, note)
		}
		b.WriteString("\n")
	}
}

// fioRuns says how long the backup drill's fio runs were.
func fioRuns(r *result.BackupResult) string {
	return fmt.Sprintf("%d s runs after a 1 s ramp", r.LoadSeconds)
}
