package nbd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/client"
)

// snapFileDevice is a snapshot as the daemon would serve it: a file with
// holes (base:allocation from SEEK_DATA/SEEK_HOLE) and dirty bitmaps
// (here given as spans) for the earlier snapshots.
type snapFileDevice struct {
	*fileDevice
	dirty map[string][]span
}

func (d *snapFileDevice) MetaContexts() []string {
	names := make([]string, 0, len(d.dirty))
	for n := range d.dirty {
		names = append(names, nbd.DirtyBitmapPrefix+n)
	}
	slices.Sort(names)
	return names
}

func (d *snapFileDevice) BlockStatus(_ context.Context, name string, off, n int64) ([]nbd.Extent, error) {
	spans, ok := d.dirty[strings.TrimPrefix(name, nbd.DirtyBitmapPrefix)]
	if !ok || !strings.HasPrefix(name, nbd.DirtyBitmapPrefix) {
		return nil, fmt.Errorf("no dirty bitmap %q", name)
	}
	return extentsOf(spans, off, n, nbd.StateDirty, 0), nil
}

// qemuNBD runs qemu-nbd read-only on a new unix socket until the test
// ends and returns its URI for export.
func qemuNBD(t *testing.T, export string, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qemu-nbd.sock")
	var stderr bytes.Buffer
	cmd := exec.Command(testtool.Require(t, "qemu-nbd"), append([]string{"-r", "-t", "-x", export, "-k", sock}, args...)...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("qemu-nbd %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd did not listen within 10s\n%s", stderr.String())
		}
	}
	return "nbd+unix:///" + export + "?socket=" + sock
}

// snapshotFixture is a point in time served two ways: by qemu-nbd (the
// reference) and by this server as repd will serve a snapshot.
type snapshotFixture struct {
	raw     string // the data, a sparse raw file
	dirty   []span // what changed since snapshot snap0
	data    []span // what the raw file holds
	addr    string // this server: r0 (read-write), r0@snap1 (read-only snapshot)
	dev     *snapFileDevice
	qemuRaw string // qemu-nbd serving raw as export r0
	qemuBmp string // qemu-nbd serving the qcow2 with its bitmap snap0 as export r0
}

// newSnapshotFixture writes a qcow2 image with a persistent dirty bitmap
// snap0, writes to it with qemu-io (the bitmap records the writes), and
// converts it to a sparse raw file; both are served.
func newSnapshotFixture(t *testing.T) *snapshotFixture {
	for _, tool := range []string{"qemu-img", "qemu-io", "qemu-nbd"} {
		testtool.Require(t, tool)
	}
	const K, M = 1 << 10, 1 << 20
	f := &snapshotFixture{
		// Before snap0: [0, 64K) and [2M, 2M+256K); after: [1M, 1M+128K)
		// and [2M+128K, 2M+192K) (64 KiB: the bitmap's granularity).
		data:  []span{{0, 64 * K}, {M, 128 * K}, {2 * M, 256 * K}},
		dirty: []span{{M, 128 * K}, {2*M + 128*K, 64 * K}},
	}
	dir := t.TempDir()
	qcow := filepath.Join(dir, "r0.qcow2")
	f.raw = filepath.Join(dir, "r0.raw")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", qcow, "4M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 2M 256k", qcow)
	runTool(t, "qemu-img", "bitmap", "--add", qcow, "snap0")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 128k", "-c", "write -P 0x44 2176k 64k", qcow)
	runTool(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, f.raw)
	f.qemuRaw = qemuNBD(t, "r0", "-f", "raw", f.raw)
	f.qemuBmp = qemuNBD(t, "r0", "-f", "qcow2", "-B", "snap0", qcow)

	f.dev = &snapFileDevice{fileDevice: openFileDevice(t, f.raw), dirty: map[string][]span{"snap0": f.dirty}}
	f.addr = serve(t, &nbd.Server{Exports: []nbd.Export{
		{Name: "r0", Description: "the live device", Device: newMem(4 * M)},
		{Name: "r0@snap1", Description: "snapshot snap1 of r0", Device: f.dev, ReadOnly: true},
	}})
	return f
}

