package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// snapPrimary starts a one-node resource with a snapshot store and makes
// it Primary.
func snapPrimary(t *testing.T, size, store string) *node {
	t.Helper()
	c := newCluster(t, clusterOpts{nodes: 1, size: size, extra: `snapshot-store-size = "` + store + `"`})
	n := c.nodes[0]
	n.start()
	n.mustCtl("primary", "--force")
	waitFor(t, "alpha Primary/UpToDate", 10*time.Second, func() bool {
		s := n.status()
		return s.Role == api.Primary && s.Disk == "UpToDate"
	})
	return n
}

// exportURI is the NBD URI of one of n's exports ("r0", "r0@NAME").
func exportURI(n *node, export string) string { return "nbd://" + n.nbd + "/" + export }

// readExport reads a whole export with nbdcopy (into a file: through a
// pipe nbdcopy is 20 times slower).
func readExport(t *testing.T, n *node, export string) []byte {
	t.Helper()
	f := filepath.Join(t.TempDir(), "export.raw")
	run(t, time.Minute, testtool.Require(t, "nbdcopy"), exportURI(n, export), f)
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// extent is one entry of `nbdinfo --map --json`.
type extent struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Type   uint32 `json:"type"`
	Desc   string `json:"description"`
}

// nbdMap is `nbdinfo --map[=CONTEXT] --json` of an export.
func nbdMap(t *testing.T, n *node, export, context string) []extent {
	t.Helper()
	arg := "--map"
	if context != "" {
		arg += "=" + context
	}
	out := run(t, 30*time.Second, testtool.Require(t, "nbdinfo"), arg, "--json", exportURI(n, export))
	var m []extent
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("nbdinfo %s --json %s: %v\n%s", arg, export, err, out)
	}
	return m
}

// dirtyRanges are the dirty extents of a qemu:dirty-bitmap map, joined.
func dirtyRanges(m []extent) [][2]int64 {
	var out [][2]int64
	for _, e := range m {
		if e.Type&1 == 0 {
			continue
		}
		if k := len(out); k > 0 && out[k-1][1] == e.Offset {
			out[k-1][1] += e.Length
			continue
		}
		out = append(out, [2]int64{e.Offset, e.Offset + e.Length})
	}
	return out
}

