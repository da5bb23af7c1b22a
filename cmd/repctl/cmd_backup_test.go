package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/backup"
	"github.com/repd/repd/internal/testtool"
	nbdclient "github.com/repd/repd/nbd/client"
)

func runCmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, testtool.Require(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuSnapshots implements Snapshots the way repd will, with QEMU: the
// device is a qcow2 image; a snapshot is a copy of it served read-only by
// its own qemu-nbd as r0@NAME, with the dirty bitmap of every other
// snapshot; each snapshot's bitmap on the device records what changes
// after it.
type qemuSnapshots struct {
	t     testing.TB
	dir   string
	disk  string
	snaps map[string]*exec.Cmd
	order []string
	// invalid: snapshots the test marked invalid (still there, not
	// listed as valid).
	invalid map[string]bool
}

func newQemuSnapshots(t testing.TB) *qemuSnapshots {
	q := &qemuSnapshots{t: t, dir: t.TempDir(), snaps: map[string]*exec.Cmd{}, invalid: map[string]bool{}}
	q.disk = filepath.Join(q.dir, "disk.qcow2")
	runCmd(t, "qemu-img", "create", "-q", "-f", "qcow2", q.disk, "8M")
	t.Cleanup(func() {
		for _, n := range q.order {
			q.stop(n)
		}
	})
	return q
}

func (q *qemuSnapshots) write(cmds ...string) {
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	runCmd(q.t, "qemu-io", append(args, q.disk)...)
}

func (q *qemuSnapshots) sock(name string) string   { return filepath.Join(q.dir, name+".sock") }
func (q *qemuSnapshots) copyOf(name string) string { return filepath.Join(q.dir, name+".qcow2") }

func (q *qemuSnapshots) uri(name string) string {
	return nbdclient.Target{Network: "unix", Address: q.sock(name), Export: "r0@" + name}.String()
}

func (q *qemuSnapshots) Create(_ context.Context, name string) error {
	if _, ok := q.snaps[name]; ok {
		return fmt.Errorf("snapshot %q exists", name)
	}
	if out, err := exec.Command("qemu-img", "bitmap", "--add", "-g", "4096", q.disk, name).CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	src, _ := os.ReadFile(q.disk)
	os.WriteFile(q.copyOf(name), src, 0o600)
	args := []string{"-r", "-t", "-e", "4", "-f", "qcow2", "-x", "r0@" + name, "-k", q.sock(name)}
	for _, other := range q.order {
		args = append(args, "-B", other)
	}
	cmd := exec.Command(testtool.Require(q.t, "qemu-nbd"), append(args, q.copyOf(name))...)
	if err := cmd.Start(); err != nil {
		return err
	}
	q.snaps[name] = cmd
	q.order = append(q.order, name)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unix", q.sock(name)); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("qemu-nbd for %s did not start", name)
}

func (q *qemuSnapshots) stop(name string) {
	if cmd := q.snaps[name]; cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
	delete(q.snaps, name)
}

func (q *qemuSnapshots) Delete(_ context.Context, name string) error {
	if _, ok := q.snaps[name]; !ok {
		return fmt.Errorf("no snapshot %q", name)
	}
	q.stop(name)
	q.order = slices.DeleteFunc(q.order, func(s string) bool { return s == name })
	if out, err := exec.Command("qemu-img", "bitmap", "--remove", q.disk, name).CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func (q *qemuSnapshots) List(context.Context) ([]string, error) {
	return slices.DeleteFunc(slices.Clone(q.order), func(n string) bool { return q.invalid[n] }), nil
}

func (q *qemuSnapshots) Invalid(context.Context) ([]string, error) {
	return slices.DeleteFunc(slices.Clone(q.order), func(n string) bool { return !q.invalid[n] }), nil
}

func (q *qemuSnapshots) Names(ctx context.Context) (valid, invalid []string, err error) {
	valid, _ = q.List(ctx)
	invalid, _ = q.Invalid(ctx)
	return valid, invalid, nil
}

func TestBackupCommand(t *testing.T) {
	q := newQemuSnapshots(t)
	q.write("write -P 0x11 0 1M", "write -P 0x22 5M 512k")
	dir := filepath.Join(t.TempDir(), "b")
	var out bytes.Buffer
	clk := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	var reports []api.BackupReport
	o := backupOpts{dir: dir, out: &out, now: func() time.Time { clk = clk.Add(time.Minute); return clk },
		report: func(_ context.Context, r api.BackupReport) error { reports = append(reports, r); return nil }}
	ctx := context.Background()

	o.snapshot = "n1"
	p1, err := runBackup(ctx, o, q, q.uri)
	if err != nil || p1.Kind != backup.KindFull {
		t.Fatalf("first backup: %+v %v", p1, err)
	}
	q.write("write -P 0x33 64k 4k")
	o.snapshot = "n2"
	p2, err := runBackup(ctx, o, q, q.uri)
	if err != nil || p2.Kind != backup.KindInc || p2.BytesRead != 4096 {
		t.Fatalf("incremental: %+v %v", p2, err)
	}
	// Each success was reported to the node as it will be recorded: its
	// end, kind, sizes, duration (the clock ticks a minute per reading),
	// the directory as an absolute path and the snapshot.
	if len(reports) != 2 {
		t.Fatalf("reports: %+v", reports)
	}
	for i, p := range []backup.Point{p1, p2} {
		r := reports[i]
		if r.Kind != p.Kind || r.BytesRead != p.BytesRead || r.FileBytes != p.FileBytes || r.Snapshot != p.Snapshot ||
			r.Dir != dir || r.Duration != 60 || r.Error != "" || !r.Time.Equal(p.Time.Add(time.Minute)) {
			t.Errorf("report %d: %+v for %+v", i, r, p)
		}
		if err := admin.CheckBackupReport(r, r.Time); err != nil {
			t.Errorf("report %d would be refused: %v", i, err)
		}
	}
	// The previous base snapshot is gone, the new one stays for next time.
	if l, _ := q.List(ctx); !slices.Equal(l, []string{"n2"}) {
		t.Fatalf("snapshots after the incremental: %v", l)
	}
	q.write("write -z 0 64k")
	o.snapshot, o.keep = "", 2 // default name backup-TIME
	p3, err := runBackup(ctx, o, q, q.uri)
	if err != nil || p3.Snapshot != "backup-"+strings.TrimSuffix(p3.File, "-inc.qcow2") {
		t.Fatalf("third backup: %+v %v", p3, err)
	}
	// A fourth within the same second (the test's clock stands still
	// between backups only as far as the name goes): the default name
	// takes a suffix instead of colliding with the third's snapshot.
	ticking := o.now
	o.now = func() time.Time { return p3.Time }
	p4, err := runBackup(ctx, o, q, q.uri)
	if err != nil || p4.Snapshot != p3.Snapshot+".2" {
		t.Fatalf("a second backup in the same second: %+v %v", p4, err)
	}
	o.now, p3 = ticking, p4 // the latest point from here on
	if pts := len(mustManifest(t, dir).Points); pts != 2 {
		t.Fatalf("--keep 2 left %d points", pts)
	}
	t.Logf("repctl backup output:\n%s", out.String())

	// Restore the latest point and compare with its snapshot.
	target := filepath.Join(t.TempDir(), "r.raw")
	out.Reset()
	if err := runRestore(ctx, restoreOpts{dir: dir, point: "latest", target: target, out: &out}); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", target, q.copyOf(p3.Snapshot))
	if !strings.Contains(out.String(), "restored "+p3.File) {
		t.Fatalf("restore output: %s", out.String())
	}
	err = runRestore(ctx, restoreOpts{dir: dir, point: "latest", target: "nbd://127.0.0.1/r0", out: io.Discard})
	if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "qemu-img convert -n") {
		t.Fatalf("restore to an NBD URI: %v", err)
	}
	out.Reset()
	if err := runBackups(ctx, dir, true, false, &out); err != nil || !strings.Contains(out.String(), "verified 2 points") {
		t.Fatalf("backups --verify: %v\n%s", err, out.String())
	}

	// The base snapshot vanished: the incremental is refused, --full works.
	q.Delete(ctx, p3.Snapshot)
	o.snapshot, o.keep = "n4", 0
	reports = nil
	if _, err := runBackup(ctx, o, q, q.uri); err == nil || !strings.Contains(err.Error(), "--full") {
		t.Fatalf("incremental without its base snapshot: %v", err)
	}
	// The failure was reported too, with its reason.
	if len(reports) != 1 || reports[0].Kind != "" || reports[0].Snapshot != "n4" || !strings.Contains(reports[0].Error, "--full") {
		t.Fatalf("failure reports: %+v", reports)
	}
	if l, _ := q.List(ctx); len(l) != 0 {
		t.Fatalf("snapshots left after a refused backup: %v", l)
	}
	// A backup that fails after the snapshot was taken deletes it again.
	o.full = true
	if _, err := runBackup(ctx, o, q, func(string) string { return "nbd+unix:///r0@n4?socket=/nonexistent" }); err == nil {
		t.Fatal("backup from a missing export succeeded")
	}
	if l, _ := q.List(ctx); len(l) != 0 {
		t.Fatalf("the failed backup left its snapshot: %v", l)
	}
	out.Reset()
	if p, err := runBackup(ctx, o, q, q.uri); err != nil || p.Kind != backup.KindFull || strings.Contains(out.String(), "warning") {
		t.Fatalf("--full: %+v %v\n%s", p, err, out.String())
	}
	if l, _ := q.List(ctx); !slices.Equal(l, []string{"n4"}) {
		t.Fatalf("snapshots after --full: %v", l)
	}

	// The base snapshot is there but invalid (a power loss with its lazy
	// copies unsynced): refused, naming --full-if-needed; with it, a full
	// backup, and the invalid base is deleted.
	q.invalid["n4"] = true
	o.full, o.snapshot = false, "n5"
	if _, err := runBackup(ctx, o, q, q.uri); err == nil || !strings.Contains(err.Error(), "--full-if-needed") {
		t.Fatalf("incremental on an invalid base: %v", err)
	}
	o.fullIfNeeded = true
	out.Reset()
	if p, err := runBackup(ctx, o, q, q.uri); err != nil || p.Kind != backup.KindFull || !strings.Contains(out.String(), "taking a full backup") {
		t.Fatalf("--full-if-needed: %+v %v\n%s", p, err, out.String())
	}
	if l, _ := q.List(ctx); !slices.Equal(l, []string{"n5"}) || q.snaps["n4"] != nil {
		t.Fatalf("snapshots after --full-if-needed: %v (n4 still there: %v)", l, q.snaps["n4"] != nil)
	}
}

func mustManifest(t *testing.T, dir string) backup.Manifest {
	t.Helper()
	r, err := backup.Open(dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	return r.Manifest()
}

// The command line: --uri backs up an export as it is; without a way to
// reach the node it is a usage error; against a node the snapshot API's
// absence is said plainly.
func TestBackupCLI(t *testing.T) {
	q := newQemuSnapshots(t)
	q.write("write -P 0x44 0 256k")
	if err := q.Create(context.Background(), "ext"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if code := run([]string{"repctl", "backup", "--to", dir, "--uri", q.uri("ext"), "--snapshot", "ext"}); code != exitOK {
		t.Fatalf("repctl backup --uri: exit %d", code)
	}
	if m := mustManifest(t, dir); len(m.Points) != 1 || m.Points[0].Snapshot != "ext" || m.Points[0].BytesRead != 256<<10 {
		t.Fatalf("manifest: %+v", m.Points)
	}
	if l, _ := q.List(context.Background()); !slices.Equal(l, []string{"ext"}) {
		t.Fatalf("--uri touched the snapshots: %v", l)
	}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"backup", "--to", dir, "--uri", q.uri("ext")}, exitUsage},                    // no --snapshot
		{[]string{"backup", "--to", dir, "--uri", "http://x/y", "--snapshot", "s"}, exitUsage}, // not an NBD URI
		{[]string{"backup", "--to", dir}, exitUsage},                                           // no node
		{[]string{"backup", "--to", dir, "--keep", "-1", "--uri", q.uri("ext"), "--snapshot", "s"}, exitUsage},
		{[]string{"backup", "--to", dir, "--rate", "fast", "--uri", q.uri("ext"), "--snapshot", "s"}, exitUsage},
		{[]string{"backup", "--to", dir, "--rate", "64k", "--uri", q.uri("ext"), "--snapshot", "s"}, exitUsage}, // under 1 MiB/s
		{[]string{"--admin", filepath.Join(dir, "none.sock"), "backup", "--to", dir, "--nbd", "127.0.0.1:1", "--resource", "r0", "--full"}, exitUnreachable},
		{[]string{"restore", "--from", dir}, exitUsage}, // no --to
		{[]string{"restore", "--from", dir, "--point", "nope", "--to", filepath.Join(dir, "x")}, exitUsage},
	} {
		if code := run(append([]string{"repctl"}, tc.args...)); code != tc.code {
			t.Errorf("repctl %s: exit %d, want %d", strings.Join(tc.args, " "), code, tc.code)
		}
	}
	// The node path takes the snapshot through the admin API and, when
	// its export cannot be read, deletes it again.
	node, sock := serveSnapNode(t, t.TempDir(), "alpha")
	_, err := runBackup(context.Background(), backupOpts{dir: dir, out: io.Discard, full: true, snapshot: "via-admin"},
		adminSnapshots{cl: admin.NewClient(sock)}, func(string) string { return "nbd://127.0.0.1:1/r0@via-admin" })
	if err == nil || len(node.asked) != 1 || len(node.SnapshotList().Snapshots) != 0 {
		t.Fatalf("backup through the admin API: %v; asked %v, left %+v", err, node.asked, node.SnapshotList().Snapshots)
	}
	// The command line on the node path reports to the node it took the
	// snapshot on: here the failure (the export cannot be read).
	if code := run([]string{"repctl", "--admin", sock, "backup", "--to", dir, "--nbd", "127.0.0.1:1", "--resource", "r0", "--full"}); code != exitError {
		t.Fatalf("backup of an unreadable export: exit %d", code)
	}
	if len(node.reports) != 1 || node.reports[0].Error == "" || node.reports[0].Dir != dir || len(node.SnapshotList().Snapshots) != 0 {
		t.Fatalf("reports to the node: %+v", node.reports)
	}
}

