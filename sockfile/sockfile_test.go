package sockfile

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")

	// Fresh path: bound with the permissions asked, removed on close.
	l, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket file: %v %v", fi.Mode(), err)
	}

	// Live: refused, and the live listener still works.
	if _, err := Listen(path, 0o600); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("live socket: %v", err)
	}
	go func(l *net.UnixListener) {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}(l)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live listener was taken over: %v", err)
	}
	c.Close()
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}

	// Stale: a socket file nothing listens on (a process that died).
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}
	l, err = Listen(path, 0o660)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o660 {
		t.Fatalf("mode %v, want 0660", fi.Mode().Perm())
	}
	l.Close()
}

func TestListenRefusesNonSockets(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("precious"), 0o644)
	sub := filepath.Join(dir, "dir")
	os.Mkdir(sub, 0o755)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A symbolic link to a stale socket is not followed.
	target := filepath.Join(dir, "target.sock")
	stale, err := net.Listen("unix", target)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	link := filepath.Join(dir, "link")
	os.Symlink(target, link)

	for _, tc := range []struct{ path, want string }{
		{file, "is a regular file, not a socket"},
		{sub, "is a directory, not a socket"},
		{fifo, "is a named pipe, not a socket"},
		{link, "is a symbolic link, not a socket"},
	} {
		if _, err := Listen(tc.path, 0o600); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: %v, want %q", tc.path, err, tc.want)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Fatalf("the regular file was touched: %q %v", b, err)
	}
	if _, err := os.Lstat(target); err != nil {
		t.Fatalf("the link's target was removed: %v", err)
	}
}
