package drill

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bench/internal/fio"
	"github.com/repd/repd/bench/internal/proc"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/harness"
)

// The sync drill (issue 4): resync and online verify of a 1 GiB device on a
// two-node protocol C cluster with the default configuration, timed from
// the primary's event stream (`repctl events`), against fio's 1 MiB
// sequential writes (ending in a flush, as the resync ends durable) through
// the same cluster in the same run; then checksum resync of an identical
// device on a second cluster with `csums = true`.

// syncDrillSize is the sync drill's device, whatever --size says;
// syncDrillQuickSize under --quick.
const (
	syncDrillSize      = 1 << 30
	syncDrillQuickSize = 256 << 20
)

// drillSync runs the sync drill. It never panics; what failed is in Error
// (or a case's Error) and the rest is kept.
func drillSync(ctx context.Context, env target.Env, quick bool) (r result.SyncResult) {
	logf := env.Logf
	r.DeviceBytes, r.Quick = syncDrillSize, quick
	if quick {
		r.DeviceBytes = syncDrillQuickSize
	}
	env.Size = r.DeviceBytes
	size := r.DeviceBytes
	const peer = "bravo"
	// up starts a two-node protocol C cluster in dir/sub and alpha's
	// event stream; the caller stops both.
	up := func(sub string, extra map[string]string) (*target.Cluster, *eventLog, func(), error) {
		cenv := env
		cenv.Dir = filepath.Join(env.Dir, sub)
		if err := os.MkdirAll(cenv.Dir, 0o755); err != nil {
			return nil, nil, nil, err
		}
		c, err := target.StartCluster(ctx, cenv, target.RepdConfig{Name: "sync-" + sub, Nodes: []string{"alpha", peer}, Protocol: "C", Extra: extra})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("start: %w", err)
		}
		r.Notes = append(r.Notes, sub+": "+strings.Join(c.Notes, "; "))
		evs, stopEvents, err := startEvents(ctx, c.Nodes[0], filepath.Join(cenv.Dir, "events-alpha.log"))
		if err != nil {
			c.Stop()
			return nil, nil, nil, fmt.Errorf("repctl events: %w", err)
		}
		var once sync.Once
		return c, evs, func() { once.Do(func() { stopEvents(); c.Stop() }) }, nil
	}
	// fill writes the whole device with fio (1 MiB, QD8) and returns its
	// rate. The run ends with a flush (end_fsync): durable on both nodes,
	// as a resync is when it ends.
	fill := func(c *target.Cluster, dir, name string) (float64, error) {
		if err := syncDisks(c); err != nil {
			return 0, err
		}
		fr, err := fio.Job{
			Args: append(target.FioArgs(c.Nodes[0].URI()), "--name="+name, "--rw=write", "--bs=1M", "--iodepth=8",
				"--direct=1", "--refill_buffers=1", "--end_fsync=1", fmt.Sprintf("--size=%d", size)),
			Output:  filepath.Join(dir, name+".json"),
			Timeout: 5 * time.Minute,
		}.Run(ctx)
		if err != nil {
			return 0, fmt.Errorf("fio %s: %w", name, err)
		}
		return fr.Write.MBps(), c.Nodes[0].WaitPeers(ctx, time.Minute, harness.InSync)
	}
	c, evs, stop, err := up("resync", nil)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer stop()
	ref := func(name string) (float64, error) { return fill(c, c.Dir, name) }
	// The first pass writes every block of the fresh sparse files (and
	// fills the device with random data for the verify); the reference is
	// measured on the written store.
	for _, name := range []string{"prefill", "ref-start"} {
		mbps, err := ref(name)
		if err != nil {
			r.Error = err.Error()
			return r
		}
		if name == "prefill" {
			r.PrefillMBps = mbps
		} else {
			r.RefMBps = append(r.RefMBps, mbps)
		}
	}
	dirty := size / 10 / (1 << 20) * (1 << 20) // 10 %, whole MiB
	for _, k := range []struct {
		name    string
		bs      int64
		iodepth int
	}{{"1m", 1 << 20, 8}, {"4k", 4 << 10, 32}} {
		if ctx.Err() != nil {
			break
		}
		sc := syncDirty(ctx, c, evs, env.Dir, peer, k.name, k.bs, k.iodepth, size, dirty)
		r.Resync = append(r.Resync, sc)
		logf("sync %s: %+v", k.name, sc)
	}
	if ctx.Err() == nil {
		v := syncVerify(ctx, c, evs, peer, size)
		r.Verify = &v
		logf("sync verify: %+v", v)
	}
	if ctx.Err() == nil {
		if mbps, err := ref("ref-end"); err != nil {
			r.Error = err.Error()
		} else {
			r.RefMBps = append(r.RefMBps, mbps)
		}
	}
	stop()
	// Checksum resync of identical data, on its own cluster with csums.
	if ctx.Err() == nil {
		var cs result.CSumsCase
		c2, evs2, stop2, err := up("csums", map[string]string{"csums": "true"})
		if err != nil {
			cs.Error = err.Error()
		} else if _, err := fill(c2, c2.Dir, "prefill"); err != nil {
			cs.Error = err.Error()
		} else {
			cs = syncCSums(ctx, c2, evs2, peer, size)
		}
		if stop2 != nil {
			stop2()
		}
		r.CSumsResync = &cs
		logf("sync csums: %+v", cs)
	}
	var sum float64
	for _, v := range r.RefMBps {
		sum += v
	}
	if len(r.RefMBps) > 0 {
		r.RefMeanMBps = sum / float64(len(r.RefMBps))
	}
	for i := range r.Resync {
		if r.Resync[i].Error == "" && r.RefMeanMBps > 0 {
			r.Resync[i].Ratio = r.Resync[i].RateMBps / r.RefMeanMBps
		}
	}
	if r.Error == "" && ctx.Err() != nil {
		r.Error = "interrupted"
	}
	return r
}

