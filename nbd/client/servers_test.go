package client_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
)

// runTool runs an external command and fails the test on error.
func runTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, testtool.Require(t, name), args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// serve starts a server process (qemu-nbd or nbdkit) that listens on sock
// (a unix socket) or addr (TCP), waits until it accepts connections and
// stops it when the test ends.
func serve(t testing.TB, network, address, name string, args ...string) {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(testtool.Require(t, name), args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout(network, address, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("%s %s exited: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within 10s\n%s", name, address, stderr.String())
		}
	}
}

// qemuNBD serves image (format fmt) read-only on a new unix socket as
// export, with extra arguments, and returns the socket's path.
func qemuNBD(t testing.TB, image, format, export string, extra ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := append([]string{"-r", "-t", "-e", "8", "-f", format, "-x", export, "-k", sock}, extra...)
	serve(t, "unix", sock, "qemu-nbd", append(args, image)...)
	return sock
}

// freeTCP returns a free port on 127.0.0.1.
func freeTCP(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}
