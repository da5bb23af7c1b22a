// Package e2e holds process-level tests: they build and start the real repd
// and repctl binaries and drive them with NBD clients no one here wrote
// (libnbd's nbdinfo/nbdcopy/nbdsh, qemu-img/qemu-io, fio).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

var bins struct {
	once  sync.Once
	dir   string
	err   error
	repd  string
	ctl   string
	proxy string
}

// TestMain builds the binaries once for every test in the package.
func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

func buildBinaries(t *testing.T) {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "repd-e2e-bin")
		if bins.err != nil {
			return
		}
		args := []string{"build", "-o", bins.dir + "/"}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "../cmd/repd", "../cmd/repctl", "../cmd/linkproxy")
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			bins.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		bins.repd = filepath.Join(bins.dir, "repd")
		bins.ctl = filepath.Join(bins.dir, "repctl")
		bins.proxy = filepath.Join(bins.dir, "linkproxy")
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

// requireTool finds an external tool. Under CI=true a missing tool fails the
// test: CI installs every tool (scripts/deps.sh), so absence is a bug there.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found on PATH (CI installs it with scripts/deps.sh)", name)
	}
	t.Skipf("%s not installed (run scripts/deps.sh as root)", name)
	return ""
}

// freePort returns a TCP port free on host right now.
func freePort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type nodeSpec struct {
	Name, Host string
	NBDPort    int
	PeerPort   int
}

// cluster is a resource of n nodes on distinct loopback addresses.
type cluster struct {
	t        *testing.T
	dir      string
	conf     string
	nodes    []*node
	resource string
}

type node struct {
	c       *cluster
	name    string
	host    string
	nbd     string // host:port
	peer    string
	admin   string
	metrics string // host:port of /metrics and /health
	disk    string
	meta    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	exitErr error
}

type clusterOpts struct {
	nodes    int
	size     string
	protocol string
	extra    string // extra lines for [resource]
	peerAddr func(i int, n *node) string
}

func newCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	buildBinaries(t)
	if o.size == "" {
		o.size = "64MiB"
	}
	if o.protocol == "" {
		o.protocol = "C"
	}
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, conf: filepath.Join(dir, "r0.toml"), resource: "r0"}
	var b strings.Builder
	fmt.Fprintf(&b, "[resource]\nname = %q\nsize = %q\nprotocol = %q\n%s\n", c.resource, o.size, o.protocol, o.extra)
	names := []string{"alpha", "beta", "gamma", "delta"}
	for i := 0; i < o.nodes; i++ {
		host := fmt.Sprintf("127.0.0.%d", i+2)
		n := &node{c: c, name: names[i], host: host}
		n.nbd = fmt.Sprintf("%s:%d", host, freePort(t, host))
		n.peer = fmt.Sprintf("%s:%d", host, freePort(t, host))
		n.admin = filepath.Join(dir, n.name+".sock")
		n.metrics = fmt.Sprintf("%s:%d", host, freePort(t, host))
		n.disk = filepath.Join(dir, n.name+".img")
		n.meta = filepath.Join(dir, n.name+".meta")
		n.logPath = filepath.Join(dir, n.name+".log")
		peer := n.peer
		if o.peerAddr != nil {
			peer = o.peerAddr(i, n)
		}
		fmt.Fprintf(&b, "\n[[node]]\nname = %q\ndisk = %q\nmeta = %q\nnbd = %q\npeer = %q\nadmin = %q\nmetrics = %q\n",
			n.name, n.disk, n.meta, n.nbd, peer, n.admin, n.metrics)
		c.nodes = append(c.nodes, n)
	}
	if err := os.WriteFile(c.conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) stopAll() {
	for _, n := range c.nodes {
		n.stop(syscall.SIGKILL)
	}
	if c.t.Failed() {
		for _, n := range c.nodes {
			if b, err := os.ReadFile(n.logPath); err == nil {
				tail := b
				if len(tail) > 6000 {
					tail = tail[len(tail)-6000:]
				}
				c.t.Logf("--- log of %s (tail) ---\n%s", n.name, tail)
			}
		}
	}
}

