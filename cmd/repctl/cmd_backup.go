package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/backup"
	"github.com/repd/repd/config"
	nbdclient "github.com/repd/repd/nbd/client"
)

// Snapshots creates and deletes the point-in-time snapshots a backup reads.
// repd serves each snapshot NAME of resource R as the read-only NBD export
// R@NAME, with the metadata contexts base:allocation and, for every other
// snapshot OTHER, qemu:dirty-bitmap:OTHER (the blocks changed between
// OTHER and NAME).
type Snapshots interface {
	Create(ctx context.Context, name string) error
	Delete(ctx context.Context, name string) error
	// Names returns the names of the node's valid snapshots and of its
	// invalid ones (a lazy one after a power loss, one a full store
	// invalidated): an invalid one cannot be read nor serve as the base
	// of an incremental backup, but holds a table entry until deleted.
	Names(ctx context.Context) (valid, invalid []string, err error)
}

// adminSnapshots is Snapshots over the node's admin API: the snapshots of
// the node repctl talks to (on a Secondary, taken in the Primary's write
// stream). They are lazy unless durable is set: a backup's snapshot then
// costs the node's writes no fdatasync per first write into a chunk, and
// losing it to a power loss costs only a full backup next time.
type adminSnapshots struct {
	cl      *admin.Client
	durable bool
}

// Create takes snapshot name on the node and returns once it exists.
func (s adminSnapshots) Create(ctx context.Context, name string) error {
	if s.durable {
		_, err := s.cl.Snapshot(ctx, name, nil)
		return err
	}
	_, err := s.cl.SnapshotLazy(ctx, name)
	return err
}

// Delete deletes the node's snapshot name.
func (s adminSnapshots) Delete(ctx context.Context, name string) error {
	return s.cl.DeleteSnapshot(ctx, name)
}

// Report tells the node the outcome of a backup of its snapshot, for its
// backup metrics.
func (s adminSnapshots) Report(ctx context.Context, r api.BackupReport) error {
	return s.cl.Backup(ctx, r)
}

// Names returns the names of the node's valid and invalid snapshots.
func (s adminSnapshots) Names(ctx context.Context) (valid, invalid []string, err error) {
	l, err := s.cl.Snapshots(ctx)
	if err != nil {
		return nil, nil, err
	}
	if !l.Enabled {
		return nil, nil, fmt.Errorf("snapshots are off on %s: set resource.snapshot-store-size in the resource file", l.Node)
	}
	for _, sn := range l.Snapshots {
		if sn.Valid {
			valid = append(valid, sn.Name)
		} else {
			invalid = append(invalid, sn.Name)
		}
	}
	return valid, invalid, nil
}

func cmdBackup() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "back up the resource into a directory of qcow2 files: full, then incremental",
		Description: "Takes a snapshot on the node, reads its export RESOURCE@SNAPSHOT over NBD into DIR\n" +
			"(a full backup reads only allocated data; an incremental only the blocks changed\n" +
			"since the previous backup's snapshot, which is then deleted), and records the\n" +
			"chain in DIR/manifest.json. --keep N merges the oldest points so that at most N\n" +
			"remain, each restorable (repctl restore, or qemu-img convert -O raw DIR/POINT.qcow2 TARGET).\n" +
			"--uri backs up an export that already is a snapshot (nothing is created or deleted).\n" +
			"The snapshots it takes are lazy (see repctl snapshot create --lazy): they survive\n" +
			"restarts of repd, but a power loss or kernel crash of the node while copies were\n" +
			"unsynced invalidates the last one, and the next backup must be --full.\n" +
			"--durable-snapshot takes them like repctl snapshot create does instead.",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "to", Usage: "backup directory (created if missing)", Required: true},
			&cli.StringFlag{Name: "snapshot", Usage: "name of the snapshot to take (default backup-TIME); with --uri, the name of the snapshot the export shows"},
			&cli.BoolFlag{Name: "full", Usage: "a full backup even if the directory has points"},
			&cli.BoolFlag{Name: "full-if-needed", Usage: "a full backup, instead of failing, when the last backup's snapshot is gone or invalid (for scheduled runs: a power loss invalidates a lazy snapshot whose copies were unsynced)"},
			&cli.IntFlag{Name: "keep", Usage: "after the backup, keep at most this many points (0: keep all)"},
			&cli.StringFlag{Name: "rate", Usage: "read at most this much per second on average (e.g. 100MiB), to leave the node's disk and CPU to its writes (default: as fast as the node answers)"},
			&cli.BoolFlag{Name: "durable-snapshot", Usage: "take the snapshot with every copy synced before the write it preserves (survives a power loss; costs the node's writes an fdatasync per first write into a chunk)"},
			&cli.StringFlag{Name: "uri", Usage: "back up this NBD export (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH) instead of taking a snapshot"},
			&cli.StringFlag{Name: "nbd", Usage: "the node's NBD address (HOST:PORT or unix:/PATH; default: --node's nbd in --config)"},
			&cli.StringFlag{Name: "resource", Usage: "resource name (default: from --config, or the node's status)"},
			&cli.PathFlag{Name: "tls-ca", Usage: "use TLS on the NBD connection, trusting this CA certificate (PEM)"},
			&cli.PathFlag{Name: "metrics-file", Usage: "also write the backup's metrics into this node_exporter textfile (NAME.prom in its --collector.textfile.directory), replaced atomically"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log what is done to stderr"},
		},
		Action: func(c *cli.Context) error {
			o, err := backupOptions(c)
			if err != nil {
				return err
			}
			if u := c.String("uri"); u != "" {
				_, err := runBackup(c.Context, o, nil, func(string) string { return u })
				return err
			}
			target, resource, snaps, err := nodeBackupTarget(c)
			if err != nil {
				return err
			}
			target.TLS = o.tls != nil
			snaps.durable = c.Bool("durable-snapshot")
			o.report = snaps.Report
			_, err = runBackup(c.Context, o, snaps, func(snap string) string {
				t := target
				t.Export = resource + "@" + snap
				return t.String()
			})
			return err
		},
	}
}

