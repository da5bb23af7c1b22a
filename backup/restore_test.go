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

// Restore onto a block device (a loop device over a file full of garbage):
// refused without Overwrite, then every byte is the snapshot's, the parts
// that read as zeroes included.
func TestRestoreBlockDevice(t *testing.T) {
	testtool.RequireRoot(t, "restoring onto a block device (a loop device)")
	testtool.Require(t, "losetup")
	d := newDisk(t, 8<<20)
	d.io("write -P 0x5a 1M 1M", "write -P 0xa5 7M 64k")
	cp := d.snapshot("s")
	dir := t.TempDir()
	repo, err := backup.Open(dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	req := backup.Request{Snapshot: "s"}
	if _, err := repo.Backup(context.Background(), dial(t, serve(t, cp, "s", ""), repo.MetaContexts(req)), req); err != nil {
		t.Fatal(err)
	}

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
