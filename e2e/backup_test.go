package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/backup"
	"github.com/repd/repd/internal/testtool"
)

// backupManifest is the manifest of a backup directory, as `repctl
// backups --json` prints it.
func backupManifest(t *testing.T, n *node, dir string) backup.Manifest {
	t.Helper()
	var m backup.Manifest
	out := n.mustCtl("backups", "--dir", dir, "--json")
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("repctl backups --json: %v\n%s", err, out)
	}
	return m
}

// sameFile fails unless the files hold the same bytes.
func sameFile(t *testing.T, a, b, msg string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		i := 0
		for i < min(len(x), len(y)) && x[i] == y[i] {
			i++
		}
		t.Fatalf("%s: %s and %s differ (sizes %d, %d; first difference at byte %d)", msg, a, b, len(x), len(y), i)
	}
}

// The backup path end to end against a real daemon: a full backup, then
// three incrementals with writes (and a discard) between them, each
// through the snapshot exports (repctl backup takes the snapshot, reads
// RESOURCE@SNAP with base:allocation or qemu:dirty-bitmap:PREV, deletes
// the previous snapshot). Every point restores, with repctl restore and
// with qemu-img convert, to exactly the device at its snapshot (a model
// of the device that got the same writes, and the snapshot export read
// while it existed); an incremental reads what was written since the
// point before, not the device; --keep merges the oldest points and the
// rest still restore.
func TestBackupFullAndIncrementalsRestore(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	qemuImg := testtool.Require(t, "qemu-img")
	const size = 32 << 20
	n := snapPrimary(t, "32MiB", "16MiB")
	work := t.TempDir()
	dir := filepath.Join(work, "backups")
	model := filepath.Join(work, "model.raw")
	if err := os.WriteFile(model, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(model, size); err != nil {
		t.Fatal(err)
	}
	// write runs qemu-io commands on the device and on the model, and
	// returns how many bytes they touched (each command: OP OFF LEN).
	write := func(cmds ...string) int64 {
		var args []string
		var touched int64
		for _, c := range cmds {
			args = append(args, "-c", c)
			f := strings.Fields(c)
			touched += qemuIOLen(t, f[len(f)-1])
		}
		run(t, time.Minute, qemuIO, append([]string{"-f", "raw"}, append(args, n.uri())...)...)
		run(t, time.Minute, qemuIO, append([]string{"-f", "raw"}, append(args, model)...)...)
		return touched
	}

	type point struct {
		snapshot string
		want     string // the model at the point
		written  int64  // bytes written since the point before
	}
	var points []point
	take := func(name string, written int64, extra ...string) backup.Point {
		args := append([]string{"backup", "--to", dir, "--nbd", n.nbd, "--snapshot", name}, extra...)
		out := n.mustCtl(args...)
		want := filepath.Join(work, name+".raw")
		data, err := os.ReadFile(model)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(want, data, 0o644); err != nil {
			t.Fatal(err)
		}
		// The snapshot the backup read is there until the next backup.
		sameFileBytes(t, readExport(t, n, "r0@"+name), data, "snapshot export "+name+" and the model")
		points = append(points, point{snapshot: name, want: want, written: written})
		m := backupManifest(t, n, dir)
		p := m.Points[len(m.Points)-1]
		if p.Snapshot != name {
			t.Fatalf("the last point is %+v, want snapshot %s\n%s", p, name, out)
		}
		t.Logf("%s: %s", name, strings.TrimSpace(out))
		return p
	}

	write("write -P 0x11 0 4M", "write -P 0x12 8M 2M", "write -P 0x13 30M 1M")
	full := take("b0", 0, "--full")
	if full.Kind != backup.KindFull || full.BytesRead < 7<<20 || full.BytesRead > 8<<20 {
		t.Fatalf("full backup of 7 MiB of data read %d bytes: %+v", full.BytesRead, full)
	}
	incWrites := [][]string{
		{"write -P 0x21 1M 256k", "write -P 0x22 20M 64k"},
		{"write -P 0x31 9M 1M", "discard 0 128k"},
		{"write -P 0x41 16M 512k", "write -P 0x42 30M 64k", "write -z 8M 64k"},
	}
	for i, w := range incWrites {
		written := write(w...)
		p := take(fmt.Sprintf("b%d", i+1), written)
		// The dirty bitmap's granularity is 4 KiB and the writes are
		// aligned: an incremental reads what was written, give or take
		// a qcow2 cluster at each end of each range.
		if p.Kind != backup.KindInc || p.BytesRead < written || p.BytesRead > written+int64(len(w))*2*64<<10 {
			t.Fatalf("incremental %s after writing %d bytes read %d: %+v", p.Snapshot, written, p.BytesRead, p)
		}
		t.Logf("incremental %s: %d bytes written, %d read, file %d bytes", p.Snapshot, written, p.BytesRead, p.FileBytes)
	}
	if l := snapshotList(t, n); snapshotNames(l) != "b3" {
		t.Fatalf("after the backups the node holds snapshots %q, want only the last point's", snapshotNames(l))
	}

	restore := func(points []point) {
		m := backupManifest(t, n, dir)
		for _, pt := range points {
			out := filepath.Join(work, "restored-"+pt.snapshot+".raw")
			os.Remove(out)
			n.mustCtl("restore", "--from", dir, "--point", pt.snapshot, "--to", out)
			sameFile(t, out, pt.want, "repctl restore of "+pt.snapshot)
			var file string
			for _, p := range m.Points {
				if p.Snapshot == pt.snapshot {
					file = p.File
				}
			}
			if file == "" {
				t.Fatalf("no point for snapshot %s in %+v", pt.snapshot, m)
			}
			conv := filepath.Join(work, "converted-"+pt.snapshot+".raw")
			os.Remove(conv)
			run(t, time.Minute, qemuImg, "convert", "-O", "raw", filepath.Join(dir, file), conv)
			sameFile(t, conv, pt.want, "qemu-img convert of "+file)
			run(t, time.Minute, qemuImg, "compare", "-F", "raw", filepath.Join(dir, file), pt.want)
		}
	}
	restore(points)

	// --keep 2 with one more backup: the oldest points are merged into a
	// full one; the two kept restore as before.
	written := write("write -P 0x51 2M 128k")
	take("b4", written, "--keep", "2")
	m := backupManifest(t, n, dir)
	if len(m.Points) != 2 || m.Points[0].Kind != backup.KindFull || m.Points[0].Snapshot != "b3" || m.Points[1].Snapshot != "b4" {
		t.Fatalf("after --keep 2: %+v", m.Points)
	}
	restore(points[len(points)-2:])
	n.mustCtl("backups", "--dir", dir, "--verify")
}

// sameFileBytes fails unless got equals want.
func sameFileBytes(t *testing.T, got, want []byte, msg string) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s differ (sizes %d, %d; first difference at byte %d)", msg, len(got), len(want), i)
	}
}

