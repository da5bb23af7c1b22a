package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
	"github.com/repd/repd/replica"
)

// snapNode opens a real one-node resource (file store, snapshot store)
// in dir, runs it and makes it Primary. Its events go to events, if not
// nil, when there is room.
func snapNode(t *testing.T, events chan api.Event) *replica.Node {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "r0.toml")
	if err := os.WriteFile(conf, []byte(`[resource]
name = "r0"
size = "8MiB"
snapshot-store-size = "4MiB"
[[node]]
name = "alpha"
disk = "`+dir+`/a.img"
meta = "`+dir+`/a.meta"
nbd = "127.0.0.1:0"
peer = "127.0.0.1:0"
admin = "`+dir+`/a.sock"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	rcfg, err := replica.FromFile(f, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if events != nil {
		rcfg.OnEvent = func(e api.Event) {
			select {
			case events <- e:
			default:
			}
		}
	}
	st, err := replica.OpenFileStore(filepath.Join(dir, "a.img"), int64(f.Resource.Size))
	if err != nil {
		t.Fatal(err)
	}
	n, err := replica.Open(rcfg, st)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		n.Close()
	})
	if err := n.Promote(true); err != nil {
		t.Fatal(err)
	}
	return n
}

func write(t *testing.T, n *replica.Node, b byte, off, length int64) {
	t.Helper()
	if err := n.WriteAt(context.Background(), bytes.Repeat([]byte{b}, int(length)), off, false); err != nil {
		t.Fatal(err)
	}
}

func snapshot(t *testing.T, n *replica.Node, name string) {
	t.Helper()
	if _, err := n.Snapshot(context.Background(), name, nil); err != nil {
		t.Fatal(err)
	}
}

// device finds an export's Device in the list.
func device(t *testing.T, x *exports, name string) nbd.Device {
	t.Helper()
	for _, e := range x.list() {
		if e.Name == name {
			return e.Device
		}
	}
	t.Fatalf("no export %s", name)
	return nil
}

// A client asking for the status of a whole fragmented device gets at
// most maxExtents extents per context, from the offset asked, each true;
// the windows the store is asked about grow, so a sparse device is still
// described in one answer.
func TestExportStatusBounded(t *testing.T) {
	n := snapNode(t, nil)
	x := newExports(n, "r0", "alpha", 8)
	// Every other 4 KiB block of the first MiB written: 256 extents.
	for off := int64(0); off < 1<<20; off += 8 << 10 {
		write(t, n, 0x11, off, 4<<10)
	}
	snapshot(t, n, "s1")
	for off := int64(0); off < 1<<20; off += 8 << 10 {
		write(t, n, 0x22, off, 4<<10)
	}
	snapshot(t, n, "s2")
	ctx := context.Background()

	check := func(what string, ext []nbd.Extent, err error, wantFlags func(i int) uint32) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(ext) == 0 || len(ext) > 8 {
			t.Fatalf("%s: %d extents, want 1..8", what, len(ext))
		}
		for i, e := range ext {
			if e.Len != 4<<10 || e.Flags != wantFlags(i) {
				t.Fatalf("%s: extent %d is %+v: %+v", what, i, e, ext)
			}
		}
	}
	hole := func(i int) uint32 {
		if i%2 == 1 {
			return nbd.StateHole | nbd.StateZero
		}
		return 0
	}
	dirty := func(i int) uint32 {
		if i%2 == 0 {
			return nbd.StateDirty
		}
		return 0
	}
	live := device(t, x, "r0")
	ext, err := live.(nbd.Allocator).Allocation(ctx, 0, 8<<20)
	check("live base:allocation", ext, err, hole)
	ext, err = live.(nbd.MetaContexts).BlockStatus(ctx, "qemu:dirty-bitmap:s1", 0, 8<<20)
	check("live qemu:dirty-bitmap:s1", ext, err, dirty)
	s2 := device(t, x, "r0@s2")
	ext, err = s2.(nbd.Allocator).Allocation(ctx, 0, 8<<20)
	check("r0@s2 base:allocation", ext, err, hole)
	ext, err = s2.(nbd.MetaContexts).BlockStatus(ctx, "qemu:dirty-bitmap:s1", 0, 8<<20)
	check("r0@s2 qemu:dirty-bitmap:s1", ext, err, dirty)

	// Nothing written since s2: its bitmap on the live export is one
	// clean extent, found by doubling windows in one answer.
	ext, err = live.(nbd.MetaContexts).BlockStatus(ctx, "qemu:dirty-bitmap:s2", 0, 8<<20)
	if err != nil || len(ext) != 1 || ext[0].Len != 8<<20 || ext[0].Flags != 0 {
		t.Fatalf("live qemu:dirty-bitmap:s2 with nothing written since: %+v %v", ext, err)
	}

	// A newer snapshot's bitmap on an older export: refused, saying where
	// to ask; the export does not offer it.
	s1 := device(t, x, "r0@s1")
	if got := strings.Join(s1.(nbd.MetaContexts).MetaContexts(), " "); got != "" {
		t.Fatalf("r0@s1 offers %q", got)
	}
	if got := strings.Join(s2.(nbd.MetaContexts).MetaContexts(), " "); got != "qemu:dirty-bitmap:s1" {
		t.Fatalf("r0@s2 offers %q", got)
	}
	_, err = s1.(nbd.MetaContexts).BlockStatus(ctx, "qemu:dirty-bitmap:s2", 0, 8<<20)
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "ask export r0@s2 for qemu:dirty-bitmap:s1") {
		t.Fatalf("newer bitmap on r0@s1: %v", err)
	}
}

// A snapshot export is bound to the snapshot it was opened on: once that
// is deleted and a new one taken under the same name, its reads fail with
// EIO and return nothing of the new snapshot; the new export reads the new
// one. The daemon's closer ends NBD connections on a deleted snapshot.
func TestSnapshotExportBoundToItsSnapshot(t *testing.T) {
	events := make(chan api.Event, 256)
	n := snapNode(t, events)
	x := newExports(n, "r0", "alpha", 0)
	write(t, n, 0x11, 0, 64<<10)
	snapshot(t, n, "s1")
	old := device(t, x, "r0@s1")
	p := make([]byte, 4096)
	if err := old.ReadAt(context.Background(), p, 0); err != nil || p[0] != 0x11 {
		t.Fatalf("read r0@s1: %v %x", err, p[0])
	}
	if err := n.DeleteSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	write(t, n, 0x22, 0, 64<<10)
	snapshot(t, n, "s1")
	err := old.ReadAt(context.Background(), p, 0)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "deleted") || bytes.Contains(p, []byte{0x22}) {
		t.Fatalf("read of the deleted s1 after a new s1: %v (data %x)", err, p[:4])
	}
	if _, err := old.(nbd.Allocator).Allocation(context.Background(), 0, 64<<10); !errors.Is(err, syscall.EIO) {
		t.Fatalf("status of the deleted s1: %v", err)
	}
	if err := device(t, x, "r0@s1").ReadAt(context.Background(), p, 0); err != nil || p[0] != 0x22 {
		t.Fatalf("read of the new s1: %v %x", err, p[0])
	}
	if err := old.WriteAt(context.Background(), p, 0, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write to a snapshot device: %v", err)
	}

	// Over NBD: a connection on r0@s2 is ended when s2 is deleted.
	snapshot(t, n, "s2")
	srv := &nbd.Server{ExportsFunc: x.list}
	closer := newExportCloser(srv, x, slog.New(slog.DiscardHandler))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{}, 2)
	go func() { srv.Serve(ctx, l); served <- struct{}{} }()
	go func() { closer.Run(ctx); served <- struct{}{} }()
	defer func() { cancel(); <-served; <-served }()
	c, err := nbdtest.Dial("tcp", l.Addr().String(), "r0@s2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Read(p, 0); err != nil || p[0] != 0x22 {
		t.Fatalf("NBD read of r0@s2: %v", err)
	}
	if err := n.DeleteSnapshot("s2"); err != nil {
		t.Fatal(err)
	}
	// The node's events, as the daemon hands them to the closer.
	go func() {
		for {
			select {
			case e := <-events:
				closer.onEvent(e)
			case <-ctx.Done():
				return
			}
		}
	}()
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection on the deleted r0@s2 was not closed")
	}
}