// backupOptions reads and checks repctl backup's flags (the systemd unit's
// test runs it on the unit's command line).
func backupOptions(c *cli.Context) (backupOpts, error) {
	if c.NArg() != 0 {
		return backupOpts{}, usageError("backup takes no arguments (the directory is --to DIR)")
	}
	o := backupOpts{
		dir: c.Path("to"), snapshot: c.String("snapshot"), full: c.Bool("full"), fullIfNeeded: c.Bool("full-if-needed"), keep: c.Int("keep"),
		out: os.Stdout, tty: isTerminal(os.Stdout), log: cliLogger(c.Bool("verbose")),
		metricsFile: c.Path("metrics-file"),
	}
	if o.metricsFile != "" && !strings.HasSuffix(o.metricsFile, ".prom") {
		return o, usageError("--metrics-file %s: node_exporter's textfile collector reads only files named *.prom", o.metricsFile)
	}
	if o.keep < 0 {
		return o, usageError("--keep %d: give a number of points, at least 1 (0 keeps all)", o.keep)
	}
	if r := c.String("rate"); r != "" {
		n, err := config.ParseBytes(r)
		if err != nil || n < 1<<20 {
			return o, usageError("--rate %s: give bytes per second, at least 1MiB (e.g. 100MiB)", r)
		}
		o.rate = n
	}
	var err error
	if o.tls, err = tlsConfig(c.Path("tls-ca")); err != nil {
		return o, err
	}
	if u := c.String("uri"); u != "" {
		if o.snapshot == "" {
			return o, usageError("--uri needs --snapshot NAME: the name of the snapshot the export shows (the next incremental asks for its dirty bitmap)")
		}
		if c.String("nbd") != "" {
			return o, usageError("--uri and --nbd exclude each other")
		}
		if c.Bool("durable-snapshot") {
			return o, usageError("--uri backs up a snapshot that exists: --durable-snapshot is for the one repctl backup takes")
		}
		if _, err := nbdclient.ParseURI(u); err != nil {
			return o, usageError("--uri: %v", err)
		}
	}
	return o, nil
}

// backupOpts are repctl backup's settings.
type backupOpts struct {
	dir      string
	snapshot string
	full     bool
	// fullIfNeeded: a full backup when the base snapshot is gone.
	fullIfNeeded bool
	keep         int
	rate         int64 // bytes per second (0: unpaced)
	tls          *tls.Config
	out          io.Writer
	tty          bool
	log          *slog.Logger
	now          func() time.Time
	// report, if set, tells the node a backup's outcome (POST /v1/backup);
	// metricsFile, if set, is a node_exporter textfile to update.
	report      func(context.Context, api.BackupReport) error
	metricsFile string
}

