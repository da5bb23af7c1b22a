package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/replica"
)

// snapNode is a node's admin API with snapshots only: what repctl sends,
// what it gets back.
type snapNode struct {
	admin.Controller
	mu    sync.Mutex
	name  string
	snaps []api.SnapshotInfo
	asked [][]string
	off   bool
	// reports are the backup reports the node got.
	reports []api.BackupReport
}

func (s *snapNode) RecordBackup(r api.BackupReport) error {
	if err := admin.CheckBackupReport(r, time.Now()); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reports = append(s.reports, r)
	return nil
}

func (s *snapNode) Status() api.Status { return api.Status{Node: s.name, Resource: "r0"} }

func (s *snapNode) Snapshot(_ context.Context, name string, nodes []string) (api.SnapshotResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, nodes)
	for _, sn := range s.snaps {
		if sn.Name == name {
			return api.SnapshotResult{}, fmt.Errorf("%w: %s already has a snapshot %q", replica.ErrRefused, s.name, name)
		}
	}
	s.snaps = append(s.snaps, api.SnapshotInfo{Name: name, Node: s.name, Created: time.Now().Add(-90 * time.Second), AgeSeconds: 90, Bytes: 3 << 20, Valid: true})
	created := []string{s.name}
	if len(nodes) > 0 {
		created = nodes
	}
	return api.SnapshotResult{Name: name, Created: created, Note: "taken in the write stream of the Primary alpha"}, nil
}

