package drill

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bench/internal/fio"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/harness"
)

// The backup drill (issue 19): on a two-node protocol C cluster with a
// filled 1 GiB device, repctl backup from the Secondary: a full backup,
// then, after 1 % of the device was rewritten in random 64 KiB blocks, an
// incremental one (bytes read and time against the full's); then fio on
// the Primary without a backup, during full backups from the Secondary,
// and with a fresh snapshot on the Primary (what copy-on-write costs).

const (
	backupDrillSize      = 1 << 30
	backupDrillQuickSize = 256 << 20
	// backupRewriteBlock is the rewrite's block: the snapshot store's
	// chunk, so each rewritten block is one chunk copied and one changed
	// block for the incremental.
	backupRewriteBlock = 64 << 10
	// backupLoadSeconds is each fio run's measured time (after a 1 s ramp).
	backupLoadSeconds      = 6
	backupLoadQuickSeconds = 3
	// backupPacedRate: repctl backup --rate for the paced backups under
	// load (a quarter of what an unpaced full backup reads here).
	backupPacedRate = "64MiB"
	// backupIncRuns: incremental backups, each after its own rewrite.
	backupIncRuns = 3
	// backupLoadRuns: fio runs during backups, each between two runs
	// without (their mean is its base): the judged ratio is the median.
	// The IOPS of two runs side by side differ by up to 15 % on the
	// bench's VM.
	backupLoadRuns = 3
)

// drillBackup runs the backup drill. It never panics; what failed is in
// Error (or a part's Error) and the rest is kept.
func drillBackup(ctx context.Context, env target.Env, quick bool) result.BackupResult {
	if quick {
		r := backupDrill(ctx, env, backupDrillQuickSize, backupLoadQuickSeconds, backupIncRuns, 1)
		r.Quick = true
		return r
	}
	return backupDrill(ctx, env, backupDrillSize, backupLoadSeconds, backupIncRuns, backupLoadRuns)
}