func (f *snapshotFixture) uri(export string) string { return "nbd://" + f.addr + "/" + export }

// nbdinfo --list shows the snapshot export with its contexts; nbdinfo
// --map and qemu-img map report the same as qemu-nbd, for base:allocation
// and for the dirty bitmap.
func TestToolsBlockStatus(t *testing.T) {
	testtool.Require(t, "nbdinfo")
	f := newSnapshotFixture(t)

	var list struct {
		Exports []struct {
			Name     string   `json:"export-name"`
			Desc     string   `json:"description"`
			ReadOnly bool     `json:"is_read_only"`
			Contexts []string `json:"contexts"`
			CanDF    bool     `json:"can_df"`
		} `json:"exports"`
		Structured bool `json:"structured"`
	}
	out := runTool(t, "nbdinfo", "--list", "--json", "nbd://"+f.addr)
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	if !list.Structured || len(list.Exports) != 2 {
		t.Fatalf("nbdinfo --list:\n%s", out)
	}
	snap := list.Exports[1]
	if snap.Name != "r0@snap1" || !snap.ReadOnly || !snap.CanDF || snap.Desc != "snapshot snap1 of r0" ||
		!slices.Equal(snap.Contexts, []string{nbd.ContextBaseAllocation, nbd.DirtyBitmapPrefix + "snap0"}) {
		t.Errorf("nbdinfo --list, the snapshot: %+v", snap)
	}
	if live := list.Exports[0]; live.Name != "r0" || live.ReadOnly || !slices.Equal(live.Contexts, []string{nbd.ContextBaseAllocation}) {
		t.Errorf("nbdinfo --list, the live device: %+v", live)
	}

	for _, m := range []string{"--map", "--map=" + nbd.DirtyBitmapPrefix + "snap0"} {
		ref := f.qemuRaw
		if m != "--map" {
			ref = f.qemuBmp
		}
		want := runTool(t, "nbdinfo", m, "--json", ref)
		got := runTool(t, "nbdinfo", m, "--json", f.uri("r0@snap1"))
		if !bytes.Equal(got, want) {
			t.Errorf("nbdinfo %s differs from qemu-nbd's:\n got %s\nwant %s", m, got, want)
		}
	}
	// The extents are the written ones, not merely equal to qemu-nbd's.
	got := runTool(t, "nbdinfo", "--map=qemu:dirty-bitmap:snap0", f.uri("r0@snap1"))
	want := "         0     1048576    0  clean\n   1048576      131072    1  dirty\n   1179648     1048576    0  clean\n" +
		"   2228224       65536    1  dirty\n   2293760     1900544    0  clean\n"
	if string(got) != want {
		t.Errorf("nbdinfo --map=qemu:dirty-bitmap:snap0:\n%s\nwant\n%s", got, want)
	}

	// qemu-img map, plain (base:allocation) and with QEMU's way of reading
	// a dirty bitmap (x-dirty-bitmap: dirty extents show as "data": false).
	host, port, _ := net.SplitHostPort(f.addr)
	refSock := f.qemuBmp[strings.Index(f.qemuBmp, "socket=")+len("socket="):]
	for _, tc := range []struct{ name, got, want string }{
		{"base:allocation", f.uri("r0@snap1"), f.qemuRaw},
		{"x-dirty-bitmap",
			"driver=nbd,server.type=inet,server.host=" + host + ",server.port=" + port + ",export=r0@snap1,x-dirty-bitmap=qemu:dirty-bitmap:snap0",
			"driver=nbd,server.type=unix,server.path=" + refSock + ",export=r0,x-dirty-bitmap=qemu:dirty-bitmap:snap0"},
	} {
		args := func(target string) []string {
			if strings.HasPrefix(target, "driver=") {
				return []string{"map", "--output=json", "--image-opts", target}
			}
			return []string{"map", "--output=json", "-f", "raw", target}
		}
		got, want := runTool(t, "qemu-img", args(tc.got)...), runTool(t, "qemu-img", args(tc.want)...)
		if !bytes.Equal(got, want) {
			t.Errorf("qemu-img map (%s) differs from qemu-nbd's:\n got %s\nwant %s", tc.name, got, want)
		}
	}
}