// syncDirty disconnects the peer, writes `dirty` bytes of distinct blocks
// of bs at random offsets through the primary, reconnects and times the
// resync.
func syncDirty(ctx context.Context, c *target.Cluster, evs *eventLog, dir, peer, name string, bs int64, iodepth int, size, dirty int64) (sc result.SyncCase) {
	sc.Name, sc.WriteSize, sc.WrittenBytes = name, bs, dirty
	defer func() {
		if sc.Error != "" { // leave the peer connected for the steps after this one
			c.Nodes[0].Ctl(ctx, "connect", peer)
			c.Nodes[0].WaitPeers(ctx, time.Minute, harness.InSync)
		}
	}()
	if out, err := ctl(ctx, c.Nodes[0], "disconnect", peer); err != nil {
		sc.Error = fmt.Sprintf("repctl disconnect %s: %v: %s", peer, err, out)
		return sc
	}
	if err := c.Nodes[0].WaitPeers(ctx, 30*time.Second, disconnected); err != nil {
		sc.Error = "peer still connected after disconnect: " + err.Error()
		return sc
	}
	// The random map is on (fio's default): io_size of distinct blocks.
	_, err := fio.Job{
		Args: append(target.FioArgs(c.Nodes[0].URI()), "--name=dirty-"+name, "--rw=randwrite",
			fmt.Sprintf("--bs=%d", bs), fmt.Sprintf("--iodepth=%d", iodepth), "--direct=1", "--refill_buffers=1",
			"--randrepeat=0", fmt.Sprintf("--size=%d", size), fmt.Sprintf("--io_size=%d", dirty)),
		Output:  filepath.Join(dir, "dirty-"+name+".json"),
		Timeout: 5 * time.Minute,
	}.Run(ctx)
	if err != nil {
		sc.Error = "fio: " + err.Error()
		return sc
	}
	before, err := peerOf(ctx, c.Nodes[0], peer)
	if err != nil {
		sc.Error = err.Error()
		return sc
	}
	sc.DirtyBytes = before.OutOfSyncKiB << 10
	if err := syncDisks(c); err != nil {
		sc.Error = err.Error()
		return sc
	}
	t0 := time.Now()
	if out, err := ctl(ctx, c.Nodes[0], "connect", peer); err != nil {
		sc.Error = fmt.Sprintf("repctl connect %s: %v: %s", peer, err, out)
		return sc
	}
	d, timing, err := waitSyncSpan(ctx, c.Nodes[0], evs, peer, "SyncSource", "Established", t0, 3*time.Minute)
	tDone := time.Now()
	if err != nil {
		sc.Error = err.Error()
		return sc
	}
	after, err := peerOf(ctx, c.Nodes[0], peer)
	if err != nil {
		sc.Error = err.Error()
		return sc
	}
	sc.ResyncMs, sc.Timing = ms(d), timing
	if end, ok := evs.last(peer, "Established"); ok && timing == "events" {
		sc.ConnectMs = ms(end.Sub(t0))
	} else {
		sc.ConnectMs = ms(tDone.Sub(t0))
	}
	sc.WireSent = after.BytesSent - before.BytesSent
	sc.WireReceived = after.BytesReceived - before.BytesReceived
	if d > 0 {
		sc.RateMBps = float64(sc.DirtyBytes) / d.Seconds() / 1e6
	}
	return sc
}