// backupDrill is the drill on a device of size bytes, with fio runs of
// loadSeconds, incRuns incremental backups and loadRuns fio runs during
// backups.
func backupDrill(ctx context.Context, env target.Env, size int64, loadSeconds, incRuns, loadRuns int) (r result.BackupResult) {
	r.DeviceBytes, r.LoadSeconds = size, loadSeconds
	env.Size = size
	// The store holds what the fio runs overwrite while a snapshot lives:
	// up to the whole device.
	c, err := target.StartCluster(ctx, env, target.RepdConfig{Name: "backup", Nodes: []string{"alpha", "bravo"}, Protocol: "C",
		Extra: map[string]string{"snapshot-store-size": fmt.Sprint(2 * size)}})
	if err != nil {
		r.Error = "start: " + err.Error()
		return r
	}
	defer c.Stop()
	r.Notes = append(r.Notes, c.Notes...)
	alpha, bravo := c.Nodes[0], c.Nodes[1]
	fail := func(format string, a ...any) result.BackupResult {
		r.Error = fmt.Sprintf(format, a...)
		return r
	}

	// Fill the device with random data, replicated, durable on both.
	fr, err := fio.Job{
		Args: append(target.FioArgs(alpha.URI()), "--name=fill", "--rw=write", "--bs=1M", "--iodepth=8",
			"--direct=1", "--refill_buffers=1", "--end_fsync=1", fmt.Sprintf("--size=%d", size)),
		Output: filepath.Join(env.Dir, "fill.json"), Timeout: 5 * time.Minute,
	}.Run(ctx)
	if err != nil {
		return fail("fio fill: %v", err)
	}
	r.FillMBps = fr.Write.MBps()
	if err := settle(ctx, c); err != nil {
		return fail("after the fill: %v", err)
	}

	// The snapshot stores are new: each node writes its own once in the
	// background (the README's Snapshots), which competes with the
	// backups for the disk until it is done.
	waited, err := prewritten(ctx, c)
	if err != nil {
		return fail("snapshot stores' pre-writing: %v", err)
	}
	r.Notes = append(r.Notes, fmt.Sprintf("the new snapshot stores were pre-written %.1f s after the fill", waited.Seconds()))

	dir := filepath.Join(env.Dir, "backups")
	full := backupFrom(ctx, bravo, dir, "b1")
	r.Full = &full
	env.Logf("backup full: %+v", full)
	if full.Error != "" {
		return fail("full backup: %s", full.Error)
	}

	// incRuns times: rewrite 1 % of the device in distinct random
	// 64 KiB blocks (fio's random map is on by default), then an
	// incremental backup; the median by wall time is the one judged.
	rewrite := size / 100 / backupRewriteBlock * backupRewriteBlock
	r.RewrittenBytes = rewrite
	var last string
	for i := range incRuns {
		if _, err := (fio.Job{
			Args: append(target.FioArgs(alpha.URI()), "--name=rewrite", "--rw=randwrite", fmt.Sprintf("--bs=%d", backupRewriteBlock),
				"--iodepth=32", "--direct=1", "--refill_buffers=1", "--randrepeat=0", "--end_fsync=1",
				fmt.Sprintf("--size=%d", size), fmt.Sprintf("--io_size=%d", rewrite)),
			Output: filepath.Join(env.Dir, fmt.Sprintf("rewrite-%d.json", i)), Timeout: 5 * time.Minute,
		}.Run(ctx)); err != nil {
			return fail("fio rewrite: %v", err)
		}
		if err := settle(ctx, c); err != nil {
			return fail("after the rewrite: %v", err)
		}
		if i == 0 {
			// What starting repctl costs on this machine now (a status
			// call): the floor under any backup's wall time.
			t0 := time.Now()
			if _, err := ctl(ctx, bravo, "status"); err == nil {
				r.CtlFloorMs = ms(time.Since(t0))
			}
		}
		last = fmt.Sprintf("b%d", i+2)
		inc := backupFrom(ctx, bravo, dir, last)
		r.Incs = append(r.Incs, inc)
		env.Logf("backup inc: %+v", inc)
		if inc.Error != "" {
			return fail("incremental backup: %s", inc.Error)
		}
		if inc.Kind != "inc" {
			return fail("backup %s was %q, not incremental", last, inc.Kind)
		}
	}
	byTime := slices.Clone(r.Incs)
	slices.SortFunc(byTime, func(a, b result.BackupRun) int { return cmp.Compare(a.WallMs, b.WallMs) })
	inc := byTime[len(byTime)/2]
	r.Inc = &inc
	r.IncReadShare = float64(inc.BytesRead) / float64(size)
	if full.WallMs > 0 {
		r.IncTimeRatio = inc.WallMs / full.WallMs
	}
	r.Verify = verifyPoint(ctx, bravo, dir, last)
	env.Logf("backup verify: %s", r.Verify)
	// The chain's base snapshot goes: the load runs start with none.
	if out, err := ctl(ctx, bravo, "snapshot", "delete", last); err != nil {
		return fail("snapshot delete %s: %v: %s", last, err, out)
	}

	// fio on the Primary: without a backup, during backups from the
	// Secondary, with a fresh snapshot on the Primary, without again.
	fioLoad := func(name string) (result.BackupLoad, error) {
		l := result.BackupLoad{Case: name}
		res, err := fio.Job{
			Args: append(target.FioArgs(alpha.URI()), "--name="+name, "--rw=randwrite", "--bs=4k", "--iodepth=32", "--direct=1",
				"--refill_buffers=1", "--norandommap=1", "--randrepeat=0", "--time_based=1", "--ramp_time=1",
				fmt.Sprintf("--runtime=%d", loadSeconds), fmt.Sprintf("--size=%d", size)),
			Output: filepath.Join(env.Dir, fmt.Sprintf("load-%s-%d.json", name, len(r.Load))), Timeout: 2 * time.Minute,
		}.Run(ctx)
		l.IOPS, l.P99Us = res.Write.IOPS, res.Write.P99us
		return l, err
	}
	load := func(name string) (result.BackupLoad, error) {
		if err := settle(ctx, c); err != nil {
			return result.BackupLoad{Case: name}, err
		}
		return fioLoad(name)
	}
	// The backups start after the settle (its fsyncs are no part of the
	// load), right before fio, whose 1 s ramp is not measured.
	during := func(name string, extra ...string) (result.BackupLoad, error) {
		if err := settle(ctx, c); err != nil {
			return result.BackupLoad{Case: name}, err
		}
		return loadDuringBackups(ctx, bravo, filepath.Join(env.Dir, "load-backups"), func() (result.BackupLoad, error) { return fioLoad(name) }, extra...)
	}
	var base []float64
	cases := []string{"base"}
	for range loadRuns {
		cases = append(cases, "backup", "base")
	}
	cases = append(cases, "backup-paced", "snapshot", "snapshot-secondary", "snapshot-secondary-lazy", "base")
	for _, name := range cases {
		if ctx.Err() != nil {
			break
		}
		var l result.BackupLoad
		var err error
		switch name {
		case "base":
			l, err = load(name)
			if err == nil {
				base = append(base, l.IOPS)
			}
		case "backup":
			l, err = during(name)
		case "backup-paced":
			l, err = during(name, "--rate", backupPacedRate)
			l.Rate = backupPacedRate
		case "snapshot", "snapshot-secondary", "snapshot-secondary-lazy":
			// A snapshot of the node's own (taken on a Secondary, it is
			// put into the Primary's stream for it alone); lazy: as
			// repctl backup takes its own (copies synced in the
			// background).
			n := alpha
			if name != "snapshot" {
				n = bravo
			}
			args := []string{"snapshot", "create", "cow"}
			if name == "snapshot-secondary-lazy" {
				args = append(args, "--lazy")
			}
			if out, serr := ctl(ctx, n, args...); serr != nil {
				err = fmt.Errorf("snapshot create cow on %s: %v: %s", n.Name, serr, out)
				break
			}
			l, err = load(name)
			if st, serr := n.Status(ctx); serr == nil {
				l.StoreBytes = st.SnapshotStoreUsed
			}
			if out, derr := ctl(ctx, n, "snapshot", "delete", "cow"); derr != nil && err == nil {
				err = fmt.Errorf("snapshot delete cow on %s: %v: %s", n.Name, derr, out)
			}
		}
		if err != nil {
			l.Error = err.Error()
		}
		r.Load = append(r.Load, l)
		env.Logf("backup load %s: %+v", name, l)
	}
	for _, v := range base {
		r.BaseIOPS += v / float64(len(base))
	}
	for j, l := range r.Load {
		if l.Error != "" || r.BaseIOPS == 0 {
			continue
		}
		switch l.Case {
		case "backup":
			// Over the base runs just before and after it.
			if j > 0 && j+1 < len(r.Load) && r.Load[j-1].Case == "base" && r.Load[j+1].Case == "base" &&
				r.Load[j-1].Error == "" && r.Load[j+1].Error == "" {
				r.BackupRatios = append(r.BackupRatios, 2*l.IOPS/(r.Load[j-1].IOPS+r.Load[j+1].IOPS))
			}
		case "snapshot":
			r.SnapshotRatio = l.IOPS / r.BaseIOPS
		case "snapshot-secondary":
			r.SecondarySnapshotRatio = l.IOPS / r.BaseIOPS
		case "snapshot-secondary-lazy":
			r.SecondaryLazyRatio = l.IOPS / r.BaseIOPS
		}
	}
	if n := len(r.BackupRatios); n > 0 {
		s := slices.Sorted(slices.Values(r.BackupRatios))
		r.BackupRatio = s[n/2]
	}
	if r.Error == "" && ctx.Err() != nil {
		r.Error = "interrupted"
	}
	return r
}

