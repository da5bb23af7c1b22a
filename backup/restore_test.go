package backup_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/backup"
	"github.com/repd/repd/internal/testtool"
)

// backedUp makes a disk of size bytes, writes it with the qemu-io
// commands cmds, snapshots it as "s" and backs that up into a fresh
// repository (closed when the test ends); it returns the repository and
// the snapshot's image.
func backedUp(t *testing.T, size int64, cmds ...string) (*backup.Repo, string) {
	t.Helper()
	d := newDisk(t, size)
	d.io(cmds...)
	cp := d.snapshot("s")
	repo, err := backup.Open(t.TempDir(), backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repo.Close() })
	req := backup.Request{Snapshot: "s"}
	if _, err := repo.Backup(context.Background(), dial(t, serve(t, cp, "s", ""), repo.MetaContexts(req)), req); err != nil {
		t.Fatal(err)
	}
	return repo, cp
}

// Restore onto a block device (a loop device over a file full of garbage):
// refused without Overwrite, then every byte is the snapshot's, the parts
// that read as zeroes included.
func TestRestoreBlockDevice(t *testing.T) {
	testtool.RequireRoot(t, "restoring onto a block device (a loop device)")
	testtool.Require(t, "losetup")
	repo, cp := backedUp(t, 8<<20, "write -P 0x5a 1M 1M", "write -P 0xa5 7M 64k")

	img := filepath.Join(t.TempDir(), "dev.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte{0xee}, 9<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	loop := strings.TrimSpace(run(t, "losetup", "-f", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })

	if _, err := repo.Restore(context.Background(), "s", loop, backup.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "block device") {
		t.Fatalf("restore onto a block device without --force: %v", err)
	}
	start := time.Now()
	if _, err := repo.Restore(context.Background(), "s", loop, backup.RestoreOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("restored 8 MiB onto %s in %v", loop, time.Since(start))
	run(t, "losetup", "-d", loop)
	out := filepath.Join(t.TempDir(), "restored.raw")
	b, _ := os.ReadFile(img)
	if !bytes.Equal(b[8<<20:], bytes.Repeat([]byte{0xee}, 1<<20)) {
		t.Fatal("restore wrote past the backup's size")
	}
	os.WriteFile(out, b[:8<<20], 0o600)
	compareRaw(t, out, cp)
}

// A restore writes a new file in large pieces, which this kernel caches in
// large folios, where each of repd's 4 KiB writes would cost several
// times what it costs into a 4 KiB page until the cache turns over: once
// the file is durable, Restore drops its clean pages. The control writes
// a file on the same filesystem as Restore does, without the drop, and
// finds large folios, so that the check cannot pass by showing nothing.
func TestRestoreLeavesNoLargeFolios(t *testing.T) {
	testtool.RequireRoot(t, "reading page frame flags (/proc/kpageflags)")
	const size = 32 << 20
	repo, cp := backedUp(t, size, "write -P 0x5a 0 32M")
	// On the disk's filesystem, not a tmpfs: its page cache is the one
	// in question.
	dir, err := os.MkdirTemp("/var/tmp", "repd-restore-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)

	ctl, err := os.Create(filepath.Join(dir, "control.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	piece := bytes.Repeat([]byte{0x5a}, 64<<10)
	for off := int64(0); off < size; off += int64(len(piece)) {
		if _, err := ctl.WriteAt(piece, off); err != nil {
			t.Fatal(err)
		}
	}
	if cached, large := testtool.CachedLarge(t, ctl, size); large == 0 {
		t.Fatalf("control: 64 KiB writes left %d pages cached, none in large folios: this filesystem does not keep files in large folios, and the test shows nothing here", cached)
	}

	target := filepath.Join(dir, "restored.raw")
	if _, err := repo.Restore(context.Background(), "s", target, backup.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if cached, large := testtool.CachedLarge(t, f, size); large != 0 {
		t.Fatalf("after the restore %d of the file's %d cached pages are in large folios", large, cached)
	}
	// What a 4 KiB write into the restored file finds: a 4 KiB page (the
	// data it had, so that the comparison below holds; that reads the
	// whole file with readahead, so it comes last).
	if _, err := f.WriteAt(piece[:4096], 1<<20); err != nil {
		t.Fatal(err)
	}
	if cached, large := testtool.CachedLarge(t, f, size); cached == 0 || large != 0 {
		t.Fatalf("after a 4 KiB write into the restored file: %d pages cached, %d in large folios; want some, none", cached, large)
	}
	compareRaw(t, target, cp)
}
