package backup_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
	"github.com/repd/repd/nbd/client"
)

// run runs an external command and fails the test unless it exits 0.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, testtool.Require(t, name), args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), stderr.String())
	}
	return out.String()
}

// qemuNBD serves image read-only as export on a unix socket (extra: more
// qemu-nbd arguments, e.g. -B BITMAP) until the test ends, and returns the
// export's URI.
func qemuNBD(t testing.TB, image, export string, extra ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := append([]string{"-r", "-t", "-e", "4", "-f", "qcow2", "-x", export, "-k", sock}, extra...)
	args = append(args, image)
	var stderr bytes.Buffer
	cmd := exec.Command(testtool.Require(t, "qemu-nbd"), args...)
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
			t.Fatalf("qemu-nbd %s exited: %v\n%s", strings.Join(args, " "), err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd did not listen within 10s\n%s", stderr.String())
		}
	}
	return (client.Target{Network: "unix", Address: sock, Export: export}).String()
}

// copyFile copies a file (an image no process has open).
func copyFile(t testing.TB, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// disk is a qcow2 image standing in for repd's device: writes go through
// qemu-io, and a snapshot is a copy of the image plus a persistent dirty
// bitmap (named after the snapshot) that records what changes after it.
type disk struct {
	t    testing.TB
	dir  string
	path string
	size int64
	snap string // the latest snapshot's name
}

func newDisk(t testing.TB, size int64) *disk {
	d := &disk{t: t, dir: t.TempDir(), size: size}
	d.path = filepath.Join(d.dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.path, fmt.Sprint(size))
	return d
}

// io runs qemu-io commands on the disk.
func (d *disk) io(cmds ...string) {
	d.t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(d.t, "qemu-io", append(args, d.path)...)
}

// snapshot takes snapshot name: the image is copied to name.qcow2 (the
// point-in-time export), a bitmap name starts recording changes, and the
// previous snapshot's bitmap is dropped from the live disk (as repctl drops
// the previous base snapshot). It returns the copy's path.
func (d *disk) snapshot(name string) string {
	d.t.Helper()
	run(d.t, "qemu-img", "bitmap", "--add", "-g", "4096", d.path, name)
	cp := filepath.Join(d.dir, name+".qcow2")
	copyFile(d.t, d.path, cp)
	if d.snap != "" {
		run(d.t, "qemu-img", "bitmap", "--remove", d.path, d.snap)
	}
	d.snap = name
	return cp
}

// serve exports snapshot copy cp as r0@name with the dirty bitmap of base
// (the previous snapshot), if any.
func serve(t testing.TB, cp, name, base string) string {
	var extra []string
	if base != "" {
		extra = []string{"-B", base}
	}
	return qemuNBD(t, cp, "r0@"+name, extra...)
}

// dial connects to uri asking for ctxs.
func dial(t testing.TB, uri string, ctxs []string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.DialURI(ctx, uri, client.Options{MetaContexts: ctxs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// compareRaw fails unless qemu-img compare finds the raw file and the qcow2
// image identical.
func compareRaw(t testing.TB, raw, img string) {
	t.Helper()
	out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, img)
	if !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare %s %s: %s", raw, img, out)
	}
}

// clock is a fake time source that moves an hour per call.
type clock struct{ t time.Time }

func (c *clock) now() time.Time {
	c.t = c.t.Add(time.Hour)
	return c.t
}
