// Package drill runs the benchmark's drills, each on a cluster of its own:
// failover (rto), automatic failover with quorum after a partition
// (rto-auto), loss under asynchronous replication (rpo), resync after
// an outage (resync), bytes on the wire (wire), resync, checksum resync and
// verify rates (sync), the CPU floor of a peer's copy of a write
// (floor), and full and incremental backups from a Secondary with what
// they and snapshots cost the Primary's writes (backup).
package drill

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bench/internal/fio"
	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/bench/internal/units"
	"github.com/repd/repd/harness"
	"github.com/repd/repd/internal/ctxtime"
)

// Names are the drills, in run order.
var Names = []string{"rto", "rto-auto", "rpo", "resync", "wire", "sync", "floor", "backup"}

// Select returns the drills named in a comma list ("none": no drill).
func Select(list string) ([]string, error) {
	if list == "none" || list == "" {
		return nil, nil
	}
	var out []string
	for _, d := range strings.Split(list, ",") {
		d = strings.TrimSpace(d)
		if !slices.Contains(Names, d) {
			return nil, fmt.Errorf("--drills: unknown drill %q (known: %s)", d, strings.Join(Names, ","))
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out, nil
}

// Run runs the named drills in env.Dir; quick shrinks the sync and backup
// drills' devices.
func Run(ctx context.Context, env target.Env, drills []string, seconds int, quick bool) *result.Drills {
	d := &result.Drills{}
	logf := env.Logf
	for _, name := range drills {
		if ctx.Err() != nil {
			break
		}
		denv := env
		denv.Dir = filepath.Join(env.Dir, name)
		if err := os.MkdirAll(denv.Dir, 0o755); err != nil {
			logf("drill %s: %v", name, err)
			continue
		}
		logf("== drill %s", name)
		switch name {
		case "rto":
			r := drillRTO(ctx, denv)
			d.RTO = &r
			logf("rto: %+v", r)
		case "rto-auto":
			d.RTOAuto = drillRTOAuto(ctx, denv)
			for _, r := range d.RTOAuto {
				logf("rto-auto: %+v", r)
			}
		case "rpo":
			wan, _ := link.Lookup("wan")
			for _, proto := range []string{"A", "C"} {
				if ctx.Err() != nil {
					break
				}
				penv := denv
				penv.Dir = filepath.Join(denv.Dir, strings.ToLower(proto))
				os.MkdirAll(penv.Dir, 0o755)
				r := drillRPO(ctx, penv, proto, wan, time.Duration(seconds)*time.Second)
				d.RPO = append(d.RPO, r)
				logf("rpo %s: %+v", proto, r)
			}
		case "resync":
			r := drillResync(ctx, denv, time.Duration(seconds)*time.Second)
			d.Resync = &r
			logf("resync: %+v", r)
		case "wire":
			d.Wire = drillWire(ctx, denv)
			for _, w := range d.Wire {
				logf("wire: %+v", w)
			}
		case "floor":
			r := drillFloor(ctx, denv)
			d.Floor = &r
			logf("floor: %+v", r)
		case "backup":
			r := drillBackup(ctx, denv, quick)
			d.Backup = &r
			logf("backup: %+v", r)
		case "sync":
			r := drillSync(ctx, denv, quick)
			d.Sync = &r
			logf("sync: reference %s MB/s (mean %.0f), prefill %.0f MB/s %s", units.MBpsList(r.RefMBps), r.RefMeanMBps, r.PrefillMBps, r.Error)
		}
	}
	return d
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

// loadFio starts fio writing 4 KiB at QD32 through c's node 0 for up to
// limit, in the background; wait returns its result (an error once the
// server is killed under it).
func loadFio(ctx context.Context, c *target.Cluster, dir string, limit time.Duration, extra ...string) (wait func() (fio.Result, error)) {
	args := append(target.FioArgs(c.Nodes[0].URI()),
		"--name=load", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--direct=1",
		"--norandommap=1", "--randrepeat=0", "--time_based=1", fmt.Sprintf("--runtime=%d", int(limit.Seconds())))
	args = append(args, extra...)
	var (
		res fio.Result
		err error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err = fio.Job{Args: args, Output: filepath.Join(dir, "load.json"), Timeout: limit + time.Minute}.Run(ctx)
	}()
	return func() (fio.Result, error) { <-done; return res, err }
}

// failover waits until node i no longer sees node 0 connected, promotes it
// and returns the durations of both steps and how the promotion went.
func failover(ctx context.Context, c *target.Cluster, i int, t0 time.Time) (detect, promote time.Duration, note string, err error) {
	deadline := t0.Add(30 * time.Second)
	for {
		st, err := c.Nodes[i].Status(ctx)
		if err == nil && len(st.Peers) > 0 && st.Peers[0].Connection != api.Connected {
			break
		}
		if time.Now().After(deadline) {
			return 0, 0, "", errors.New("the secondary still sees the dead primary connected after 30 s")
		}
		if ctx.Err() != nil {
			return 0, 0, "", ctx.Err()
		}
		time.Sleep(2 * time.Millisecond)
	}
	tDetect := time.Now()
	tries := 0
	var out string
	for {
		tries++
		out, err = ctl(ctx, c.Nodes[i], "primary")
		if err == nil {
			note = fmt.Sprintf("repctl primary (attempt %d)", tries)
			break
		}
		if time.Since(tDetect) > 5*time.Second {
			// The secondary's disk is not UpToDate: say so, and force.
			out2, err2 := ctl(ctx, c.Nodes[i], "primary", "--force")
			if err2 != nil {
				return tDetect.Sub(t0), time.Since(tDetect), "", fmt.Errorf("repctl primary: %s; --force: %s", out, out2)
			}
			note = "repctl primary refused (" + out + "); promoted with --force"
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return tDetect.Sub(t0), time.Since(tDetect), note, nil
}

// firstWrite connects to node i's NBD export until one 4 KiB write succeeds.
func firstWrite(ctx context.Context, c *target.Cluster, i int, timeout time.Duration) error {
	buf := make([]byte, 4096)
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cl, err := c.Nodes[i].DialNBD()
		if err == nil {
			err = cl.Write(buf, 0, false)
			cl.CloseWrite()
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no write succeeded in %s: %v", timeout, last)
}

func drillRTO(ctx context.Context, env target.Env) (r result.RTOResult) {
	r.Protocol, r.Link = "C", "loopback"
	c, err := target.StartCluster(ctx, env, target.RepdConfig{Name: "rto", Nodes: []string{"alpha", "bravo"}, Protocol: "C"})
	if err != nil {
		r.Error = "start: " + err.Error()
		return r
	}
	defer c.Stop()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wait := loadFio(lctx, c, env.Dir, 60*time.Second, "--status-interval=1")
	time.Sleep(4 * time.Second) // ramp; writes in full flow
	st, _ := c.Nodes[0].Status(ctx)
	before := st.Writes
	time.Sleep(time.Second)
	st, _ = c.Nodes[0].Status(ctx)
	r.LoadIOPS = float64(st.Writes - before)

	t0 := time.Now()
	c.Nodes[0].Kill()
	detect, promote, note, err := failover(ctx, c, 1, t0)
	r.DetectMs, r.PromoteMs, r.Promote = ms(detect), ms(promote), note
	if err != nil {
		r.Error = err.Error()
		cancel()
		wait()
		return r
	}
	tp := time.Now()
	if err := firstWrite(ctx, c, 1, 10*time.Second); err != nil {
		r.Error = err.Error()
	}
	r.FirstWriteMs = ms(time.Since(tp))
	r.TotalMs = ms(time.Since(t0))
	cancel()
	wait()
	return r
}

// The RPO drill's blocks: each 4 KiB write carries a header naming it, and
// filler derived from its sequence number (incompressible).
const (
	rpoBlock = 4096
	rpoMagic = "REPDRPO1"
)

func rpoData(seq uint64, b []byte) {
	copy(b, rpoMagic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	r := rand.New(rand.NewPCG(seq, 0x9e3779b97f4a7c15))
	for i := 16; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
}

// drillRPO writes numbered blocks through the primary for d, each at its own
// offset, recording when each was acknowledged; kills the primary with
// writes in flight; promotes the secondary and reads every acknowledged
// block back from it.
func drillRPO(ctx context.Context, env target.Env, proto string, l link.Profile, d time.Duration) (r result.RPOResult) {
	const journal = 8 << 20
	r.Protocol, r.Link, r.JournalBound = proto, l.Name, journal
	c, err := target.StartCluster(ctx, env, target.RepdConfig{
		Name: "rpo-" + proto, Nodes: []string{"alpha", "bravo"}, Protocol: proto,
		Extra: map[string]string{"journal-size": fmt.Sprint(journal), "on-congestion": `"block"`},
		Link:  &l, Seed: target.SeedOf("rpo-" + proto),
	})
	if err != nil {
		r.Error = "start: " + err.Error()
		return r
	}
	defer c.Stop()
	cl, err := c.Nodes[0].DialNBD()
	if err != nil {
		r.Error = "dial: " + err.Error()
		return r
	}
	// Writes go round the device, block seq%nblocks, so the writers never
	// run out of room; a block read back names the last write that reached
	// it, and every acknowledged write to it with a higher number is lost.
	nblocks := uint64(c.Opt.Size / rpoBlock)
	start := time.Now()
	type ack struct {
		seq uint64
		at  time.Duration // since start
	}
	var next atomic.Uint64
	var stop atomic.Bool
	var wg sync.WaitGroup
	acked := make([][]ack, 32)
	for w := range acked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, rpoBlock)
			for !stop.Load() {
				seq := next.Add(1) - 1
				rpoData(seq, buf)
				if err := cl.Write(buf, int64(seq%nblocks)*rpoBlock, false); err != nil {
					return
				}
				acked[w] = append(acked[w], ack{seq, time.Since(start)})
			}
		}()
	}
	ctxtime.Sleep(ctx, d)
	if st, err := c.Nodes[0].Status(ctx); err == nil {
		r.JournalAtEnd = st.JournalBytes
	}
	// The primary's site is lost with its link: the proxies first stop
	// forwarding and then reset their connections, so what was still on
	// the way to the secondary is lost too, as with a dead host.
	for _, p := range c.Proxies {
		p.Partition(true)
	}
	tKill := time.Since(start)
	c.Nodes[0].Kill()
	for _, p := range c.Proxies {
		p.CutAll()
	}
	stop.Store(true)
	wg.Wait()
	var all []ack
	for _, a := range acked {
		all = append(all, a...)
	}
	r.WriteSeconds = tKill.Seconds()
	r.Acked = int64(len(all))
	r.AckedBytes = r.Acked * rpoBlock
	r.WriteMBps = float64(r.AckedBytes) / tKill.Seconds() / 1e6

	_, _, note, err := failover(ctx, c, 1, time.Now())
	r.Promote = note
	if err != nil {
		r.Error = err.Error()
		return r
	}
	rc, err := c.Nodes[1].DialNBD()
	if err != nil {
		r.Error = "dial new primary: " + err.Error()
		return r
	}
	defer rc.CloseWrite()
	// found[b]: 1 + the number of the write block b holds; 0: none of ours.
	touched := min(nblocks, next.Load())
	found := make([]uint64, touched)
	var readErr atomic.Value
	var idx atomic.Uint64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, want := make([]byte, rpoBlock), make([]byte, rpoBlock)
			for {
				i := idx.Add(1) - 1
				if i >= touched {
					return
				}
				if err := rc.Read(got, int64(i)*rpoBlock); err != nil {
					readErr.Store(err.Error())
					return
				}
				if string(got[:8]) != rpoMagic {
					continue
				}
				seq := binary.LittleEndian.Uint64(got[8:])
				rpoData(seq, want)
				if seq%nblocks == i && string(got) == string(want) {
					found[i] = seq + 1
				}
			}
		}()
	}
	wg.Wait()
	if e := readErr.Load(); e != nil {
		r.Error = "read back: " + e.(string)
		return r
	}
	oldest := tKill
	for _, a := range all {
		if a.seq+1 > found[a.seq%nblocks] {
			r.LostWrites++
			oldest = min(oldest, a.at)
		}
	}
	r.LostBytes = r.LostWrites * rpoBlock
	if r.LostWrites > 0 {
		r.LostSeconds = (tKill - oldest).Seconds()
	}
	return r
}

// resyncWriteRate caps fio's writes in the resync drill (bytes/s).
const resyncWriteRate = 20 << 20

// drillResync stops the secondary (SIGTERM), writes through the primary for
// d, restarts the secondary and times the resync.
func drillResync(ctx context.Context, env target.Env, d time.Duration) (r result.ResyncResult) {
	r.OutageSeconds = d.Seconds()
	c, err := target.StartCluster(ctx, env, target.RepdConfig{Name: "resync", Nodes: []string{"alpha", "bravo"}, Protocol: "C"})
	if err != nil {
		r.Error = "start: " + err.Error()
		return r
	}
	defer c.Stop()
	c.Nodes[1].Stop()
	if err := c.Nodes[0].WaitPeers(ctx, 30*time.Second, disconnected); err != nil {
		r.Error = "peer still connected after stop: " + err.Error()
		return r
	}
	// Rate-capped, so that N seconds of writes dirty part of the device
	// rather than all of it.
	fr, err := loadFio(ctx, c, env.Dir, d, fmt.Sprintf("--rate=%d", resyncWriteRate))()
	if err != nil {
		r.Error = "fio: " + err.Error()
		return r
	}
	r.FioWriteMBps = fr.Write.MBps()
	r.WrittenBytes = int64(fr.Write.BWBytes * d.Seconds())
	before, err := c.Nodes[0].Status(ctx)
	if err != nil || len(before.Peers) == 0 {
		r.Error = fmt.Sprintf("status: %v", err)
		return r
	}
	r.DirtyBytes = before.Peers[0].OutOfSyncKiB << 10
	t0 := time.Now()
	if err := c.Nodes[1].Start(ctx); err != nil {
		r.Error = "restart: " + err.Error()
		return r
	}
	if err := c.Nodes[0].WaitPeers(ctx, 60*time.Second, harness.Connected); err != nil {
		r.Error = "reconnect: " + err.Error()
		return r
	}
	t1 := time.Now()
	if err := c.Nodes[0].WaitPeers(ctx, 5*time.Minute, harness.InSync); err != nil {
		r.Error = "resync: " + err.Error()
		return r
	}
	t2 := time.Now()
	after, err := c.Nodes[0].Status(ctx)
	if err != nil || len(after.Peers) == 0 {
		r.Error = fmt.Sprintf("status: %v", err)
		return r
	}
	p0, p1 := before.Peers[0], after.Peers[0]
	r.ResyncedBytes = p1.ResyncedBytes - p0.ResyncedBytes
	if r.ResyncedBytes == 0 {
		// Counted by the target only, perhaps.
		if st, err := c.Nodes[1].Status(ctx); err == nil && len(st.Peers) > 0 {
			r.ResyncedBytes = st.Peers[0].ResyncedBytes
		}
	}
	r.WireBytes = p1.BytesSent - p0.BytesSent
	r.ConnectMs, r.ResyncMs, r.TotalMs = ms(t1.Sub(t0)), ms(t2.Sub(t1)), ms(t2.Sub(t0))
	if s := t2.Sub(t1).Seconds(); s > 0 {
		r.RateMBps = float64(r.ResyncedBytes) / s / 1e6
		r.DirtyRateMBps = float64(r.DirtyBytes) / s / 1e6
	}
	return r
}

// ctl runs repctl on n and returns its output trimmed.
func ctl(ctx context.Context, n *harness.Node, args ...string) (string, error) {
	out, err := n.Ctl(ctx, args...)
	return strings.TrimSpace(out), err
}

// disconnected holds for a peer that is not Connected.
func disconnected(p api.PeerStatus) bool { return !harness.Connected(p) }