// timedStep fsyncs both disks, reads alpha's counters for peer, runs
// `repctl args...` on alpha and waits for the span from state `from` to
// `want` in alpha's events (see waitSyncSpan). It returns the span, how it
// was timed, the counters before and the command's start.
func timedStep(ctx context.Context, c *target.Cluster, evs *eventLog, peer, from, want string, args ...string) (d time.Duration, timing string, before api.PeerStatus, t0 time.Time, err error) {
	if err = syncDisks(c); err != nil {
		return
	}
	if before, err = peerOf(ctx, c.Nodes[0], peer); err != nil {
		return
	}
	t0 = time.Now()
	if out, rerr := ctl(ctx, c.Nodes[0], args...); rerr != nil {
		err = fmt.Errorf("repctl %s: %v: %s", strings.Join(args, " "), rerr, out)
		return
	}
	d, timing, err = waitSyncSpan(ctx, c.Nodes[0], evs, peer, from, want, t0, 5*time.Minute)
	return
}

// syncCSums runs `repctl invalidate-remote` of the (identical) peer and
// counts what crossed the link.
func syncCSums(ctx context.Context, c *target.Cluster, evs *eventLog, peer string, size int64) (cs result.CSumsCase) {
	d, timing, before, _, err := timedStep(ctx, c, evs, peer, "SyncSource", "Established", "invalidate-remote", peer)
	if err != nil {
		cs.Error = err.Error()
		return cs
	}
	after, err := peerOf(ctx, c.Nodes[0], peer)
	if err != nil {
		cs.Error = err.Error()
		return cs
	}
	cs.ResyncMs, cs.Timing = ms(d), timing
	if d > 0 {
		cs.RateMBps = float64(size) / d.Seconds() / 1e6
	}
	cs.SourceSent = after.BytesSent - before.BytesSent
	cs.HashesRecv = after.BytesReceived - before.BytesReceived
	cs.SourcePct = 100 * float64(cs.SourceSent) / float64(size)
	cs.HashesPct = 100 * float64(cs.HashesRecv) / float64(size)
	cs.EqualBytes = after.CSumsEqualBytes
	cs.ResyncedDiff = after.ResyncedBytes - before.ResyncedBytes
	return cs
}