// qemuIOLen parses a qemu-io length: N, Nk or NM.
func qemuIOLen(t *testing.T, s string) int64 {
	t.Helper()
	shift := 0
	switch {
	case strings.HasSuffix(s, "k"):
		shift, s = 10, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "M"):
		shift, s = 20, strings.TrimSuffix(s, "M")
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("qemu-io length %q: %v", s, err)
	}
	return v << shift
}

// Backups run off a Secondary, as the README recommends: repctl backup
// against beta has the Primary put beta's snapshot into the write stream,
// reads beta's export, and each point restores to the device's content
// at that point (read from the Primary after the writes).
func TestBackupFromSecondary(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB", extra: `snapshot-store-size = "8MiB"`})
	p := upCluster(t, c)
	s := c.nodes[1]
	waitInSync(t, c, 30*time.Second)
	work := t.TempDir()
	dir := filepath.Join(work, "backups")
	for i, w := range []string{"write -P 0x11 0 3M", "write -P 0x22 1M 512k"} {
		run(t, time.Minute, qemuIO, "-f", "raw", "-c", w, p.uri())
		want := readExport(t, p, "r0")
		name := fmt.Sprintf("sec-%d", i)
		args := []string{"backup", "--to", dir, "--nbd", s.nbd, "--snapshot", name}
		if i == 0 {
			args = append(args, "--full")
		}
		out := s.mustCtl(args...)
		if l := snapshotList(t, p); len(l.Snapshots) != 0 {
			t.Fatalf("a backup on the Secondary left snapshots on the Primary: %+v", l.Snapshots)
		}
		restored := filepath.Join(work, name+".raw")
		s.mustCtl("restore", "--from", dir, "--point", name, "--to", restored)
		got, err := os.ReadFile(restored)
		if err != nil {
			t.Fatal(err)
		}
		sameFileBytes(t, got, want, "backup "+name+" taken on the Secondary, restored, and the Primary's device")
		t.Logf("%s", strings.TrimSpace(out))
	}
	m := backupManifest(t, s, dir)
	if len(m.Points) != 2 || m.Points[1].Kind != backup.KindInc || m.Points[1].BytesRead != 512<<10 {
		t.Fatalf("points: %+v", m.Points)
	}
}
