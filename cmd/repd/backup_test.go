package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
)

// freePort returns a loopback TCP address nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startDaemon runs the daemon in this process on conf until the returned
// function stops it (and waits for run to return).
func startDaemon(t *testing.T, conf, admSock string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, options{config: conf, node: "alpha", log: slog.New(slog.DiscardHandler)}) }()
	cl := admin.NewClient(admSock)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := cl.Status(context.Background()); err == nil {
			break
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("daemon did not answer on its admin socket in 20 s")
		}
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}
}

// A real daemon keeps the backup record across a restart: the report
// posted over its admin socket is in status and on /metrics, durably in
// the file beside the meta file, and there again after a clean restart.
func TestBackupRecordAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	admSock, mx := filepath.Join(dir, "a.sock"), freePort(t)
	conf := filepath.Join(dir, "r0.toml")
	os.WriteFile(conf, []byte(`[resource]
name = "r0"
size = "4MiB"
[[node]]
name = "alpha"
disk = "`+dir+`/a.img"
meta = "`+dir+`/a.meta"
nbd = "unix:`+dir+`/a.nbd"
peer = "127.0.0.1:0"
admin = "`+admSock+`"
metrics = "`+mx+`"
`), 0o644)
	ctx := context.Background()
	cl := admin.NewClient(admSock)
	stop := startDaemon(t, conf, admSock)
	st, err := cl.Status(ctx)
	if err != nil || st.Backup == nil || st.Backup.Last != nil || st.Backup.Backups != 0 {
		stop()
		t.Fatalf("fresh node's backup record: %+v %v", st.Backup, err)
	}
	// The events stream shows each report.
	evctx, stopEvents := context.WithCancel(ctx)
	events := make(chan api.Event, 16)
	go cl.Events(evctx, func(e api.Event) error {
		if e.Kind == "backup" {
			events <- e
		}
		return nil
	})
	defer stopEvents()
	time.Sleep(100 * time.Millisecond) // subscribed before the reports
	end := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	full := api.BackupReport{Time: end, Kind: api.BackupFull, BytesRead: 3 << 20, FileBytes: 3<<20 + 327680, Duration: 4.25, Dir: "/var/backups/repd/r0", Snapshot: "backup-1"}
	for _, r := range []api.BackupReport{
		full,
		{Time: end.Add(time.Second), Error: "read r0@backup-2: connection reset", Dir: "/var/backups/repd/r0", Snapshot: "backup-2"},
	} {
		if err := cl.Backup(ctx, r); err != nil {
			stop()
			t.Fatal(err)
		}
	}
	for _, want := range []string{"full", "failed"} {
		select {
		case e := <-events:
			if e.New != want || !strings.Contains(e.Message, "/var/backups/repd/r0") {
				t.Errorf("backup event %+v, want %s", e, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s backup event", want)
		}
	}
	// A bad report changes nothing.
	if err := cl.Backup(ctx, api.BackupReport{Time: end, Kind: "full"}); err == nil {
		t.Error("a report without dir and snapshot was accepted")
	}
	check := func(when string) {
		t.Helper()
		st, err := cl.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b := st.Backup
		if b == nil || b.Last == nil || !b.Last.Time.Equal(end) || b.Last.Kind != "full" || b.Last.FileBytes != full.FileBytes ||
			b.Backups != 1 || b.Failures != 1 || b.LastFailure == nil || !strings.Contains(b.LastFailure.Error, "connection reset") {
			t.Fatalf("%s: backup record %+v", when, b)
		}
		resp, err := http.Get("http://" + mx + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"repd_backups_total 1", "repd_backup_failures_total 1", "repd_backup_last_duration_seconds 4.25",
			"repd_backup_last_size_bytes 3.473408e+06"} {
			if !strings.Contains(string(body), want+"\n") {
				t.Errorf("%s: /metrics lacks %q", when, want)
			}
		}
	}
	check("before the restart")
	// An open events stream does not hold the shutdown (it used to, for
	// the 30 s grace): it ends when the node stops.
	t0 := time.Now()
	stop()
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("the daemon took %v to stop with an events stream open", d)
	}
	stopEvents()

	var f backupRecordFile
	b, err := os.ReadFile(filepath.Join(dir, "a.meta.backup.json"))
	if err != nil || json.Unmarshal(b, &f) != nil || f.Version != 1 || f.Backups != 1 {
		t.Fatalf("record file: %v\n%s", err, b)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.tmp*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
	stop = startDaemon(t, conf, admSock)
	defer stop()
	check("after the restart")
}

// An unreadable record does not stop the node: it starts empty, says why,
// and the next report replaces the file.
func TestBackupRecordDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.backup.json")
	os.WriteFile(path, []byte(`{"version":1,"last":{"time":`), 0o600)
	r, err := openBackupRecord(path)
	if err == nil || !strings.Contains(err.Error(), "starting with an empty record") || r.Status().Backups != 0 {
		t.Fatalf("damaged record: %v %+v", err, r.Status())
	}
	if err := r.Record(api.BackupReport{Time: time.Now(), Kind: "inc", Dir: "/b", Snapshot: "s"}); err != nil {
		t.Fatal(err)
	}
	r2, err := openBackupRecord(path)
	if err != nil || r2.Status().Backups != 1 || r2.Status().Last.Kind != "inc" {
		t.Fatalf("rewritten record: %v %+v", err, r2.Status())
	}
	os.WriteFile(path, []byte(`{"version":9}`), 0o600)
	if _, err := openBackupRecord(path); err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Fatalf("future version: %v", err)
	}
	// A record that cannot be written is an error, and memory keeps the
	// old record (status never shows what is not durable).
	gone := filepath.Join(t.TempDir(), "gone", "m.backup.json") // its directory is missing
	r3, _ := openBackupRecord(gone)
	if err := r3.Record(api.BackupReport{Time: time.Now(), Kind: "full", Dir: "/b", Snapshot: "s"}); err == nil || r3.Status().Backups != 0 {
		t.Fatalf("unwritable record: %v %+v", err, r3.Status())
	}
}