// syncVerify runs `repctl verify` toward the peer and times it from the
// VerifySource event to the state that follows it.
func syncVerify(ctx context.Context, c *target.Cluster, evs *eventLog, peer string, size int64) (v result.VerifyResult) {
	d, timing, before, t0, err := timedStep(ctx, c, evs, peer, "VerifySource", "", "verify", peer)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	// A difference found would start a repair (SyncSource): let it end, so
	// that the counters read below are the verify's and the cluster is in
	// sync for what follows.
	if err := c.Nodes[0].WaitPeers(ctx, 3*time.Minute, harness.InSync); err != nil {
		v.Error = "after verify: " + err.Error()
	}
	after, err := peerOf(ctx, c.Nodes[0], peer)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	v.Ms, v.Timing = ms(d), timing
	if d > 0 {
		v.RateMBps = float64(size) / d.Seconds() / 1e6
	}
	v.MismatchKiB = after.VerifyMismatchKiB
	v.WireSent = after.BytesSent - before.BytesSent
	v.WireRecv = after.BytesReceived - before.BytesReceived
	if e, ok := evs.find(func(e api.Event) bool { return e.Kind == "verify" && e.Peer == peer && !e.Time.Before(t0) }); ok {
		v.Message = e.Message
	}
	return v
}

// waitSyncSpan waits until node 0's events show peer entering state from
// (a replication event after since) and leaving it again, and returns the
// time in between. With want set, leaving for another state is an error.
// If the events were missed (the stream drops events when its reader
// lags) but the status says the peer is in sync, the wall time from since
// is returned, and timing says so.
func waitSyncSpan(ctx context.Context, n *harness.Node, evs *eventLog, peer, from, want string, since time.Time, timeout time.Duration) (time.Duration, string, error) {
	deadline := time.Now().Add(timeout)
	var inSyncSince time.Time
	for {
		start, end, ok := evs.span(peer, from, since)
		if ok {
			if want != "" && end.New != want {
				return 0, "", fmt.Errorf("%s left %s for %s, not %s", peer, from, end.New, want)
			}
			return end.Time.Sub(start.Time), "events", nil
		}
		if err := evs.failed(); err != nil {
			return 0, "", fmt.Errorf("event stream: %w", err)
		}
		now := time.Now()
		st, err := n.Status(ctx)
		if err == nil && len(st.Peers) > 0 && harness.InSync(st.Peers[0]) {
			// Done by the status but not by the events yet: give them a
			// second to arrive.
			if inSyncSince.IsZero() {
				inSyncSince = now
			} else if now.Sub(inSyncSince) > time.Second {
				if !start.Time.IsZero() {
					return inSyncSince.Sub(start.Time), "from the " + from + " event to the status poll (no end event seen)", nil
				}
				return inSyncSince.Sub(since), "wall clock from the command to the status poll (no " + from + " event seen)", nil
			}
		}
		if now.After(deadline) {
			s := "no status"
			if err == nil && len(st.Peers) > 0 {
				p := st.Peers[0]
				s = fmt.Sprintf("%s %s/%s/%s oos=%dKiB", p.Name, p.Connection, p.Replication, p.Disk, p.OutOfSyncKiB)
			}
			return 0, "", fmt.Errorf("%s to the end not seen in %s (%s)", from, timeout, s)
		}
		if exited, perr := n.Exited(0); exited {
			return 0, "", fmt.Errorf("repd %s exited (%v)%s", n.Name, perr, proc.Tail(n.LogTail(4096)))
		}
		evs.wait(ctx, 50*time.Millisecond)
		if ctx.Err() != nil {
			return 0, "", ctx.Err()
		}
	}
}

// eventLog collects a node's events from a `repctl events` subprocess.
type eventLog struct {
	mu      sync.Mutex
	evs     []api.Event
	changed chan struct{} // closed and replaced on every event
	err     error         // the stream ended early
}

