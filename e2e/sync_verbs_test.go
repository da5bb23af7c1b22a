package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
)

// TestSyncVerbs drives invalidate, invalidate-remote, pause-sync,
// resume-sync and create-md against real processes.
func TestSyncVerbs(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "32MiB", extra: `resync-rate = "4MiB"`})
	p := upCluster(t, c)
	s := c.nodes[1]
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x42 0 16M", p.uri())
	waitInSync(t, c, 30*time.Second)

	// invalidate on the Primary is refused with a reason.
	msg, err := p.ctl("invalidate")
	if exitCodeOf(err) != 3 || !strings.Contains(msg, "Primary") {
		t.Fatalf("invalidate on the Primary: exit %d: %s", exitCodeOf(err), msg)
	}
	// invalidate on beta: a full resync from alpha, rate-limited so it can
	// be paused and resumed on the source.
	s.mustCtl("invalidate")
	waitFor(t, "beta SyncTarget", 10*time.Second, func() bool { return s.status().Peers[0].Replication == api.SyncTarget })
	p.mustCtl("pause-sync", "beta")
	waitFor(t, "resync paused", 10*time.Second, func() bool {
		return peerBool(t, p, "beta", "sync_paused_by_user") && p.status().Peers[0].Replication == api.PausedSync
	})
	left := p.status().Peers[0].OutOfSyncKiB
	time.Sleep(500 * time.Millisecond)
	if now := p.status().Peers[0].OutOfSyncKiB; now < left {
		t.Fatalf("paused resync went on: %d KiB → %d KiB", left, now)
	}
	p.mustCtl("resume-sync", "beta")
	out := p.mustCtl("wait-sync", "--timeout", "60s")
	if !strings.Contains(out, "in sync") {
		t.Fatalf("wait-sync: %s", out)
	}
	if got := resyncedBytes(t, p, "beta"); got < 32<<20 {
		t.Fatalf("invalidate resynced %d bytes, want the whole 32 MiB device", got)
	}
	// invalidate-remote from the Primary: beta takes everything again.
	before := resyncedBytes(t, p, "beta")
	p.mustCtl("invalidate-remote", "beta")
	p.mustCtl("wait-sync", "--timeout", "60s")
	if got := resyncedBytes(t, p, "beta") - before; got < 32<<20 {
		t.Fatalf("invalidate-remote resynced %d bytes", got)
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x42 0 16M", s.uri())

	// create-md refuses while the daemon holds the meta file, and works
	// offline with --force.
	if b, err := exec.Command(bins.ctl, "--config", c.conf, "--node", "beta", "create-md", "--force").CombinedOutput(); err == nil {
		t.Fatalf("create-md succeeded while repd runs: %s", b)
	}
	if err := s.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(bins.ctl, "--config", c.conf, "--node", "beta", "create-md").CombinedOutput(); err == nil || !strings.Contains(string(b), "force") {
		t.Fatalf("create-md over a valid meta file without --force: %v %s", err, b)
	}
	startOver(t, c, s, qemuIO, "read -P 0x42 0 16M")
}

// startOver runs create-md --force for the stopped node s, starts it, and
// checks that it comes back Inconsistent (a re-created meta file knows
// nothing), takes a full sync from the Primary, and then passes the
// qemu-io read check.
func startOver(t *testing.T, c *cluster, s *node, qemuIO, check string) {
	t.Helper()
	if b, err := exec.Command(bins.ctl, "--config", c.conf, "--node", s.name, "create-md", "--force").CombinedOutput(); err != nil {
		t.Fatalf("create-md --force: %v %s", err, b)
	}
	s.start()
	if d := s.status().Disk; d != "Inconsistent" {
		t.Fatalf("after create-md %s is %s", s.name, d)
	}
	waitInSync(t, c, 60*time.Second)
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", check, s.uri())
}

// TestEventsOrder: the events stream shows a disconnect/reconnect story's
// state changes in order.
func TestEventsOrder(t *testing.T) {
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB"})
	p := upCluster(t, c)
	cmd := exec.Command(bins.ctl, "--admin", p.admin, "events")
	cmd.Env = quickExitEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan map[string]any, 256)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				lines <- e
			}
		}
		close(lines)
	}()
	next := func(kind, peer, newState string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case e, ok := <-lines:
				if !ok {
					t.Fatalf("event stream ended waiting for %s %s→%s", kind, peer, newState)
				}
				if e["kind"] == kind && (peer == "" || e["peer"] == peer) && e["new"] == newState {
					return
				}
			case <-deadline:
				t.Fatalf("no %s event for %s → %s", kind, peer, newState)
			}
		}
	}
	next("exists", "", "Primary")
	p.mustCtl("disconnect", "beta")
	next("connection", "beta", "StandAlone")
	p.mustCtl("connect", "beta")
	next("connection", "beta", "Connecting")
	next("connection", "beta", "Connected")
	next("replication", "beta", "Established")
	p.mustCtl("secondary")
	next("role", "", "Secondary")
}

func peerBool(t *testing.T, n *node, peer, field string) bool {
	t.Helper()
	var s struct {
		Peers []map[string]any `json:"peers"`
	}
	if err := json.Unmarshal([]byte(n.mustCtl("status", "--json")), &s); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.Peers {
		if p["name"] == peer {
			b, _ := p[field].(bool)
			return b
		}
	}
	return false
}

// TestReplacedDiskRefused: a Secondary whose backing file is gone (a
// replaced or wiped disk) while its meta file still describes data does not
// start as UpToDate on an empty file created for it: repd refuses, says
// what to run, and leaves no file behind, so a second start refuses too.
// After create-md --force it starts Inconsistent and takes a full sync.
func TestReplacedDiskRefused(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x5a 0 16M", p.uri())
	waitInSync(t, c, 30*time.Second)
	if err := s.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.disk); err != nil {
		t.Fatal(err)
	}
	metaBefore, err := os.ReadFile(s.meta)
	if err != nil {
		t.Fatal(err)
	}
	for try := 1; try <= 2; try++ {
		// Bounded: a repd that accepts the empty file runs until killed.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bins.repd, "--config", c.conf, "--node", s.name)
		cmd.Env = quickExitEnv()
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "the data is gone") || !strings.Contains(string(out), "create-md --force") {
			t.Fatalf("start %d of beta on a missing disk: %v\n%s", try, err, out)
		}
		if _, err := os.Stat(s.disk); !os.IsNotExist(err) {
			t.Fatalf("start %d left a backing file behind (stat: %v)", try, err)
		}
		if after, err := os.ReadFile(s.meta); err != nil || !bytes.Equal(after, metaBefore) {
			t.Fatalf("start %d changed the meta file (read: %v)", try, err)
		}
	}
	startOver(t, c, s, qemuIO, "read -P 0x5a 0 16M")
}