// settle waits until the Secondary is in sync and fsyncs both backing
// files (untimed): repd writes through the page cache, and writeback of
// what a step left dirty belongs to no later step.
func settle(ctx context.Context, c *target.Cluster) error {
	if err := c.Nodes[0].WaitPeers(ctx, 2*time.Minute, harness.InSync); err != nil {
		return err
	}
	return syncDisks(c)
}

// prewritten waits, at most five minutes, until no node of c has any of
// its new snapshot store left to pre-write, and says how long it waited.
func prewritten(ctx context.Context, c *target.Cluster) (time.Duration, error) {
	t0 := time.Now()
	var err error
	wait := harness.WaitFor(ctx, "the snapshot stores' pre-writing", 5*time.Minute, func() bool {
		left := int64(0)
		for _, n := range c.Nodes {
			var out string
			if out, err = ctl(ctx, n, "snapshot", "list", "--json"); err != nil {
				err = fmt.Errorf("snapshot list on %s: %v: %s", n.Name, err, out)
				return true
			}
			var l api.SnapshotList
			if err = json.Unmarshal([]byte(out), &l); err != nil {
				err = fmt.Errorf("snapshot list on %s: %v", n.Name, err)
				return true
			}
			left += l.PrewriteLeftBytes
		}
		return left == 0
	})
	if err == nil {
		err = wait
	}
	return time.Since(t0), err
}