// --metrics-file writes node_exporter's textfile: the gauges after a
// success, failures counted after, the success's gauges kept; each write
// replaces the file whole. A name node_exporter would not read is refused.
func TestBackupMetricsFile(t *testing.T) {
	q := newQemuSnapshots(t)
	q.write("write -P 0x44 0 256k")
	if err := q.Create(context.Background(), "ext"); err != nil {
		t.Fatal(err)
	}
	dir, tf := t.TempDir(), t.TempDir()
	mf := filepath.Join(tf, "repd-backup.prom")
	args := []string{"repctl", "backup", "--to", dir, "--uri", q.uri("ext"), "--snapshot", "ext", "--metrics-file", mf}
	before := time.Now()
	if code := run(args); code != exitOK {
		t.Fatalf("repctl backup --metrics-file: exit %d", code)
	}
	v := readMetricsFile(mf)
	if ts := v["repd_backup_last_success_timestamp_seconds"]; ts < float64(before.Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("timestamp %v, want between %v and now", ts, before.Unix())
	}
	m := mustManifest(t, dir)
	if v["repd_backup_last_size_bytes"] != float64(m.Points[0].FileBytes) || v["repd_backup_last_read_bytes"] != 256<<10 ||
		v["repd_backups_total"] != 1 || v["repd_backup_failures_total"] != 0 || v["repd_backup_last_full"] != 1 || v["repd_backup_last_duration_seconds"] <= 0 {
		t.Errorf("textfile after a success: %v", v)
	}
	text, _ := os.ReadFile(mf)
	for _, want := range []string{"# TYPE repd_backups_total counter\n", "# TYPE repd_backup_last_success_timestamp_seconds gauge\n",
		`repd_backups_total{dir="` + dir + `"} 1` + "\n"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("textfile lacks %q:\n%s", want, text)
		}
	}
	// A failure (the export is gone) counts, and the last success stays.
	q.stop("ext")
	if code := run(args); code != exitError {
		t.Fatalf("backup of a stopped export: exit %d", code)
	}
	v2 := readMetricsFile(mf)
	if v2["repd_backup_failures_total"] != 1 || v2["repd_backups_total"] != 1 ||
		v2["repd_backup_last_success_timestamp_seconds"] != v["repd_backup_last_success_timestamp_seconds"] {
		t.Errorf("textfile after a failure: %v", v2)
	}
	if left, _ := filepath.Glob(filepath.Join(tf, "*")); len(left) != 1 {
		t.Errorf("textfile directory holds %v: temporary files left", left)
	}
	if code := run([]string{"repctl", "backup", "--to", dir, "--uri", q.uri("ext"), "--snapshot", "ext", "--metrics-file", filepath.Join(tf, "m.txt")}); code != exitUsage {
		t.Errorf("--metrics-file m.txt: exit %d, want usage", code)
	}
	// Errors fit a report: one line, bounded.
	if s := reportText("a\nb\x1b"+strings.Repeat("é", 2000), maxReportError); len(s) > maxReportError || strings.ContainsAny(s, "\n\x1b") || !utf8.ValidString(s) {
		t.Errorf("reportText: %d bytes %q", len(s), s[:20])
	}
}