// start runs the node's daemon and waits until its admin socket answers.
func (n *node) start() {
	t := n.c.t
	t.Helper()
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins.repd, "--config", n.c.conf, "--node", n.name, "--log-level", "debug")
	cmd.Env = quickExitEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	n.cmd = cmd
	n.done = make(chan struct{})
	go func() { n.exitErr = cmd.Wait(); close(n.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := n.ctl("status", "--json"); err == nil {
			return
		}
		select {
		case <-n.done:
			b, _ := os.ReadFile(n.logPath)
			t.Fatalf("repd %s exited at start: %v\n%s", n.name, n.exitErr, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("repd %s did not come up in 20s", n.name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals the daemon and waits for it to exit.
func (n *node) stop(sig syscall.Signal) error {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	select {
	case <-n.done:
	default:
		n.cmd.Process.Signal(sig)
		select {
		case <-n.done:
		case <-time.After(30 * time.Second):
			n.cmd.Process.Kill()
			<-n.done
			n.cmd = nil
			return fmt.Errorf("%s did not exit within 30s of %v", n.name, sig)
		}
	}
	n.cmd = nil
	return n.exitErr
}

// ctl runs repctl against this node.
func (n *node) ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"--admin", n.admin}, args...)
	cmd := exec.CommandContext(ctx, bins.ctl, full...)
	cmd.Env = quickExitEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("repctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (n *node) mustCtl(args ...string) string {
	n.c.t.Helper()
	out, err := n.ctl(args...)
	if err != nil {
		n.c.t.Fatal(err)
	}
	return out
}

// status is the subset of `repctl status --json` the tests read.
type status struct {
	Role  string `json:"role"`
	Disk  string `json:"disk"`
	Peers []struct {
		Name        string `json:"name"`
		Connection  string `json:"connection"`
		Replication string `json:"replication"`
		Role        string `json:"role"`
		Disk        string `json:"disk"`
		OutOfSync   int64  `json:"out_of_sync_kib"`
	} `json:"peers"`
}

func (n *node) status() status {
	n.c.t.Helper()
	var s status
	out := n.mustCtl("status", "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		n.c.t.Fatalf("status --json of %s: %v\n%s", n.name, err, out)
	}
	return s
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// uri is the node's NBD URI for libnbd tools and fio.
func (n *node) uri() string { return "nbd://" + n.nbd + "/" + n.c.resource }

// hashFile is the BLAKE3 of the first size bytes of path.
func hashFile(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := blake3.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		k := min(int64(len(buf)), size-off)
		if _, err := f.ReadAt(buf[:k], off); err != nil {
			t.Fatal(err)
		}
		h.Write(buf[:k])
		off += k
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// quickExitEnv is the environment for the binaries under test: a race-enabled
// Go binary otherwise sleeps 1s at exit, which adds up over many repctl calls.
func quickExitEnv() []string {
	return append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// run runs an external command with a timeout and returns its stdout.
func run(t *testing.T, timeout time.Duration, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

// peerCounter reads one numeric field of a peer in `status --json`.
func peerCounter(t *testing.T, n *node, peer, field string) int64 {
	t.Helper()
	var s struct {
		Peers []map[string]any `json:"peers"`
	}
	out := n.mustCtl("status", "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.Peers {
		if p["name"] == peer {
			v, ok := p[field].(float64)
			if !ok {
				t.Fatalf("status of %s has no numeric %s for %s:\n%s", n.name, field, peer, out)
			}
			return int64(v)
		}
	}
	t.Fatalf("%s has no peer %s", n.name, peer)
	return 0
}

func resyncedBytes(t *testing.T, n *node, peer string) int64 {
	return peerCounter(t, n, peer, "resynced_bytes")
}

// terminateAll stops every node with SIGTERM; an unclean exit fails the
// test.
func (c *cluster) terminateAll(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		if err := n.stop(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
}

// sameDisks fails with msg unless a's and b's backing files hold the same
// first size bytes.
func sameDisks(t *testing.T, a, b *node, size int64, msg string) {
	t.Helper()
	if hashFile(t, a.disk, size) != hashFile(t, b.disk, size) {
		t.Fatal(msg)
	}
}
