package e2e

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
)

// TestFilesystemOnReplicatedDevice takes the path a filesystem takes: the
// primary's export as a file (nbdfuse), a loop device on it, mkfs.ext4,
// mount, files written and synced, unmount. The secondary's backing file is
// then the same bytes, and e2fsck finds it clean.
func TestFilesystemOnReplicatedDevice(t *testing.T) {
	testtool.RequireRoot(t, "the filesystem test (loop devices, mount)")
	nbdfuse := testtool.Require(t, "nbdfuse")
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "fusermount3"} {
		testtool.Require(t, tool)
	}
	c := newCluster(t, clusterOpts{nodes: 2, size: "64MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	dir := t.TempDir()
	fuseDir := filepath.Join(dir, "fuse")
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(fuseDir, 0o755)
	os.Mkdir(mnt, 0o755)

	img, unmountFuse := fuseFile(t, nbdfuse, fuseDir, p.uri(), 64<<20)
	loop := strings.TrimSpace(string(run(t, 30*time.Second, "losetup", "-f", "--show", img)))
	loopAttached := true
	t.Cleanup(func() {
		exec.Command("umount", mnt).Run()
		if loopAttached {
			exec.Command("losetup", "-d", loop).Run()
		}
	})
	run(t, time.Minute, "mkfs.ext4", "-q", "-F", loop)
	run(t, 30*time.Second, "mount", loop, mnt)
	want := map[string][]byte{}
	for _, name := range []string{"customers.csv", "orders.db", "journal.log"} {
		b := make([]byte, 3<<20)
		rand.Read(b)
		want[name] = b
		if err := os.WriteFile(filepath.Join(mnt, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	syscall.Sync()
	run(t, 30*time.Second, "umount", mnt)
	run(t, 30*time.Second, "losetup", "-d", loop)
	loopAttached = false
	unmountFuse()

	waitInSync(t, c, 30*time.Second)
	c.terminateAll(t)
	sameDisks(t, p, s, 64<<20, "the secondary's backing file differs from the primary's")
	// The replica holds a clean filesystem with the files in it.
	run(t, time.Minute, "e2fsck", "-f", "-n", s.disk)
	loop2 := strings.TrimSpace(string(run(t, 30*time.Second, "losetup", "-f", "--show", "-r", s.disk)))
	defer exec.Command("losetup", "-d", loop2).Run()
	run(t, 30*time.Second, "mount", "-o", "ro", loop2, mnt)
	defer exec.Command("umount", mnt).Run()
	for name, b := range want {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s on the secondary's filesystem: %v (equal %v)", name, err, bytes.Equal(got, b))
		}
	}
}

// fuseFile exposes the NBD export at uri as a file in dir with nbdfuse
// (the binary at bin) until the test ends, and returns the file's path
// once it shows the export's size. unmount detaches it and waits for
// nbdfuse to exit (after its last write reached the export).
func fuseFile(t *testing.T, bin, dir, uri string, size int64) (img string, unmount func()) {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), "nbdfuse.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	fuse := exec.Command(bin, dir, uri)
	fuse.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
	fuse.Stdout, fuse.Stderr = log, log
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func(report bool) {
		once.Do(func() {
			if out, err := exec.Command("fusermount3", "-u", dir).CombinedOutput(); err != nil {
				if report {
					t.Errorf("fusermount3 -u %s: %v\n%s", dir, err, out)
				}
				fuse.Process.Kill()
			}
			fuse.Wait()
		})
	}
	unmount = func() { stop(true) }
	t.Cleanup(func() { stop(false) })
	img = filepath.Join(dir, "nbd")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if fi, err := os.Stat(img); err == nil && fi.Size() == size {
			return img, unmount
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("nbdfuse %s did not show a %d-byte file in 10s:\n%s", uri, size, out)
		}
	}
}