// nodeBackupTarget finds the node's NBD address, the resource name and its
// snapshots from the global flags and --nbd/--resource.
func nodeBackupTarget(c *cli.Context) (nbdclient.Target, string, adminSnapshots, error) {
	cl, err := client(c)
	if err != nil {
		return nbdclient.Target{}, "", adminSnapshots{}, err
	}
	addr, resource := c.String("nbd"), c.String("resource")
	if p := c.Path("config"); p != "" && (addr == "" || resource == "") {
		f, err := config.Load(p)
		if err != nil {
			return nbdclient.Target{}, "", adminSnapshots{}, cli.Exit(err.Error(), exitUsage)
		}
		name := c.String("node")
		if name == "" {
			name, _ = os.Hostname()
		}
		n, err := f.Node(name)
		if err != nil {
			return nbdclient.Target{}, "", adminSnapshots{}, cli.Exit(err.Error()+"; pass --node", exitUsage)
		}
		if addr == "" {
			addr = n.NBD
		}
		if resource == "" {
			resource = f.Resource.Name
		}
	}
	if addr == "" {
		return nbdclient.Target{}, "", adminSnapshots{}, usageError("say where the node serves NBD: --nbd HOST:PORT (or unix:/PATH), or --config FILE --node NAME")
	}
	if resource == "" {
		st, err := cl.Status(c.Context)
		if err != nil {
			return nbdclient.Target{}, "", adminSnapshots{}, err
		}
		resource = st.Resource
	}
	t, err := nbdTarget(addr)
	if err != nil {
		return nbdclient.Target{}, "", adminSnapshots{}, err
	}
	return t, resource, adminSnapshots{cl: cl}, nil
}

// nbdTarget is where to reach a node whose NBD listen address is addr
// (config's nbd: HOST:PORT or unix:/PATH); a node listening on every
// address is reached on loopback.
func nbdTarget(addr string) (nbdclient.Target, error) {
	network, address, err := config.SplitListen(addr)
	if err != nil {
		return nbdclient.Target{}, usageError("NBD address %v", err)
	}
	if network == "tcp" {
		host, port, _ := net.SplitHostPort(address)
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
			if ip.To4() == nil {
				host = "::1"
			}
		}
		address = net.JoinHostPort(host, port)
	}
	return nbdclient.Target{Network: network, Address: address}, nil
}