func TestNBDTarget(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:10809":         "nbd://127.0.0.1:10809/r0@s",
		"[::]:10809":            "nbd://[::1]:10809/r0@s",
		"10.0.0.1:10900":        "nbd://10.0.0.1:10900/r0@s",
		"unix:/run/repd/r0.nbd": "nbd+unix:///r0@s?socket=/run/repd/r0.nbd",
	} {
		tg, err := nbdTarget(in)
		if err != nil {
			t.Fatal(err)
		}
		tg.Export = "r0@s"
		if tg.String() != want {
			t.Errorf("nbdTarget(%q) = %s, want %s", in, tg, want)
		}
	}
	if _, err := nbdTarget("nowhere"); err == nil || exitCode(err) != exitUsage {
		t.Fatalf("bad address: %v", err)
	}
}

func TestDefaultSnapshotName(t *testing.T) {
	at := time.Date(2026, 12, 6, 2, 30, 5, 0, time.FixedZone("x", 3600))
	for _, tc := range []struct {
		have snapshotNames
		want string
	}{
		{snapshotNames{}, "backup-20261206T013005Z"},
		{snapshotNames{valid: []string{"backup-20261206T013005Z"}}, "backup-20261206T013005Z.2"},
		// An invalid snapshot holds its name until deleted.
		{snapshotNames{valid: []string{"backup-20261206T013005Z"}, invalid: []string{"backup-20261206T013005Z.2"}}, "backup-20261206T013005Z.3"},
		// Without a list, the plain name (creating it says what is wrong).
		{snapshotNames{err: fmt.Errorf("unreachable")}, "backup-20261206T013005Z"},
	} {
		if got := defaultSnapshotName(at, tc.have); got != tc.want {
			t.Errorf("defaultSnapshotName(%+v) = %q, want %q", tc.have, got, tc.want)
		}
	}
}
