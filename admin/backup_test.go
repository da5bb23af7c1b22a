package admin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/api"
)

// recorderNode keeps the backup reports it is given.
type recorderNode struct {
	fakeNode
	mu   sync.Mutex
	got  []api.BackupReport
	fail error
}

func (n *recorderNode) RecordBackup(r api.BackupReport) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail != nil {
		return n.fail
	}
	n.got = append(n.got, r)
	return nil
}

func serve(t *testing.T, c Controller) (*Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(c, &Hub{})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock), sock
}

// POST /v1/backup over a real socket with the real client: a good report
// reaches the node; every bad one is refused as bad_request with the field
// named, before the node sees it; a node without a record says so.
func TestBackupEndpoint(t *testing.T) {
	n := &recorderNode{}
	cl, _ := serve(t, n)
	ctx := context.Background()
	now := time.Now()
	good := api.BackupReport{Time: now.Add(-time.Second), Kind: api.BackupInc, BytesRead: 1 << 20, FileBytes: 2 << 20,
		Duration: 1.5, Dir: "/var/backups/repd/r0", Snapshot: "backup-20261205T130000Z"}
	if err := cl.Backup(ctx, good); err != nil {
		t.Fatal(err)
	}
	failure := api.BackupReport{Time: now, Error: "read r0@s: connection refused", Dir: "/b", Snapshot: "s"}
	if err := cl.Backup(ctx, failure); err != nil {
		t.Fatalf("a failure report: %v", err)
	}
	if len(n.got) != 2 || !n.got[0].Time.Equal(good.Time) || n.got[0].Kind != "inc" || n.got[1].Error != failure.Error {
		t.Fatalf("node got %+v", n.got)
	}
	with := func(f func(*api.BackupReport)) api.BackupReport { r := good; f(&r); return r }
	for _, c := range []struct {
		r    api.BackupReport
		want string
	}{
		{with(func(r *api.BackupReport) { r.Time = time.Time{} }), "time: missing"},
		{with(func(r *api.BackupReport) { r.Time = now.Add(time.Hour) }), "in the future"},
		{with(func(r *api.BackupReport) { r.Time = time.Date(1970, 1, 2, 0, 0, 0, 0, time.UTC) }), "before the year 2000"},
		{with(func(r *api.BackupReport) { r.Kind = "" }), "kind: missing"},
		{with(func(r *api.BackupReport) { r.Kind = "differential" }), `kind "differential"`},
		{with(func(r *api.BackupReport) { r.BytesRead = -1 }), "bytes_read -1: negative"},
		{with(func(r *api.BackupReport) { r.FileBytes = -5 }), "file_bytes -5: negative"},
		{with(func(r *api.BackupReport) { r.Duration = -1 }), "duration -1"},
		{with(func(r *api.BackupReport) { r.Duration = 1e12 }), "duration 1e+12"},
		{with(func(r *api.BackupReport) { r.Dir = "" }), "dir: missing"},
		{with(func(r *api.BackupReport) { r.Dir = "backups" }), "not an absolute path"},
		{with(func(r *api.BackupReport) { r.Dir = "/" + strings.Repeat("d", maxBackupDir) }), "dir: 4097 bytes, at most 4096"},
		{with(func(r *api.BackupReport) { r.Snapshot = "" }), "snapshot: missing"},
		{with(func(r *api.BackupReport) { r.Snapshot = strings.Repeat("s", 65) }), "snapshot: 65 bytes, at most 64"},
		{with(func(r *api.BackupReport) { r.Snapshot = "a\x1b[2Jb" }), "control characters"},
		{with(func(r *api.BackupReport) { r.Kind, r.Error = "", strings.Repeat("e", maxBackupError+1) }), "error: 1025 bytes"},
	} {
		err := cl.Backup(ctx, c.r)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Kind != KindBadRequest || !strings.Contains(err.Error(), c.want) {
			t.Errorf("report %+v: %v, want bad_request naming %q", c.r, err, c.want)
		}
	}
	// Unknown fields and a body that is not JSON are refused too.
	if err := cl.do(ctx, http.MethodPost, "/v1/backup", map[string]any{"time": now, "kind": "full", "dir": "/b", "snapshot": "s", "size": 1}, nil); err == nil ||
		!strings.Contains(err.Error(), `unknown field "size"`) {
		t.Errorf("unknown field: %v", err)
	}
	if len(n.got) != 2 {
		t.Fatalf("bad reports reached the node: %+v", n.got[2:])
	}
	// The node's own failure to keep the record is an internal error.
	n.fail = errors.New("write r0.meta.backup.json: no space left on device")
	if err := cl.Backup(ctx, good); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Errorf("record failure: %v", err)
	}
	// A node that keeps no record says so.
	plain, _ := serve(t, &fakeNode{})
	if err := plain.Backup(ctx, good); err == nil || !strings.Contains(err.Error(), "keeps no backup record") {
		t.Errorf("no recorder: %v", err)
	}
}

// The attack: a client streams an endless body at POST /v1/backup. The
// node reads at most the bound plus one byte, answers 413 naming the
// bound, and records nothing; the other endpoints' bound holds the same way.
func TestBackupBodyBound(t *testing.T) {
	n := &recorderNode{}
	_, sock := serve(t, n)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, c := range []struct {
		path  string
		limit int
	}{{"/v1/backup", maxBackupBody}, {"/v1/primary", maxBody}} {
		src := &countingReader{r: endless{}}
		req, _ := http.NewRequest(http.MethodPost, "http://repd"+c.path, io.LimitReader(src, 1<<30))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := hc.Do(req.WithContext(ctx))
		if err != nil {
			cancel()
			// The server may close the connection while the client still
			// writes; what it read is still bounded below.
			t.Logf("%s: %v", c.path, err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			cancel()
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !bytes.Contains(body, []byte(fmt.Sprintf("request body over %d bytes", c.limit))) {
				t.Errorf("%s: %s %s", c.path, resp.Status, body)
			}
		}
		// The server drains a little after the handler (net/http reads up
		// to 256 KiB to reuse the connection), never the whole gigabyte.
		if sent := src.n.Load(); sent > 4<<20 {
			t.Errorf("%s: the client got %d bytes of body in: not bounded", c.path, sent)
		}
	}
	if len(n.got) != 0 {
		t.Fatalf("recorded %+v", n.got)
	}
	// Just under the bound is read and judged on its content.
	pad := strings.Repeat(" ", maxBackupBody-200)
	req, _ := http.NewRequest(http.MethodPost, "http://repd/v1/backup",
		strings.NewReader(`{"time":"`+time.Now().Format(time.RFC3339)+`","kind":"full","dir":"/b","snapshot":"s"}`+pad))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(n.got) != 1 {
		t.Fatalf("a report under the bound: %s, recorded %d", resp.Status, len(n.got))
	}
}

type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