// nbdcopy, qemu-img convert and the project's client read the snapshot
// export RESOURCE@NAME whole, and skip its holes.
func TestToolsReadSnapshot(t *testing.T) {
	for _, tool := range []string{"nbdcopy", "qemu-img"} {
		testtool.Require(t, tool)
	}
	f := newSnapshotFixture(t)
	want, err := os.ReadFile(f.raw)
	if err != nil {
		t.Fatal(err)
	}
	var dataBytes int64
	for _, s := range f.data {
		dataBytes += s.n
	}
	if out := runTool(t, "qemu-img", "info", "--output=json", f.uri("r0@snap1")); !bytes.Contains(out, []byte(`"virtual-size": 4194304`)) {
		t.Errorf("qemu-img info on the snapshot export:\n%s", out)
	}
	for _, tc := range []struct {
		tool string
		args func(dst string) []string
	}{
		{"nbdcopy", func(dst string) []string { return []string{f.uri("r0@snap1"), dst} }},
		{"qemu-img", func(dst string) []string {
			return []string{"convert", "-f", "raw", "-O", "raw", f.uri("r0@snap1"), dst}
		}},
	} {
		dst := filepath.Join(t.TempDir(), "copy.raw")
		before := f.dev.readBytes.Load()
		runTool(t, tc.tool, tc.args(dst)...)
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: the copy differs from the snapshot (%v)", tc.tool, err)
		}
		if read := f.dev.readBytes.Load() - before; read > dataBytes {
			t.Errorf("%s read %d bytes from the device, want at most the %d bytes of data (holes skipped)", tc.tool, read, dataBytes)
		}
	}

	// The project's client (backups use it): extents of both contexts,
	// then the data.
	ctx := context.Background()
	c, err := client.DialURI(ctx, f.uri("r0@snap1"), client.Options{
		MetaContexts: []string{client.ContextAllocation, client.DirtyBitmapContext("snap0"), client.DirtyBitmapContext("gone")}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.ReadOnly() || !c.Structured() || !c.HasMetaContext(client.ContextAllocation) ||
		!c.HasMetaContext(client.DirtyBitmapContext("snap0")) || c.HasMetaContext(client.DirtyBitmapContext("gone")) {
		t.Fatalf("client: read-only %v, structured %v, contexts %q", c.ReadOnly(), c.Structured(), c.MetaContexts())
	}
	for _, tc := range []struct {
		name string
		want []nbd.Extent
	}{
		{client.ContextAllocation, extentsOf(f.data, 0, c.Size(), 0, nbd.StateHole|nbd.StateZero)},
		{client.DirtyBitmapContext("snap0"), extentsOf(f.dirty, 0, c.Size(), nbd.StateDirty, 0)},
	} {
		var got []nbd.Extent
		var next int64
		err := c.Extents(ctx, tc.name, 0, c.Size(), func(e client.Extent) error {
			if e.Off != next {
				return fmt.Errorf("extent at %d, want %d", e.Off, next)
			}
			next = e.End()
			got = append(got, nbd.Extent{Len: e.Len, Flags: e.Flags})
			return nil
		})
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("client Extents(%s): %v %v, want %v", tc.name, got, err, tc.want)
		}
	}
	st, err := c.BlockStatus(ctx, 1<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || len(st[client.ContextAllocation]) != 1 || st[client.ContextAllocation][0] != (client.Extent{Off: 1 << 20, Len: 64 << 10}) {
		t.Errorf("client BlockStatus: %v", st)
	}
	got := make([]byte, c.Size())
	if err := c.Read(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("client read: %v", err)
	}
	if s := c.Stats(); s.HoleBytes == 0 || s.DataBytes+s.HoleBytes != c.Size() {
		t.Errorf("client stats %+v: want holes sent as holes", s)
	}
}
