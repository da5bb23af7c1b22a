package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/repd/repd/api"
	"github.com/repd/repd/replica"
)

// fakeNode answers the snapshot calls of the API; the other verbs are not
// used here.
type fakeNode struct {
	Controller
	snaps map[string]bool
	asked []string
}

func (f *fakeNode) Status() api.Status { return api.Status{Node: "alpha"} }

func (f *fakeNode) Snapshot(_ context.Context, name string, nodes []string) (api.SnapshotResult, error) {
	f.asked = nodes
	switch {
	case f.snaps[name]:
		return api.SnapshotResult{}, fmt.Errorf("%w: alpha already has a snapshot %q", replica.ErrRefused, name)
	case len(nodes) == 1 && nodes[0] == "nowhere":
		return api.SnapshotResult{}, fmt.Errorf("%w: %q is not a node", replica.ErrUnknownPeer, nodes[0])
	case name == "io":
		return api.SnapshotResult{}, errors.New("flush: input/output error")
	}
	f.snaps[name] = true
	return api.SnapshotResult{Name: name, Created: []string{"alpha"}}, nil
}

func (f *fakeNode) SnapshotList() api.SnapshotList {
	l := api.SnapshotList{Node: "alpha", Enabled: true, Snapshots: []api.SnapshotInfo{}}
	for n := range f.snaps {
		l.Snapshots = append(l.Snapshots, api.SnapshotInfo{Name: n, Node: "alpha", Valid: true})
	}
	return l
}

func (f *fakeNode) DeleteSnapshot(name string) error {
	if !f.snaps[name] {
		return fmt.Errorf("%w: alpha has no snapshot %q", replica.ErrRefused, name)
	}
	delete(f.snaps, name)
	return nil
}

// The snapshot endpoints over a real unix socket with the real client:
// results, refusals as "refused", unknown nodes and bad bodies as
// "bad_request", other failures as "internal"; a list of node names
// beyond any resource's is refused before the node sees it.
func TestSnapshotEndpoints(t *testing.T) {
	f := &fakeNode{snaps: map[string]bool{}}
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(f, &Hub{})}
	go srv.Serve(l)
	defer srv.Close()
	cl := NewClient(sock)
	ctx := context.Background()

	res, err := cl.Snapshot(ctx, "s1", []string{"all"})
	if err != nil || res.Name != "s1" || len(res.Created) != 1 || len(f.asked) != 1 || f.asked[0] != "all" {
		t.Fatalf("create: %+v, %v (nodes %v)", res, err, f.asked)
	}
	kind := func(err error) string {
		var ae *APIError
		if !errors.As(err, &ae) {
			t.Fatalf("not an API error: %v", err)
		}
		return ae.Kind
	}
	if _, err := cl.Snapshot(ctx, "s1", nil); kind(err) != KindRefused || !strings.Contains(err.Error(), "already has") {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := cl.Snapshot(ctx, "s2", []string{"nowhere"}); kind(err) != KindBadRequest {
		t.Fatalf("unknown node: %v", err)
	}
	if _, err := cl.Snapshot(ctx, "io", nil); kind(err) != KindInternal {
		t.Fatalf("I/O error: %v", err)
	}
	many := make([]string, maxSnapshotNodes+1)
	for i := range many {
		many[i] = "n"
	}
	f.asked = nil
	if _, err := cl.Snapshot(ctx, "s3", many); kind(err) != KindBadRequest || f.asked != nil {
		t.Fatalf("too many nodes: %v (the node was asked: %v)", err, f.asked != nil)
	}
	var bad ErrorReply
	if err := cl.do(ctx, http.MethodPost, "/v1/snapshot", map[string]any{"name": "x", "when": "now"}, &bad); kind(err) != KindBadRequest ||
		!strings.Contains(err.Error(), "when") {
		t.Fatalf("unknown field: %v", err)
	}
	list, err := cl.Snapshots(ctx)
	if err != nil || len(list.Snapshots) != 1 || list.Snapshots[0].Name != "s1" || !list.Enabled {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if err := cl.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := cl.DeleteSnapshot(ctx, "s1"); kind(err) != KindRefused || !strings.Contains(err.Error(), `no snapshot "s1"`) {
		t.Fatalf("delete twice: %v", err)
	}
	if err := cl.do(ctx, http.MethodPost, "/v1/no-such-verb", struct{}{}, nil); err == nil || !strings.Contains(err.Error(), "older repd") {
		t.Fatalf("unknown endpoint: %v", err)
	}
	// Lazy: on the node asked only, and only by a node that takes them.
	if _, err := cl.SnapshotLazy(ctx, "l1"); kind(err) != KindInternal || !strings.Contains(err.Error(), "takes no lazy snapshots") {
		t.Fatalf("lazy on a node without them: %v", err)
	}
	srv2 := &http.Server{Handler: Handler(&lazyNode{fakeNode: f}, &Hub{})}
	sock2 := filepath.Join(t.TempDir(), "b.sock")
	l2, err := net.Listen("unix", sock2)
	if err != nil {
		t.Fatal(err)
	}
	go srv2.Serve(l2)
	defer srv2.Close()
	cl2 := NewClient(sock2)
	if res, err := cl2.SnapshotLazy(ctx, "l1"); err != nil || res.Name != "l1" || !f.snaps["lazy:l1"] {
		t.Fatalf("lazy: %+v, %v", res, err)
	}
	if err := cl2.do(ctx, http.MethodPost, "/v1/snapshot", SnapshotRequest{Name: "l2", Nodes: []string{"all"}, Lazy: true}, nil); kind(err) != KindBadRequest ||
		!strings.Contains(err.Error(), "node asked only") || f.snaps["lazy:l2"] {
		t.Fatalf("lazy with nodes: %v", err)
	}
}

// lazyNode is fakeNode with lazy snapshots.
type lazyNode struct{ *fakeNode }

func (n *lazyNode) SnapshotLazy(_ context.Context, name string) (api.SnapshotResult, error) {
	n.snaps["lazy:"+name] = true
	return api.SnapshotResult{Name: name, Created: []string{"alpha"}}, nil
}