// fill is n bytes of b.
func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// The daemon serves every valid snapshot as a read-only export
// RESOURCE@NAME, seen by libnbd's and QEMU's tools: NBD_OPT_LIST shows
// them with their contexts, they read back as the device was at the
// snapshot, writes get EPERM, qemu:dirty-bitmap:NAME is the blocks changed
// since NAME on the live export and between snapshots on a snapshot's
// (newer snapshots are not offered), base:allocation never calls a hole
// what the snapshot holds as data, and a snapshot deleted or invalidated
// under a client fails its reads rather than return other data.
func TestSnapshotExports(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	qemuImg := testtool.Require(t, "qemu-img")
	nbdinfo := testtool.Require(t, "nbdinfo")
	const size = 16 << 20
	n := snapPrimary(t, "16MiB", "8MiB")

	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x11 0 1M", n.uri())
	n.mustCtl("snapshot", "create", "s1")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x22 1M 1M", "-c", "write -P 0x33 0 64k", n.uri())
	n.mustCtl("snapshot", "create", "s2")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x44 4M 512k", n.uri())

	want1 := make([]byte, size)
	copy(want1, fill(0x11, 1<<20))
	want2 := slices.Clone(want1)
	copy(want2[1<<20:], fill(0x22, 1<<20))
	copy(want2, fill(0x33, 64<<10))
	live := slices.Clone(want2)
	copy(live[4<<20:], fill(0x44, 512<<10))

	// NBD_OPT_LIST: the resource and both snapshots, with their contexts.
	var list struct {
		Exports []struct {
			Name     string   `json:"export-name"`
			Size     int64    `json:"export-size"`
			ReadOnly bool     `json:"is_read_only"`
			Contexts []string `json:"contexts"`
		} `json:"exports"`
	}
	out := run(t, 30*time.Second, nbdinfo, "--list", "--json", "nbd://"+n.nbd)
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	type exp struct {
		name     string
		ro       bool
		contexts string
	}
	var got []exp
	for _, e := range list.Exports {
		if e.Size != size {
			t.Fatalf("export %s has size %d", e.Name, e.Size)
		}
		got = append(got, exp{e.Name, e.ReadOnly, strings.Join(e.Contexts, " ")})
	}
	wantList := []exp{
		{"r0", false, "base:allocation qemu:dirty-bitmap:s1 qemu:dirty-bitmap:s2"},
		{"r0@s1", true, "base:allocation"},
		{"r0@s2", true, "base:allocation qemu:dirty-bitmap:s1"},
	}
	if !slices.Equal(got, wantList) {
		t.Fatalf("nbdinfo --list:\n got %+v\nwant %+v\n%s", got, wantList, out)
	}

	// Contents, read by nbdcopy and compared by qemu-img.
	for _, c := range []struct {
		export string
		want   []byte
	}{{"r0@s1", want1}, {"r0@s2", want2}, {"r0", live}} {
		if !bytes.Equal(readExport(t, n, c.export), c.want) {
			t.Fatalf("%s does not read as the device was at its point", c.export)
		}
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	out = run(t, 30*time.Second, qemuImg, "info", "--output=json", exportURI(n, "r0@s2"))
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize != size {
		t.Fatalf("qemu-img info r0@s2: %v\n%s", err, out)
	}
	ref := filepath.Join(t.TempDir(), "s1.raw")
	if err := os.WriteFile(ref, want1, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, time.Minute, qemuImg, "compare", "-f", "raw", "-F", "raw", ref, exportURI(n, "r0@s1"))

	// Dirty bitmaps.
	for _, c := range []struct {
		export, bitmap string
		want           [][2]int64
	}{
		{"r0@s2", "s1", [][2]int64{{0, 64 << 10}, {1 << 20, 2 << 20}}},
		{"r0", "s1", [][2]int64{{0, 64 << 10}, {1 << 20, 2 << 20}, {4 << 20, 4<<20 + 512<<10}}},
		{"r0", "s2", [][2]int64{{4 << 20, 4<<20 + 512<<10}}},
	} {
		m := nbdMap(t, n, c.export, nbd.DirtyBitmapPrefix+c.bitmap)
		if got := dirtyRanges(m); !slices.Equal(got, c.want) {
			t.Fatalf("%s qemu:dirty-bitmap:%s: dirty %v, want %v\n%+v", c.export, c.bitmap, got, c.want, m)
		}
	}
	// A snapshot newer than the export's point is not offered.
	cmd := exec.Command(nbdinfo, "--map=qemu:dirty-bitmap:s2", exportURI(n, "r0@s1"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), `does not support metadata context "qemu:dirty-bitmap:s2"`) {
		t.Fatalf("dirty bitmap of a newer snapshot on r0@s1: %v\n%s", err, out)
	}

	// base:allocation: what s1 holds is data; what it calls a hole reads
	// as zeroes there.
	for _, c := range []struct {
		export string
		want   []byte
	}{{"r0@s1", want1}, {"r0@s2", want2}, {"r0", live}} {
		m := nbdMap(t, n, c.export, "")
		var end int64
		holes := 0
		for _, e := range m {
			if e.Offset != end {
				t.Fatalf("%s base:allocation: extent at %d, want %d\n%+v", c.export, e.Offset, end, m)
			}
			end += e.Length
			if e.Type&2 != 0 { // zero
				holes++
				if !bytes.Equal(c.want[e.Offset:end], make([]byte, e.Length)) {
					t.Fatalf("%s base:allocation calls %d+%d zero, but it holds data", c.export, e.Offset, e.Length)
				}
			}
		}
		if end != size || holes == 0 {
			t.Fatalf("%s base:allocation covers %d bytes, %d holes: %+v", c.export, end, holes, m)
		}
	}
	out = run(t, 30*time.Second, qemuImg, "map", "-f", "raw", "--output=json", exportURI(n, "r0@s1"))
	if !bytes.Contains(out, []byte(`"zero": true`)) || !bytes.Contains(out, []byte(`"data": true`)) {
		t.Fatalf("qemu-img map of r0@s1 shows no holes or no data:\n%s", out)
	}

	// Writes to a snapshot export: NBD_EPERM, the snapshot unchanged.
	c, err := nbdtest.Dial("tcp", n.nbd, "r0@s1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Write(fill(0x99, 4096), 0, false); nbdtest.ErrorCode(err) != nbd.EPERM {
		t.Fatalf("write to r0@s1: %v, want NBD_EPERM", err)
	}
	if err := c.Trim(0, 4096, false); nbdtest.ErrorCode(err) != nbd.EPERM {
		t.Fatalf("trim of r0@s1: %v, want NBD_EPERM", err)
	}
	buf := make([]byte, 64<<10)
	if err := c.Read(buf, 0); err != nil || !bytes.Equal(buf, want1[:64<<10]) {
		t.Fatalf("r0@s1 after the refused write: %v", err)
	}

	// s1 deleted and taken again while c is open on the old one: c's
	// reads fail (EIO, or the connection is closed), never the new data.
	n.mustCtl("snapshot", "delete", "s1")
	n.mustCtl("snapshot", "create", "s1")
	for i := 0; ; i++ {
		err := c.Read(buf, 0)
		if err != nil {
			if code := nbdtest.ErrorCode(err); code != 0 && code != nbd.EIO {
				t.Fatalf("read of a deleted snapshot: %v, want EIO or a closed connection", err)
			}
			break
		}
		if !bytes.Equal(buf, want1[:64<<10]) {
			t.Fatal("a connection on the deleted s1 read the data of the new s1")
		}
		if i == 50 {
			t.Fatal("reads of the deleted s1 go on succeeding")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !bytes.Equal(readExport(t, n, "r0@s1"), live) {
		t.Fatal("the new s1 does not read as the live device at its point")
	}

	// Overwriting the whole device fills the 8 MiB store: the snapshots
	// are invalidated, their exports leave the list and an open one fails.
	c2, err := nbdtest.Dial("tcp", n.nbd, "r0@s2")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x55 0 16M", n.uri())
	l := snapshotList(t, n)
	for _, s := range l.Snapshots {
		if s.Valid {
			t.Fatalf("snapshot %s still valid after the store filled: %+v", s.Name, l)
		}
	}
	if err := c2.Read(buf, 0); err == nil {
		t.Fatal("a read of the invalidated s2 succeeded")
	} else if code := nbdtest.ErrorCode(err); code != 0 && code != nbd.EIO {
		t.Fatalf("read of an invalidated snapshot: %v, want EIO or a closed connection", err)
	}
	out = run(t, 30*time.Second, nbdinfo, "--list", "--json", "nbd://"+n.nbd)
	if bytes.Contains(out, []byte("r0@")) {
		t.Fatalf("invalid snapshots are still listed:\n%s", out)
	}
}