// runBackup takes one backup into o.dir. With snaps it creates the snapshot
// and, once the backup is in the manifest, deletes the previous point's
// snapshot (the new one is the base of the next incremental); on failure
// it deletes the snapshot it created. Without snaps the export named by
// uriOf is backed up as it is. uriOf gives the URI of a snapshot's export.
// The outcome, success or failure, goes to o.report and o.metricsFile
// (while the previous snapshot is deleted) before retention runs:
// retention trouble does not undo a backup.
func runBackup(ctx context.Context, o backupOpts, snaps Snapshots, uriOf func(snap string) string) (backup.Point, error) {
	if o.now == nil {
		o.now = time.Now
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	start := o.now()
	// One listing serves the default name, the check that the base
	// snapshot is there and the deletion of the previous one.
	var have snapshotNames
	if snaps != nil {
		have.valid, have.invalid, have.err = snaps.Names(ctx)
	}
	name := o.snapshot
	if name == "" {
		name = defaultSnapshotName(start, have)
	}
	prog := &progressLine{w: o.out, tty: o.tty}
	defer prog.end()
	repo, err := backup.Open(o.dir, backup.Options{Logger: o.log, Progress: prog.report, Now: func() time.Time { return start }})
	if err == nil {
		defer repo.Close()
		var p backup.Point
		var cleanup func()
		p, cleanup, err = backupOnce(ctx, o, repo, prog, name, snaps, have, uriOf)
		o.tell(ctx, p, name, start, err)
		if cleanup != nil {
			cleanup()
		}
		if err != nil {
			return backup.Point{}, err
		}
		return p, retain(ctx, o, repo, prog)
	}
	o.tell(ctx, backup.Point{}, name, start, err)
	return backup.Point{}, err
}

// snapshotNames is what Snapshots.Names returned.
type snapshotNames struct {
	valid, invalid []string
	err            error
}

// defaultSnapshotName is backup-TIME (UTC, to the second), with a suffix
// .2, .3, ... when the node already has a snapshot of that name (a second
// backup within the same second). If the list could not be had, the plain
// name: creating the snapshot then says what is wrong.
func defaultSnapshotName(start time.Time, have snapshotNames) string {
	name := "backup-" + start.UTC().Format("20060102T150405Z")
	for i, n := 2, name; ; i++ {
		if !slices.Contains(have.valid, n) && !slices.Contains(have.invalid, n) {
			return n
		}
		n = fmt.Sprintf("%s.%d", name, i)
	}
}

// backupOnce takes the backup into repo (runBackup). have is the node's
// snapshots before it. After a success, cleanup (when not nil) waits for
// the deletion of the previous point's snapshot, started meanwhile, and
// warns if it failed.
func backupOnce(ctx context.Context, o backupOpts, repo *backup.Repo, prog *progressLine, name string, snaps Snapshots, have snapshotNames, uriOf func(snap string) string) (backup.Point, func(), error) {
	req := backup.Request{Snapshot: name, Full: o.full, Rate: o.rate}
	base, inc := repo.Incremental(req)
	last, hadLast := repo.Last()
	if snaps != nil {
		if inc {
			if have.err != nil {
				return backup.Point{}, nil, fmt.Errorf("list snapshots: %w", have.err)
			}
			if !slices.Contains(have.valid, base) {
				if !o.fullIfNeeded {
					return backup.Point{}, nil, fmt.Errorf("the last backup's snapshot %q is no longer on the node, or no longer valid (repctl snapshot list says why), so what changed since cannot be known: take a full backup (--full, or --full-if-needed in scheduled runs)", base)
				}
				fmt.Fprintf(o.out, "the last backup's snapshot %q is no longer on the node, or no longer valid (repctl snapshot list says why): taking a full backup\n", base)
				req.Full = true
			}
		}
		t0 := time.Now()
		if err := snaps.Create(ctx, name); err != nil {
			return backup.Point{}, nil, fmt.Errorf("create snapshot %q: %w", name, err)
		}
		o.log.Debug("snapshot created", "snapshot", name, "seconds", time.Since(t0).Seconds())
	}
	fail := func(err error) (backup.Point, func(), error) {
		prog.end()
		if snaps != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if derr := snaps.Delete(dctx, name); derr != nil {
				return backup.Point{}, nil, fmt.Errorf("%w (and the snapshot %q could not be deleted: %v)", err, name, derr)
			}
		}
		return backup.Point{}, nil, err
	}
	uri := uriOf(name)
	c, err := nbdclient.DialURI(ctx, uri, nbdclient.Options{MetaContexts: repo.MetaContexts(req), TLS: o.tls, Logger: o.log})
	if err != nil {
		return fail(err)
	}
	t0 := time.Now()
	p, err := repo.Backup(ctx, c, req)
	c.Close()
	if err != nil {
		return fail(err)
	}
	o.log.Debug("point written", "file", p.File, "seconds", time.Since(t0).Seconds())
	prog.end()
	fmt.Fprintf(o.out, "%s backup of %s: read %s, stored %s in %s\n", p.Kind, p.Source, size(p.BytesRead), size(p.FileBytes), p.File)
	// The new snapshot is the base of the next incremental; the previous
	// one (still there unless a --full replaced a lost one; an invalid one
	// holds a table entry, 64 at most, until deleted) is not needed.
	if snaps == nil || !hadLast || last.Snapshot == name ||
		!(slices.Contains(have.valid, last.Snapshot) || slices.Contains(have.invalid, last.Snapshot)) {
		return p, nil, nil
	}
	done := make(chan error, 1)
	go func() {
		t0 := time.Now()
		err := snaps.Delete(ctx, last.Snapshot)
		o.log.Debug("previous snapshot deleted", "snapshot", last.Snapshot, "seconds", time.Since(t0).Seconds(), "err", err)
		done <- err
	}()
	return p, func() {
		if err := <-done; err != nil {
			fmt.Fprintf(o.out, "warning: the previous backup's snapshot %q was not deleted: %v\n", last.Snapshot, err)
		}
	}, nil
}

// retain applies --keep to repo after a backup.
func retain(ctx context.Context, o backupOpts, repo *backup.Repo, prog *progressLine) error {
	if o.keep > 0 {
		dropped, err := repo.Retain(ctx, o.keep)
		prog.end()
		if err != nil {
			return fmt.Errorf("the backup is done, retention failed: %w", err)
		}
		if len(dropped) > 0 {
			fmt.Fprintf(o.out, "retention: merged or dropped %d old points, %d kept\n", len(dropped), len(repo.Manifest().Points))
		}
	}
	return nil
}

// progressLine draws backup.Progress on a terminal (one line, redrawn at
// most 10 times a second) and prints nothing otherwise.
type progressLine struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func (l *progressLine) report(p backup.Progress) {
	if !l.tty || p.Total <= 0 || (time.Since(l.last) < 100*time.Millisecond && p.Done < p.Total) {
		return
	}
	l.last = time.Now()
	l.drawn = true
	fmt.Fprintf(l.w, "\r\033[K%-8s %s %s/%s", p.Phase, bar(100*float64(p.Done)/float64(p.Total)), size(p.Done), size(p.Total))
}

// end finishes a drawn line.
func (l *progressLine) end() {
	if l.drawn {
		fmt.Fprintln(l.w)
		l.drawn = false
	}
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// tlsConfig trusts the CA in file, or returns nil for no TLS.
func tlsConfig(file string) (*tls.Config, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, usageError("--tls-ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, usageError("--tls-ca %s: no PEM certificate in it", file)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// cliLogger logs to stderr when verbose, else nowhere.
func cliLogger(verbose bool) *slog.Logger {
	if !verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
