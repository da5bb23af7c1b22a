// Package e2e holds process-level tests: they build and start the real repd
// and repctl binaries and drive them with NBD clients no one here wrote
// (libnbd's nbdinfo/nbdcopy/nbdsh, qemu-img/qemu-io, fio).
//
// The cluster is the harness package's; this file adapts it to the tests'
// helpers, which fail the test instead of returning errors.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
	"github.com/repd/repd/harness"
)

// bins are the binaries under test, built once for the package; set by
// buildBinaries (newCluster calls it).
var bins struct {
	once             sync.Once
	repd, ctl, proxy string
}

// TestMain removes the binaries after every test ran.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveBinaries()
	os.Exit(code)
}

func buildBinaries(t *testing.T) *harness.Bins {
	t.Helper()
	b, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	bins.once.Do(func() { bins.repd, bins.ctl, bins.proxy = b.Repd, b.Repctl, b.Linkproxy })
	return b
}

// freePort returns a TCP port free on host right now.
func freePort(t *testing.T, host string) int {
	t.Helper()
	p, err := harness.FreePort(host)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// cluster is a resource of n nodes on distinct loopback addresses
// (127.0.0.2, .3, ...), one resource file for all.
type cluster struct {
	t        *testing.T
	h        *harness.Cluster
	dir      string
	conf     string
	nodes    []*node
	resource string
}

type node struct {
	c       *cluster
	h       *harness.Node
	name    string
	host    string
	nbd     string // host:port
	peer    string
	admin   string
	metrics string // host:port of /metrics and /health
	disk    string
	meta    string
	logPath string
}

type clusterOpts struct {
	nodes    int
	size     string // default 64MiB
	protocol string
	extra    string // extra lines for [resource]
	peerAddr func(i int, n *node) string
}

// newCluster writes the resource file; no node runs yet. The nodes log at
// debug level; a failed test logs the tail of every node's log.
func newCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	b := buildBinaries(t)
	if o.size == "" {
		o.size = "64MiB"
	}
	size, err := config.ParseBytes(o.size)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: t.TempDir(), resource: "r0"}
	ho := harness.Options{
		Nodes: o.nodes, Resource: c.resource, Size: size, Protocol: o.protocol, Extra: o.extra,
		Metrics: true, Args: []string{"--log-level", "debug"},
	}
	if o.peerAddr != nil {
		ho.PeerAddr = func(i int, n *harness.Node) string { return o.peerAddr(i, c.adapt(n)) }
	}
	if c.h, err = harness.New(b, c.dir, ho); err != nil {
		t.Fatal(err)
	}
	c.conf = c.h.Conf
	for _, n := range c.h.Nodes {
		c.nodes = append(c.nodes, c.adapt(n))
	}
	t.Cleanup(func() {
		c.h.Close()
		if t.Failed() {
			t.Log(c.h.LogTails(6000))
		}
	})
	return c
}

func (c *cluster) adapt(n *harness.Node) *node {
	return &node{c: c, h: n, name: n.Name, host: n.Host, nbd: n.NBD, peer: n.Peer, admin: n.Admin,
		metrics: n.Metrics, disk: n.Disk, meta: n.Meta, logPath: n.LogPath}
}

// start runs the node's daemon and waits until its admin socket answers.
func (n *node) start() {
	n.c.t.Helper()
	if err := n.h.Start(context.Background()); err != nil {
		n.c.t.Fatal(err)
	}
}

// startWith runs cmd, a wrapper that runs the node's daemon (bins.repd
// --config c.conf --node NAME), as the node's process, and waits until its
// admin socket answers.
func (n *node) startWith(cmd *exec.Cmd) {
	n.c.t.Helper()
	if err := n.h.StartCommand(context.Background(), cmd); err != nil {
		n.c.t.Fatal(err)
	}
}

// stop signals the daemon and waits for it to exit; the exit error is nil
// for a clean exit.
func (n *node) stop(sig syscall.Signal) error { return n.h.Signal(sig) }

// pid is the daemon's process id (0 when it does not run).
func (n *node) pid() int { return n.h.Pid() }

// running reports whether the daemon started by start runs.
func (n *node) running() bool { return n.h.Running() }

// exited waits up to d for the daemon to exit and returns its exit error.
func (n *node) exited(d time.Duration) (bool, error) { return n.h.Exited(d) }

// ctl runs repctl against this node.
func (n *node) ctl(args ...string) (string, error) {
	return n.h.Ctl(context.Background(), args...)
}

func (n *node) mustCtl(args ...string) string {
	n.c.t.Helper()
	out, err := n.ctl(args...)
	if err != nil {
		n.c.t.Fatal(err)
	}
	return out
}

// status is `repctl status --json` of the node.
func (n *node) status() api.Status {
	n.c.t.Helper()
	var s api.Status
	out := n.mustCtl("status", "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		n.c.t.Fatalf("status --json of %s: %v\n%s", n.name, err, out)
	}
	return s
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if err := harness.WaitFor(context.Background(), what, timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// upCluster starts every node of c, waits for full connectivity, and makes
// the first node Primary of a resource whose disks start empty.
func upCluster(t *testing.T, c *cluster) *node {
	t.Helper()
	if err := c.h.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c.nodes[0]
}

// waitConnected waits until every running node sees every running peer
// Connected.
func waitConnected(t *testing.T, c *cluster, timeout time.Duration) {
	t.Helper()
	if err := c.h.WaitConnected(context.Background(), timeout); err != nil {
		t.Fatal(err)
	}
}

// waitInSync waits until every running node is UpToDate and reports every
// running peer Established with nothing out of sync.
func waitInSync(t *testing.T, c *cluster, timeout time.Duration) {
	t.Helper()
	if err := c.h.WaitInSync(context.Background(), timeout); err != nil {
		t.Fatal(err)
	}
}

// uri is the node's NBD URI for libnbd tools and fio.
func (n *node) uri() string { return n.h.URI() }

// hashFile is the BLAKE3 of the first size bytes of path.
func hashFile(t *testing.T, path string, size int64) string {
	t.Helper()
	h, err := harness.HashFile(path, size)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// quickExitEnv is the environment for the binaries under test: a race-enabled
// Go binary otherwise sleeps 1s at exit, which adds up over many repctl calls.
func quickExitEnv() []string { return harness.QuickExitEnv() }

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

// terminateAll stops every node with SIGTERM (Secondaries first, Primaries
// once their journals are empty); an unclean exit fails the test.
func (c *cluster) terminateAll(t *testing.T) {
	t.Helper()
	if err := c.h.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
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
