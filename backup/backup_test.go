package backup_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/backup"
	"github.com/repd/repd/nbd/client"
)

const diskSize = 32 << 20

// The whole story against qemu-nbd: a full backup and three incrementals of
// a disk written by qemu-io, each point restored and compared with the
// snapshot it copies; an incremental after 1 % of the blocks were rewritten
// reads at most 2 % of the device; then retention.
func TestBackupChain(t *testing.T) {
	d := newDisk(t, diskSize)
	rng := rand.New(rand.NewPCG(19, 19))
	// Initial data: 6 MiB in places, some of it zeroes.
	d.io("write -P 0x11 0 2M", "write -P 0x22 8M 3M", "write -P 0x33 20M 1M", "write -z 8M 512k")

	dir := filepath.Join(t.TempDir(), "backups")
	clk := &clock{t: time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)}
	var progress []backup.Progress
	repo, err := backup.Open(dir, backup.Options{Now: clk.now, Progress: func(p backup.Progress) { progress = append(progress, p) }})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()

	type step struct {
		snap, copy string
		point      backup.Point
	}
	var steps []step
	take := func(req backup.Request) (backup.Point, client.Stats) {
		t.Helper()
		prev := d.snap
		cp := d.snapshot(req.Snapshot)
		base, inc := repo.Incremental(req)
		if inc && base != prev {
			t.Fatalf("incremental from %q, the previous snapshot is %q", base, prev)
		}
		c := dial(t, serve(t, cp, req.Snapshot, base), repo.MetaContexts(req))
		p, err := repo.Backup(context.Background(), c, req)
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, step{req.Snapshot, cp, p})
		return p, c.Stats()
	}

	// Full: reads what base:allocation reports as data, not the whole disk.
	full, st := take(backup.Request{Snapshot: "s0"})
	if full.Kind != backup.KindFull || full.BytesRead != st.ReadBytes || st.ReadBytes > 6<<20 || st.ReadBytes < 5<<20 {
		t.Fatalf("full backup: %+v, client read %d bytes (want about the 5.5 MiB of data)", full, st.ReadBytes)
	}

	// 1 % of the 4 KiB blocks rewritten at random.
	blocks := int64(diskSize / 4096)
	var cmds []string
	for range blocks / 100 {
		cmds = append(cmds, fmt.Sprintf("write -P %d %d 4k", 0x40+rng.IntN(64), rng.Int64N(blocks)*4096))
	}
	d.io(cmds...)
	inc1, st := take(backup.Request{Snapshot: "s1"})
	if inc1.Kind != backup.KindInc || inc1.Backing != full.File || inc1.BaseSnapshot != "s0" {
		t.Fatalf("first incremental: %+v", inc1)
	}
	t.Logf("1%% of blocks rewritten: the incremental read %d bytes of %d (%.2f%%)", st.ReadBytes, diskSize, 100*float64(st.ReadBytes)/diskSize)
	if st.ReadBytes > diskSize/50 || inc1.BytesRead != st.ReadBytes || st.ReadBytes == 0 {
		t.Fatalf("incremental read %d bytes (manifest %d); at most 2%% (%d) allowed", st.ReadBytes, inc1.BytesRead, diskSize/50)
	}

	// Zeroes over data, a discard, and writes across cluster boundaries:
	// the incremental must hide the older data.
	d.io("write -z 8M 64k", "discard 20M 128k", "write -P 0x55 2044k 8k", "write -P 0x66 31M 1M")
	take(backup.Request{Snapshot: "s2"})
	// A range longer than a copy window (2 MiB), starting mid-cluster,
	// among small ones: a window fills in the middle of it.
	d.io("write -P 0x77 100k 4k", "write -z 0 4k", "write -P 0x88 16M 64k", "write -P 0xaa 4100k 10M", "write -P 0xbb 30M 4k")
	take(backup.Request{Snapshot: "s3"})

	// Every point restores to exactly its snapshot, natively and by qemu-img.
	check := func() {
		t.Helper()
		for _, s := range steps {
			if _, err := repo.Point(s.point.File); err != nil {
				continue // dropped by retention
			}
			raw := filepath.Join(t.TempDir(), s.snap+".raw")
			if _, err := repo.Restore(context.Background(), s.point.File, raw, backup.RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			compareRaw(t, raw, s.copy)
			// qemu reads the backup's chain as the snapshot.
			file := filepath.Join(dir, s.point.File)
			run(t, "qemu-img", "check", file)
			if out := run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", file, s.copy); !strings.Contains(out, "identical") {
				t.Fatalf("qemu-img compare %s %s: %s", file, s.copy, out)
			}
		}
		if problems, err := repo.Verify(context.Background()); err != nil || problems != nil {
			t.Fatalf("Verify: %v %v", problems, err)
		}
	}
	check()

	var chain []struct {
		Filename string `json:"filename"`
	}
	last := steps[len(steps)-1].point
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--backing-chain", "--output=json", filepath.Join(dir, last.File))), &chain); err != nil {
		t.Fatal(err)
	}
	if len(chain) != 4 {
		t.Fatalf("qemu-img info --backing-chain: %d images, want 4", len(chain))
	}
	if !sawCopyDone(progress) {
		t.Fatalf("no final copy progress among %d reports", len(progress))
	}

	// The manifest on disk is what Manifest returns, and names 4 points.
	var m backup.Manifest
	b, _ := os.ReadFile(filepath.Join(dir, backup.ManifestName))
	if err := json.Unmarshal(b, &m); err != nil || len(m.Points) != 4 || m.VirtualSize != diskSize {
		t.Fatalf("manifest: %v\n%s", err, b)
	}

	// Retention: keep 2. s2 becomes a full file, s3 is rebased onto it,
	// the older files are gone, both points still restore exactly.
	dropped, err := repo.Retain(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	m = repo.Manifest()
	if len(dropped) != 2 || len(m.Points) != 2 || m.Points[0].Kind != backup.KindFull || m.Points[0].Snapshot != "s2" ||
		m.Points[1].Backing != m.Points[0].File || len(m.Points[0].Merged) != 3 {
		t.Fatalf("after Retain(2): %+v", m.Points)
	}
	for _, s := range steps[:3] {
		if _, err := os.Stat(filepath.Join(dir, s.point.File)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still there after retention", s.point.File)
		}
	}
	check()

	// The chain goes on after retention, and Retain(1) merges it all.
	d.io("write -P 0x99 4M 256k")
	take(backup.Request{Snapshot: "s4"})
	if _, err := repo.Retain(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if m = repo.Manifest(); len(m.Points) != 1 || m.Points[0].Snapshot != "s4" || m.Points[0].Kind != backup.KindFull {
		t.Fatalf("after Retain(1): %+v", m.Points)
	}
	check()
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 3 { // the point, manifest.json, .lock
		t.Fatalf("directory after retention: %v", names)
	}
}

func sawCopyDone(ps []backup.Progress) bool {
	for _, p := range ps {
		if p.Phase == "copy" && p.Done == p.Total && p.Total > 0 {
			return true
		}
	}
	return false
}

// What cannot be an incremental says why; a full backup later starts a new
// chain that retention then keeps alone.
func TestBackupRefusals(t *testing.T) {
	d := newDisk(t, 4<<20)
	d.io("write -P 1 0 1M")
	dir := t.TempDir()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	repo, err := backup.Open(dir, backup.Options{Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	if _, err := backup.Open(dir, backup.Options{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open of a locked directory: %v", err)
	}
	cp := d.snapshot("a")
	if _, err := repo.Backup(context.Background(), dial(t, serve(t, cp, "a", ""), repo.MetaContexts(backup.Request{Snapshot: "a"})), backup.Request{Snapshot: "a"}); err != nil {
		t.Fatal(err)
	}

	// The previous snapshot's bitmap is gone (served without -B).
	d.io("write -P 2 0 4k")
	cp = d.snapshot("b")
	req := backup.Request{Snapshot: "b"}
	c := dial(t, serve(t, cp, "b", ""), repo.MetaContexts(req))
	if _, err := repo.Backup(context.Background(), c, req); !errors.Is(err, backup.ErrNoBitmap) || !strings.Contains(err.Error(), "--full") {
		t.Fatalf("incremental without the bitmap: %v", err)
	}
	// The same snapshot twice.
	if _, err := repo.Backup(context.Background(), c, backup.Request{Snapshot: "a"}); err == nil {
		t.Fatal("a second backup of snapshot a accepted")
	}
	// A device of another size.
	other := newDisk(t, 8<<20)
	other.snapshot("a") // so that it has a bitmap "a"
	ocp := other.snapshot("c")
	req = backup.Request{Snapshot: "c"}
	if _, err := repo.Backup(context.Background(), dial(t, serve(t, ocp, "c", "a"), repo.MetaContexts(req)), req); !errors.Is(err, backup.ErrSizeChanged) {
		t.Fatalf("incremental of another size: %v", err)
	}
	// --full starts a new chain; Retain(1) keeps only it.
	req = backup.Request{Snapshot: "b", Full: true}
	p, err := repo.Backup(context.Background(), dial(t, serve(t, cp, "b", ""), repo.MetaContexts(req)), req)
	if err != nil || p.Kind != backup.KindFull {
		t.Fatalf("full backup: %+v %v", p, err)
	}
	if len(repo.Manifest().Points) != 2 {
		t.Fatalf("points: %+v", repo.Manifest().Points)
	}
	if dropped, err := repo.Retain(context.Background(), 1); err != nil || len(dropped) != 1 || repo.Manifest().Points[0].File != p.File {
		t.Fatalf("Retain(1) after a full: %v %v", dropped, err)
	}
	if problems, err := repo.Verify(context.Background()); err != nil || problems != nil {
		t.Fatalf("Verify: %v %v", problems, err)
	}
	// Restore refuses to overwrite unless asked.
	target := filepath.Join(t.TempDir(), "t.raw")
	os.WriteFile(target, []byte("precious"), 0o600)
	if _, err := repo.Restore(context.Background(), "latest", target, backup.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("restore over an existing file: %v", err)
	}
	if _, err := repo.Restore(context.Background(), "latest", target, backup.RestoreOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	compareRaw(t, target, cp)
	if _, err := repo.Restore(context.Background(), "nope", target, backup.RestoreOptions{Overwrite: true}); err == nil || !strings.Contains(err.Error(), "there are") {
		t.Fatalf("restore of an unknown point: %v", err)
	}
}

// A backup interrupted half way leaves nothing in the manifest and no file;
// a leftover .partial from a crash is removed by the next Open; a file
// changed after it was written is caught by Verify.
func TestInterruptedAndTampered(t *testing.T) {
	d := newDisk(t, 16<<20)
	d.io("write -P 3 0 16M")
	dir := t.TempDir()
	cp := d.snapshot("x")
	uri := serve(t, cp, "x", "")

	ctx, cancel := context.WithCancel(context.Background())
	repo, err := backup.Open(dir, backup.Options{Progress: func(p backup.Progress) {
		if p.Phase == "copy" {
			cancel() // after the first window
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	req := backup.Request{Snapshot: "x"}
	if _, err := repo.Backup(ctx, dial(t, uri, repo.MetaContexts(req)), req); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 { // .lock
		t.Fatalf("after a cancelled backup the directory holds %d entries", len(ents))
	}
	repo.Close()

	os.WriteFile(filepath.Join(dir, "20260101T000000Z-full.qcow2.partial"), []byte("crash"), 0o600)
	repo, err = backup.Open(dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	if _, err := os.Stat(filepath.Join(dir, "20260101T000000Z-full.qcow2.partial")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the leftover .partial was not removed")
	}
	p, err := repo.Backup(context.Background(), dial(t, uri, repo.MetaContexts(req)), req)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(dir, p.File), os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 3<<20)
	f.Close()
	problems, err := repo.Verify(context.Background())
	if err != nil || len(problems) != 1 || !strings.Contains(problems[0], "checksum") {
		t.Fatalf("Verify of a changed file: %v %v", problems, err)
	}
}

// An incremental whose previous point cannot be read where a changed
// cluster needs it (its clusters were marked compressed, which reading
// refuses, after it was written) fails
// with the cause, while windows are still being read, and leaves nothing
// behind: the writing side's error stops the reading side.
func TestIncrementalPreviousPointUnreadable(t *testing.T) {
	d := newDisk(t, diskSize)
	d.io("write -P 5 0 32M")
	dir := t.TempDir()
	repo, err := backup.Open(dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	req := backup.Request{Snapshot: "s0"}
	full, err := repo.Backup(context.Background(), dial(t, serve(t, d.snapshot("s0"), "s0", ""), repo.MetaContexts(req)), req)
	if err != nil {
		t.Fatal(err)
	}
	// 4 KiB in each of 400 clusters: the rest of each comes from the full.
	var cmds []string
	for i := range 400 {
		cmds = append(cmds, fmt.Sprintf("write -P 6 %d 4k", int64(i)*(64<<10)+8192))
	}
	d.io(cmds...)
	// Mark every cluster of the full compressed, which reading refuses:
	// the image opens, its clusters do not read.
	f, err := os.OpenFile(filepath.Join(dir, full.File), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	f.ReadAt(b[:], 40) // l1_table_offset
	f.ReadAt(b[:], int64(binary.BigEndian.Uint64(b[:])))
	l2 := int64(binary.BigEndian.Uint64(b[:]) & 0x00fffffffffffe00)
	entries := make([]byte, 8*(diskSize>>16))
	f.ReadAt(entries, l2)
	for i := 0; i < len(entries); i += 8 {
		binary.BigEndian.PutUint64(entries[i:], binary.BigEndian.Uint64(entries[i:])|1<<62)
	}
	if _, err := f.WriteAt(entries, l2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	req = backup.Request{Snapshot: "s1"}
	_, err = repo.Backup(context.Background(), dial(t, serve(t, d.snapshot("s1"), "s1", "s0"), repo.MetaContexts(req)), req)
	if err == nil || !strings.Contains(err.Error(), "the previous point at") {
		t.Fatalf("incremental over a cut-short full: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".partial") {
			t.Fatalf("%s left behind", e.Name())
		}
	}
	if m := repo.Manifest(); len(m.Points) != 1 {
		t.Fatalf("manifest after the failed incremental: %+v", m.Points)
	}
}

// A full backup reads only what base:allocation reports as data; with a
// source allocated in 4 KiB pieces, a 64 KiB cluster of the backup is read
// in part and the rest must be zeroes, whatever the copy buffer held from
// the window before (the first windows are all data).
func TestFullBackupPartialClusters(t *testing.T) {
	d := &disk{t: t, dir: t.TempDir(), size: diskSize}
	d.path = filepath.Join(d.dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", d.path, fmt.Sprint(d.size))
	d.io("write -P 0x11 0 9M", "write -P 0x22 9220k 4k", "write -P 0x33 20M 8k", "write -P 0x44 28676k 4k")
	cp := d.snapshot("s0")
	repo, err := backup.Open(filepath.Join(t.TempDir(), "backups"), backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	req := backup.Request{Snapshot: "s0"}
	c := dial(t, serve(t, cp, "s0", ""), repo.MetaContexts(req))
	p, err := repo.Backup(context.Background(), c, req)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(9<<20 + 4<<10 + 8<<10 + 4<<10); p.BytesRead != want {
		t.Fatalf("full backup read %d bytes, want the %d allocated", p.BytesRead, want)
	}
	raw := filepath.Join(t.TempDir(), "s0.raw")
	if _, err := repo.Restore(context.Background(), p.File, raw, backup.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareRaw(t, raw, cp)
}

// Request.Rate paces the reads: 6 MiB at 16 MiB/s takes at least 3/8 s
// (the first window waits its share too), and the point is still exact.
func TestBackupRate(t *testing.T) {
	d := newDisk(t, diskSize)
	d.io("write -P 0x5a 0 6M")
	cp := d.snapshot("s0")
	repo, err := backup.Open(filepath.Join(t.TempDir(), "backups"), backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	req := backup.Request{Snapshot: "s0", Rate: 16 << 20}
	c := dial(t, serve(t, cp, "s0", ""), repo.MetaContexts(req))
	t0 := time.Now()
	p, err := repo.Backup(context.Background(), c, req)
	took := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	if p.BytesRead != 6<<20 || took < 375*time.Millisecond {
		t.Fatalf("read %d bytes in %v at 16 MiB/s: want 6 MiB in at least 375ms", p.BytesRead, took)
	}
	raw := filepath.Join(t.TempDir(), "s0.raw")
	if _, err := repo.Restore(context.Background(), p.File, raw, backup.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	compareRaw(t, raw, cp)
}