// backupFrom runs repctl backup on node n into dir, taking snapshot name,
// timed from start to exit; the sizes and duration are what n recorded
// from repctl's report.
func backupFrom(ctx context.Context, n *harness.Node, dir, name string, extra ...string) (b result.BackupRun) {
	b.Snapshot = name
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	args := append([]string{"backup", "--to", dir, "--nbd", n.NBD, "--resource", "bench", "--snapshot", name}, extra...)
	cmd := n.CtlCmd(args...)
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	cmd.Env = harness.QuickExitEnv()
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	b.WallMs = ms(time.Since(t0))
	if err != nil {
		b.Error = fmt.Sprintf("repctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		return b
	}
	st, err := n.Status(ctx)
	switch {
	case err != nil:
		b.Error = err.Error()
	case st.Backup == nil || st.Backup.Last == nil || st.Backup.Last.Snapshot != name:
		b.Error = fmt.Sprintf("%s did not record the backup of %s (its record: %+v)", n.Name, name, st.Backup)
	default:
		l := st.Backup.Last
		b.Kind, b.ReportedSeconds, b.BytesRead, b.FileBytes = l.Kind, l.Duration, l.BytesRead, l.FileBytes
	}
	return b
}

// verifyPoint compares the newest point in dir (the qcow2 chain) with the
// export of its snapshot on n, byte for byte, with qemu-img compare.
func verifyPoint(ctx context.Context, n *harness.Node, dir, snap string) string {
	m, err := filepath.Glob(filepath.Join(dir, "*-inc.qcow2"))
	if err != nil || len(m) == 0 {
		return fmt.Sprintf("no incremental point in %s", dir)
	}
	point := m[len(m)-1] // names start with the time: the newest last
	uri := "nbd://" + n.NBD + "/bench@" + snap
	if network, addr := n.NBDAddr(); network == "unix" {
		uri = "nbd+unix:///bench@" + snap + "?socket=" + addr
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", point, uri).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("qemu-img compare %s %s: %v: %s", filepath.Base(point), uri, err, strings.TrimSpace(string(out)))
	}
	return "identical (qemu-img compare " + filepath.Base(point) + " with " + "bench@" + snap + ")"
}

// loadDuringBackups runs run (a fio run) while full backups from n go on,
// one after another, from before it starts measuring until it ends;
// retention keeps one point in dir. It returns run's result with the
// number of backups.
func loadDuringBackups(ctx context.Context, n *harness.Node, dir string, run func() (result.BackupLoad, error), extra ...string) (result.BackupLoad, error) {
	bctx, stop := context.WithCancel(ctx)
	var (
		wg      sync.WaitGroup
		count   int
		backErr error
		started = make(chan struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; bctx.Err() == nil; i++ {
			if i == 0 {
				close(started)
			}
			b := backupFrom(ctx, n, dir, fmt.Sprintf("load-%d", i), append([]string{"--full", "--keep", "1"}, extra...)...)
			if b.Error != "" {
				backErr = errors.New(b.Error)
				return
			}
			count++
		}
	}()
	<-started
	l, err := run()
	stop()
	wg.Wait()
	l.Backups = count // the last one finished after fio did
	if backErr != nil && err == nil {
		err = fmt.Errorf("backup during the load: %w", backErr)
	}
	// The last backup's snapshot stays as the base of the next: drop it.
	if count > 0 {
		if out, derr := ctl(ctx, n, "snapshot", "delete", fmt.Sprintf("load-%d", count-1)); derr != nil && err == nil {
			err = fmt.Errorf("snapshot delete: %v: %s", derr, out)
		}
	}
	os.RemoveAll(dir)
	return l, err
}