// startEvents starts `repctl events` on n, copying its lines to logPath,
// and waits for its first line (the current state).
func startEvents(ctx context.Context, n *harness.Node, logPath string) (*eventLog, func(), error) {
	l := &eventLog{changed: make(chan struct{})}
	f, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	pr, pw := io.Pipe()
	cmd := n.CtlCmd("events")
	cmd.Stdout = pw
	cmd.Stderr = f
	rctx, cancel := context.WithCancel(ctx)
	var stopping sync.Once
	var stopped bool
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		err := proc.Run(rctx, cmd)
		pw.CloseWithError(io.EOF)
		l.mu.Lock()
		if !stopped {
			l.err = fmt.Errorf("repctl events ended: %v", err)
			if err == nil {
				l.err = errors.New("repctl events ended")
			}
		}
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}()
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			f.Write(append(line, '\n'))
			var e api.Event
			if json.Unmarshal(line, &e) != nil {
				continue
			}
			l.mu.Lock()
			l.evs = append(l.evs, e)
			close(l.changed)
			l.changed = make(chan struct{})
			l.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
	}()
	stop := func() {
		stopping.Do(func() {
			l.mu.Lock()
			stopped = true
			l.mu.Unlock()
			cancel()
			<-ran
			<-read
			f.Close()
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		n, err := len(l.evs), l.err
		l.mu.Unlock()
		if n > 0 {
			return l, stop, nil
		}
		if err != nil || time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			if err == nil {
				err = errors.New("no event in 10 s")
			}
			return nil, nil, err
		}
		l.wait(ctx, 50*time.Millisecond)
	}
}

// wait returns after the next event, d or the end of ctx, whichever first.
func (l *eventLog) wait(ctx context.Context, d time.Duration) {
	l.mu.Lock()
	ch := l.changed
	l.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
	}
}

func (l *eventLog) failed() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *eventLog) find(ok func(api.Event) bool) (api.Event, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.evs {
		if ok(e) {
			return e, true
		}
	}
	return api.Event{}, false
}

// await is find, waiting up to d for a matching event to arrive: the
// events stream is another process's output and may lag what the caller
// just saw happen.
func (l *eventLog) await(ctx context.Context, d time.Duration, ok func(api.Event) bool) (api.Event, bool) {
	deadline := time.Now().Add(d)
	for {
		if e, found := l.find(ok); found {
			return e, true
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil || l.failed() != nil {
			return api.Event{}, false
		}
		l.wait(ctx, min(left, 100*time.Millisecond))
	}
}

// last is the time of the latest replication event of peer into state.
func (l *eventLog) last(peer, state string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.evs) - 1; i >= 0; i-- {
		if e := l.evs[i]; e.Kind == "replication" && e.Peer == peer && e.New == state {
			return e.Time, true
		}
	}
	return time.Time{}, false
}

// span finds the first replication event of peer into state from at or
// after since, and the first later one out of it.
func (l *eventLog) span(peer, from string, since time.Time) (start, end api.Event, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return spanOf(l.evs, peer, from, since)
}

func spanOf(evs []api.Event, peer, from string, since time.Time) (start, end api.Event, ok bool) {
	for _, e := range evs {
		if e.Kind != "replication" || e.Peer != peer || e.Time.Before(since) {
			continue
		}
		switch {
		case start.Time.IsZero() && e.New == from:
			start = e
		case !start.Time.IsZero() && e.Old == from:
			return start, e, true
		}
	}
	return start, api.Event{}, false
}

// syncDisks writes back the dirty pages of every node's backing file
// (fsync) before a timed step, untimed, so every step starts alike. repd's stores write through the page cache
// and a resync makes its data durable (a barrier every few MiB, an
// fdatasync on the target): without this, the resync's first barrier would
// also write back what fio left dirty a moment before, and the resync would
// be charged for the reference's writeback.
func syncDisks(c *target.Cluster) error {
	for _, n := range c.Nodes {
		f, err := os.Open(n.Disk)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("fsync %s: %w", n.Disk, err)
		}
	}
	return nil
}

// peerOf is n's status of peer (from the admin API).
func peerOf(ctx context.Context, n *harness.Node, peer string) (api.PeerStatus, error) {
	st, err := n.Status(ctx)
	if err != nil {
		return api.PeerStatus{}, err
	}
	if p, ok := st.Peer(peer); ok {
		return p, nil
	}
	return api.PeerStatus{}, fmt.Errorf("status of %s: no peer %s", n.Name, peer)
}