// SnapshotLazy takes a lazy snapshot here; asked records it as ["lazy"].
func (s *snapNode) SnapshotLazy(ctx context.Context, name string) (api.SnapshotResult, error) {
	res, err := s.Snapshot(ctx, name, nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked[len(s.asked)-1] = []string{"lazy"}
	if err == nil {
		s.snaps[len(s.snaps)-1].Lazy = true
	}
	return res, err
}

func (s *snapNode) SnapshotList() api.SnapshotList {
	s.mu.Lock()
	defer s.mu.Unlock()
	return api.SnapshotList{Resource: "r0", Node: s.name, Enabled: !s.off, CapacityBytes: 1 << 30, UsedBytes: 3 << 20, PrewriteLeftBytes: 512 << 20, Snapshots: append([]api.SnapshotInfo{}, s.snaps...)}
}

func (s *snapNode) DeleteSnapshot(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, sn := range s.snaps {
		if sn.Name == name {
			s.snaps = append(s.snaps[:i], s.snaps[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("%w: %s has no snapshot %q", replica.ErrRefused, s.name, name)
}

// serveSnapNode serves a snapNode on a unix socket in dir.
func serveSnapNode(t *testing.T, dir, name string) (*snapNode, string) {
	t.Helper()
	n := &snapNode{name: name}
	sock := filepath.Join(dir, name+".sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: admin.Handler(n, &admin.Hub{})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return n, sock
}

// captureStdout runs f with os.Stdout going to a pipe and returns what it
// printed.
func captureStdout(t *testing.T, f func() int) (string, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&out, r); close(done) }()
	code := f()
	os.Stdout = old
	w.Close()
	<-done
	return out.String(), code
}

// repctl snapshot create/list/delete against an admin socket: --node goes
// to the node as the list of nodes, while the global --node still picks
// the socket from --config; refusals exit 3, bad usage 2.
func TestSnapshotVerbs(t *testing.T) {
	dir := t.TempDir()
	alpha, asock := serveSnapNode(t, dir, "alpha")
	conf := filepath.Join(dir, "r0.toml")
	os.WriteFile(conf, []byte(`[resource]
name = "r0"
size = "16MiB"
insecure = true
[[node]]
name = "alpha"
disk = "`+dir+`/a.img"
meta = "`+dir+`/a.meta"
nbd = "127.0.0.1:10809"
peer = "127.0.0.1:7789"
admin = "`+asock+`"
[[node]]
name = "beta"
disk = "`+dir+`/b.img"
meta = "`+dir+`/b.meta"
nbd = "127.0.0.2:10809"
peer = "127.0.0.2:7789"
admin = "`+dir+`/nobody.sock"
`), 0o644)

	out, code := captureStdout(t, func() int {
		return run([]string{"repctl", "--config", conf, "--node", "alpha", "snapshot", "create", "nightly", "--node", "alpha,beta"})
	})
	if code != exitOK || !strings.Contains(out, "snapshot nightly created on alpha, beta") || !strings.Contains(out, "Primary alpha") {
		t.Fatalf("create: exit %d\n%s", code, out)
	}
	if got := alpha.asked[0]; len(got) != 2 || got[0] != "alpha" || got[1] != "beta" {
		t.Fatalf("nodes sent: %v", got)
	}
	out, code = captureStdout(t, func() int {
		return run([]string{"repctl", "--config", conf, "--node", "alpha", "snapshot", "create", "--node", "all", "weekly"})
	})
	if got := alpha.asked[1]; code != exitOK || len(got) != 1 || got[0] != "all" {
		t.Fatalf("create --node all NAME: exit %d, nodes %v\n%s", code, got, out)
	}
	alpha.asked = alpha.asked[:1]
	alpha.DeleteSnapshot("weekly")
	out, code = captureStdout(t, func() int { return run([]string{"repctl", "--admin", asock, "snapshot", "create", "hourly", "--json"}) })
	var res api.SnapshotResult
	if code != exitOK || json.Unmarshal([]byte(out), &res) != nil || res.Name != "hourly" || alpha.asked[1] != nil {
		t.Fatalf("create --json: exit %d %+v\n%s", code, res, out)
	}
	out, code = captureStdout(t, func() int { return run([]string{"repctl", "--admin", asock, "snapshot", "create", "hourly"}) })
	if code != exitRefused {
		t.Fatalf("duplicate: exit %d %s", code, out)
	}
	out, code = captureStdout(t, func() int { return run([]string{"repctl", "--admin", asock, "snapshot", "list"}) })
	if code != exitOK || !strings.Contains(out, "store 3.0MiB of 1.0GiB used (new: 512.0MiB still to pre-write)") || !strings.Contains(out, "nightly") ||
		!strings.Contains(out, "1m30s") || !strings.Contains(out, "valid") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	out, code = captureStdout(t, func() int { return run([]string{"repctl", "--admin", asock, "snapshot", "list", "--json"}) })
	var l api.SnapshotList
	if code != exitOK || json.Unmarshal([]byte(out), &l) != nil || len(l.Snapshots) != 2 || l.Snapshots[0].AgeSeconds != 90 {
		t.Fatalf("list --json: exit %d %+v\n%s", code, l, out)
	}
	// --lazy, after the name or before it, asks for a lazy one.
	out, code = captureStdout(t, func() int { return run([]string{"repctl", "--admin", asock, "snapshot", "create", "lz", "--lazy"}) })
	if code != exitOK || !strings.Contains(out, "snapshot lz created on alpha") || strings.Join(alpha.asked[len(alpha.asked)-1], ",") != "lazy" {
		t.Fatalf("create --lazy: exit %d, asked %v\n%s", code, alpha.asked, out)
	}
	out, code = captureStdout(t, func() int { return run([]string{"repctl", "--admin", asock, "snapshot", "list"}) })
	if code != exitOK || !strings.Contains(out, "valid, lazy") {
		t.Fatalf("list with a lazy one: exit %d\n%s", code, out)
	}
	alpha.DeleteSnapshot("lz")
	if code := run([]string{"repctl", "--admin", asock, "snapshot", "delete", "nightly"}); code != exitOK || len(alpha.SnapshotList().Snapshots) != 1 {
		t.Fatalf("delete: exit %d", code)
	}
	if code := run([]string{"repctl", "--admin", asock, "snapshot", "delete", "nightly"}); code != exitRefused {
		t.Fatalf("delete twice: exit %d", code)
	}
	for _, args := range [][]string{
		{"snapshot", "create"},
		{"snapshot", "create", "a", "b"},
		{"snapshot", "create", "a", "--node"},
		{"snapshot", "create", "a", "--node", "alpha,,beta"},
		{"snapshot", "create", "a", "--node", "all,beta"},
		{"snapshot", "create", "a", "--lazy", "--node", "all"},
		{"snapshot", "create", "--lazy", "--node", "alpha", "a"},
		{"snapshot", "delete"},
		{"snapshot", "list", "x"},
	} {
		if code := run(append([]string{"repctl", "--admin", asock}, args...)); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
	// The backup verbs' snapshots go through the same API: valid names
	// only, and a clear error where snapshots are off.
	s := adminSnapshots{cl: admin.NewClient(asock)}
	if err := s.Create(context.Background(), "b1"); err != nil {
		t.Fatal(err)
	}
	if got := alpha.asked[len(alpha.asked)-1]; strings.Join(got, ",") != "lazy" {
		t.Fatalf("a backup's snapshot was not asked lazy: %v", got)
	}
	durable := adminSnapshots{cl: admin.NewClient(asock), durable: true}
	if err := durable.Create(context.Background(), "b0"); err != nil || alpha.asked[len(alpha.asked)-1] != nil {
		t.Fatalf("--durable-snapshot: %v, asked %v", err, alpha.asked)
	}
	if err := durable.Delete(context.Background(), "b0"); err != nil {
		t.Fatal(err)
	}
	alpha.mu.Lock()
	alpha.snaps = append(alpha.snaps, api.SnapshotInfo{Name: "broken", Valid: false, Reason: "the snapshot store was full"})
	alpha.mu.Unlock()
	valid, invalid, err := s.Names(context.Background())
	if err != nil || strings.Join(valid, ",") != "hourly,b1" || strings.Join(invalid, ",") != "broken" {
		t.Fatalf("backup's list: %v %v, %v", valid, invalid, err)
	}
	if err := s.Delete(context.Background(), "b1"); err != nil {
		t.Fatal(err)
	}
	alpha.off = true
	if _, _, err := s.Names(context.Background()); err == nil || !strings.Contains(err.Error(), "snapshot-store-size") {
		t.Fatalf("list with snapshots off: %v", err)
	}
	out, _ = captureStdout(t, func() int { return run([]string{"repctl", "--admin", asock, "snapshot", "list"}) })
	if !strings.Contains(out, "snapshots are off on alpha") {
		t.Fatalf("list with snapshots off:\n%s", out)
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", 45 * time.Second: "45s", 192 * time.Second: "3m12s",
		5*time.Hour + 3*time.Minute: "5h03m", 52 * time.Hour: "2d04h"} {
		if got := age(d); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
}
