package e2e

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHealthFollowsRole: the health probe answers 200 only on an UpToDate
// Primary, and flips within a second of promote and demote, so a load
// balancer or DNS probe sends clients to whichever node is Primary.
func TestHealthFollowsRole(t *testing.T) {
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	expect := func(n *node, want int) {
		t.Helper()
		deadline := time.Now().Add(time.Second)
		for {
			code, body := httpGet(t, "http://"+n.metrics+"/health")
			if code == want {
				if !strings.Contains(body, `"node":"`+n.name+`"`) {
					t.Fatalf("health body does not name the node: %s", body)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s /health = %d (%s), want %d within 1s", n.name, code, body, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	expect(p, 200)
	expect(s, 503)
	p.mustCtl("secondary")
	expect(p, 503)
	s.mustCtl("primary")
	expect(s, 200)

	run(t, time.Minute, testtool.Require(t, "qemu-io"), "-f", "raw", "-c", "write -P 1 0 64k", s.uri())
	code, body := httpGet(t, "http://"+s.metrics+"/metrics")
	for _, want := range []string{"repd_role_primary 1", `repd_nbd_requests_total{cmd="write"}`, `repd_peer_connected{peer="alpha"} 1`, `repd_disk_state{state="UpToDate"} 1`, `repd_peer_ack_latency_seconds{peer="alpha"}`, `repd_peer_acks_total{peer="alpha"}`} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("/metrics (%d) lacks %q", code, want)
		}
	}
}

// TestAdminSocketPermissions: the socket is 0600 and a caller that is not
// root (nor the daemon's user) is refused.
func TestAdminSocketPermissions(t *testing.T) {
	c := newCluster(t, clusterOpts{nodes: 1, size: "16MiB"})
	n := c.nodes[0]
	n.start()
	fi, err := os.Stat(n.admin)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("admin socket mode %o, want 600", perm)
	}
	if os.Geteuid() != 0 {
		return // the refusal of another user needs root to become one
	}
	// Run repctl as nobody: open the socket's directory to it, so only the
	// daemon's own check stands in the way.
	os.Chmod(filepath.Dir(n.c.dir), 0o755)
	os.Chmod(n.c.dir, 0o755)
	os.Chmod(n.admin, 0o666)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bins.ctl, "--admin", n.admin, "status")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("repctl as nobody was served:\n%s", out)
	}
	if code := exitCodeOf(err); code != 4 {
		t.Fatalf("repctl as nobody: exit %d, want 4 (unreachable):\n%s", code, out)
	}
	log, _ := os.ReadFile(n.logPath)
	if !strings.Contains(string(log), "admin connection refused") {
		t.Fatalf("no refusal in the daemon's log")
	}
	// Root still gets in.
	n.mustCtl("status")
}

// TestRepctlVerbs drives connect, disconnect, wait-connect and wait-sync
// against a real two-node cluster and checks exit codes and output.
func TestRepctlVerbs(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	out := p.mustCtl("wait-connect", "--timeout", "10s")
	if !strings.Contains(out, "beta:Connected") {
		t.Fatalf("wait-connect output: %s", out)
	}
	p.mustCtl("disconnect", "beta")
	if st := p.status(); st.Peers[0].Connection != api.StandAlone {
		t.Fatalf("after disconnect: %s", st.Peers[0].Connection)
	}
	// Writes go on while beta is away; they are marked out of sync.
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 7 0 1M", p.uri())
	if st := p.status(); st.Peers[0].OutOfSyncKiB < 1024 {
		t.Fatalf("1 MiB written while disconnected, out-of-sync %d KiB", st.Peers[0].OutOfSyncKiB)
	}
	_, err := p.ctl("wait-sync", "--timeout", "500ms")
	if code := exitCodeOf(err); code != 5 {
		t.Fatalf("wait-sync on a StandAlone peer: exit %d, want 5 (timeout)", code)
	}
	_, err = p.ctl("disconnect", "nosuch")
	if code := exitCodeOf(err); code != 2 {
		t.Fatalf("disconnect of an unknown peer: exit %d, want 2", code)
	}
	_, err = p.ctl("frobnicate")
	if code := exitCodeOf(err); code != 2 {
		t.Fatalf("unknown verb: exit %d", code)
	}
	// Without a peer name, connect and disconnect act on every peer.
	p.mustCtl("connect")
	p.mustCtl("wait-connect", "--timeout", "30s")
	p.mustCtl("disconnect")
	if st := p.status(); st.Peers[0].Connection != api.StandAlone {
		t.Fatalf("after disconnect of all peers: %s", st.Peers[0].Connection)
	}
	p.mustCtl("connect", "beta")
	out = p.mustCtl("wait-sync", "--timeout", "30s")
	if !strings.Contains(out, "in sync") {
		t.Fatalf("wait-sync output: %s", out)
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 7 0 1M", s.uri())
	// Events: the stream starts with the current state.
	ctx := exec.Command(bins.ctl, "--admin", p.admin, "events")
	stdout, _ := ctx.StdoutPipe()
	if err := ctx.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	nr, _ := stdout.Read(buf)
	ctx.Process.Kill()
	ctx.Wait()
	if !strings.Contains(string(buf[:nr]), `"kind":"exists"`) {
		t.Fatalf("events stream starts with %q", buf[:nr])
	}
	// status --watch redraws until interrupted; without a terminal each
	// refresh is a plain block of text.
	watch := exec.Command(bins.ctl, "--admin", p.admin, "status", "--watch", "--interval", "100ms")
	watch.Env = quickExitEnv()
	var wout strings.Builder
	watch.Stdout = &wout
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	watch.Process.Signal(os.Interrupt)
	watch.Wait()
	if k := strings.Count(wout.String(), "r0 role:Primary"); k < 3 {
		t.Fatalf("status --watch printed %d refreshes in 700ms:\n%s", k, wout.String())
	}
	if strings.Contains(wout.String(), "\033[") {
		t.Fatal("colour codes written to a pipe")
	}
	// A daemon that is not there: exit 4.
	_, err = exec.Command(bins.ctl, "--admin", p.admin+".nope", "status").CombinedOutput()
	if code := exitCodeOf(err); code != 4 {
		t.Fatalf("status of a missing daemon: exit %d, want 4", code)
	}
}
