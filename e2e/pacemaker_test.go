package e2e

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
)

// The OCF agent under a real Pacemaker and Corosync (Debian's packages): a
// one-node cluster in its own network, mount and PID namespaces
// (scripts/pacemaker-sandbox.sh), so it needs no systemd, leaves nothing on
// the host and dies with the test.

// crmMon is the part of `crm_mon --output-as=xml` the test reads.
type crmMon struct {
	XMLName xml.Name `xml:"pacemaker-result"`
	Summary struct {
		DC struct {
			Present    string `xml:"present,attr"`
			Name       string `xml:"name,attr"`
			WithQuorum string `xml:"with_quorum,attr"`
		} `xml:"current_dc"`
		Options struct {
			StonithEnabled string `xml:"stonith-enabled,attr"`
			NoQuorumPolicy string `xml:"no-quorum-policy,attr"`
		} `xml:"cluster_options"`
	} `xml:"summary"`
	Clones []struct {
		ID        string `xml:"id,attr"`
		MultiSt   string `xml:"multi_state,attr"`
		Failed    string `xml:"failed,attr"`
		Resources []struct {
			ID     string `xml:"id,attr"`
			Agent  string `xml:"resource_agent,attr"`
			Role   string `xml:"role,attr"`
			Active string `xml:"active,attr"`
			Failed string `xml:"failed,attr"`
			Nodes  []struct {
				Name string `xml:"name,attr"`
			} `xml:"node"`
		} `xml:"resource"`
	} `xml:"resources>clone"`
	NodeAttrs []struct {
		Name  string `xml:"name,attr"`
		Attrs []struct {
			Name  string `xml:"name,attr"`
			Value string `xml:"value,attr"`
		} `xml:"attribute"`
	} `xml:"node_attributes>node"`
	History []struct {
		Name      string `xml:"name,attr"`
		Resources []struct {
			ID  string `xml:"id,attr"`
			Ops []struct {
				Task     string `xml:"task,attr"`
				RC       string `xml:"rc,attr"`
				Interval string `xml:"interval,attr"`
			} `xml:"operation_history"`
		} `xml:"resource_history"`
	} `xml:"node_history>node"`
	Failures []struct {
		OpKey    string `xml:"op_key,attr"`
		Node     string `xml:"node,attr"`
		ExitStat string `xml:"exitstatus,attr"`
		ExitRsn  string `xml:"exitreason,attr"`
	} `xml:"failures>failure"`
}

// role is the clone instance's role on node: "Promoted", "Unpromoted",
// "Stopped", or one in passing ("Starting", "Promoting", "Demoting",
// "Stopping"); Pacemaker before 2.1 said "Master" and "Slave". Not the
// active attribute: crm_mon 2.1.5 calls a Demoting instance inactive, and
// its text says "No active resources" while the daemon is still Primary.
func (m *crmMon) role(clone, node string) string {
	for _, c := range m.Clones {
		if c.ID != clone {
			continue
		}
		for _, r := range c.Resources {
			for _, n := range r.Nodes {
				if n.Name == node {
					switch r.Role {
					case "Master":
						return "Promoted"
					case "Slave":
						return "Unpromoted"
					}
					return r.Role
				}
			}
		}
	}
	return "Stopped"
}

// attr is a node attribute ("" when absent).
func (m *crmMon) attr(node, name string) string {
	for _, n := range m.NodeAttrs {
		if n.Name != node {
			continue
		}
		for _, a := range n.Attrs {
			if a.Name == name {
				return a.Value
			}
		}
	}
	return ""
}

// ran: the operation history of rsc on node holds task (with interval
// "" for a one-shot operation) with exit code rc.
func (m *crmMon) ran(node, rsc, task, rc string) bool {
	for _, n := range m.History {
		if n.Name != node {
			continue
		}
		for _, r := range n.Resources {
			if r.ID != rsc {
				continue
			}
			for _, op := range r.Ops {
				if op.Task == task && op.RC == rc {
					return true
				}
			}
		}
	}
	return false
}

// pcmkSandbox is a running scripts/pacemaker-sandbox.sh.
type pcmkSandbox struct {
	t      *testing.T
	script string
	dir    string
	env    []string
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	mu     sync.Mutex
	out    bytes.Buffer
}

// Write collects the sandbox's output (exec.Cmd writes from its own goroutine).
func (s *pcmkSandbox) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *pcmkSandbox) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// startPcmkSandbox starts a one-node cluster whose node is named node, with
// agent installed as ocf:repd:repd, and waits until it has a DC.
func startPcmkSandbox(t *testing.T, agent, node string) *pcmkSandbox {
	t.Helper()
	script, err := filepath.Abs("../scripts/pacemaker-sandbox.sh")
	if err != nil {
		t.Fatal(err)
	}
	s := &pcmkSandbox{t: t, script: script, dir: t.TempDir(), done: make(chan struct{})}
	// Without OCF_* and HA_* of whoever runs the test; the race-built
	// repctl, which the agent runs on every monitor, exits at once.
	s.env = append(filteredEnv(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	s.cmd = exec.Command(script, "start", s.dir, "--agent", agent, "--node", node)
	s.cmd.Env = s.env
	s.cmd.Stdout = s
	s.cmd.Stderr = s
	// The script execs unshare --kill-child: if the test dies, the sandbox's
	// PID 1 dies, and with it every process in the sandbox.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", script, err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.cleanup)

	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(s.dir, "ready")); err == nil {
			break
		}
		select {
		case <-s.done:
			t.Fatalf("the Pacemaker sandbox exited at start (%v):\n%s", s.err, s.output())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Pacemaker sandbox had no DC after 60s:\n%s", s.output())
		}
	}
	return s
}

// exec runs a command inside the sandbox and returns its stdout.
func (s *pcmkSandbox) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.script, append([]string{"exec", s.dir}, args...)...)
	cmd.Env = s.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String(), nil
}

func (s *pcmkSandbox) mustExec(args ...string) string {
	s.t.Helper()
	out, err := s.exec(args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// hide makes a command of /usr/sbin vanish inside the sandbox.
func (s *pcmkSandbox) hide(name string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.script, "hide", s.dir, name)
	cmd.Env = s.env
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("hide %s in the sandbox: %v\n%s", name, err, out)
	}
	if out, err := s.exec("bash", "-c", "command -v "+name); err == nil {
		s.t.Fatalf("%s is still found in the sandbox after hiding it: %s", name, out)
	}
}

// mon is the cluster's state as crm_mon sees it.
func (s *pcmkSandbox) mon() *crmMon {
	s.t.Helper()
	out := s.mustExec("crm_mon", "--one-shot", "--output-as=xml", "--include=attributes")
	var m crmMon
	if err := xml.Unmarshal([]byte(out), &m); err != nil {
		s.t.Fatalf("crm_mon --output-as=xml: %v\n%s", err, out)
	}
	return &m
}

// startNode runs n's repd inside the sandbox's network namespace (where
// the agent's daemon lives), as node.start does outside.
func (s *pcmkSandbox) startNode(n *node) {
	s.t.Helper()
	cmd := exec.Command(s.script, "exec", s.dir, bins.repd, "--config", n.c.conf, "--node", n.name, "--log-level", "debug")
	cmd.Env = s.env
	// n.stop signals nsenter, which does not pass signals on; the daemon
	// itself dies with the sandbox (PID namespace) at the latest.
	n.startWith(cmd)
}

// stop shuts the cluster down the way an operator would (SIGTERM to the
// sandbox: pacemakerd stops the resources, then itself, then corosync) and
// fails the test unless that ends cleanly within 3 minutes.
func (s *pcmkSandbox) stop() {
	s.t.Helper()
	pid, err := s.initPid()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		s.t.Fatalf("signal the sandbox's init (pid %d): %v", pid, err)
	}
	select {
	case <-s.done:
	case <-time.After(3 * time.Minute):
		s.t.Fatalf("the Pacemaker sandbox did not stop within 3 minutes:\n%s", s.output())
	}
	if s.err != nil || !strings.Contains(s.output(), "stopped") {
		s.t.Fatalf("the Pacemaker sandbox did not stop cleanly (%v):\n%s", s.err, s.output())
	}
}

// initPid is the host PID of the sandbox's PID 1: the child of unshare,
// which the script exec'd into.
func (s *pcmkSandbox) initPid() (int, error) {
	upid := s.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", upid, upid))
	if err != nil {
		return 0, fmt.Errorf("the sandbox (pid %d) is gone: %w", upid, err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("the sandbox (pid %d) has no init process", upid)
	}
	return strconv.Atoi(f[0])
}

// cleanup kills what is left and, when the test failed, shows the logs.
func (s *pcmkSandbox) cleanup() {
	select {
	case <-s.done:
	default:
		s.cmd.Process.Kill() // --kill-child takes the sandbox with it
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			s.t.Errorf("the sandbox (pid %d) survived SIGKILL for 30s", s.cmd.Process.Pid)
		}
	}
	if !s.t.Failed() {
		return
	}
	s.t.Logf("--- sandbox output ---\n%s", s.output())
	for _, name := range []string{"pacemaker.log", "corosync.log", "state/alpha.log"} {
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			continue
		}
		if len(b) > 12000 {
			b = b[len(b)-12000:]
		}
		s.t.Logf("--- %s (tail) ---\n%s", name, b)
	}
}

// pollFor is waitFor at a pace fit for crm_mon, which costs a bash, an
// nsenter and a CIB query per call.
func pollFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// xmlAttr escapes s for an XML attribute value.
func xmlAttr(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// hostState lists what a cluster stack would leave on the host: files
// under Pacemaker's and Corosync's state directories and OCF providers.
func hostState(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"/var/lib/pacemaker/cib", "/var/lib/pacemaker/pengine", "/var/lib/corosync", "/usr/lib/ocf/resource.d"} {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	slices.Sort(out)
	return out
}

// TestPacemakerPromotableClone runs ocf:repd:repd as a promotable clone
// under a real one-node Pacemaker and Corosync: Pacemaker starts it, leaves
// an Inconsistent disk unpromoted, promotes it once the agent's monitor
// sets a promotion score (through crm_master), demotes it for a ban on the
// promoted role, sets the score again with crm_master gone (Pacemaker 3's
// way: crm_attribute --promotion), promotes it again when the ban is
// cleared, recovers it when its daemon is killed (restart, promote) and
// stops it; repd's own status follows each step, no operation fails but
// the one caused, and the host is left as it was.
func TestPacemakerPromotableClone(t *testing.T) {
	phase := time.Now()
	step := func(what string) {
		t.Logf("%-40s %v", what, time.Since(phase).Round(time.Millisecond))
		phase = time.Now()
	}
	testtool.RequireRoot(t, "the Pacemaker sandbox (namespaces and mounts)")
	if !strings.Contains(":"+os.Getenv("PATH")+":", ":/usr/sbin:") {
		t.Setenv("PATH", os.Getenv("PATH")+":/usr/sbin:/sbin")
	}
	for _, tool := range []string{"unshare", "nsenter", "ip", "corosync", "corosync-quorumtool", "pacemakerd", "cibadmin", "crm_mon", "crm_resource", "crm_attribute", "crm_node", "crm_verify"} {
		testtool.Require(t, tool)
	}
	const (
		clone = "ms_repd"
		rsc   = "p_repd"
		score = "master-" + rsc // the node attribute crm_master sets
	)
	before := hostState(t)

	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB"})
	alpha, beta := c.nodes[0], c.nodes[1]
	start := time.Now()
	phase = start
	sb := startPcmkSandbox(t, ocfAgentPath(t), alpha.name)
	step("one-node cluster up with a DC")
	m := sb.mon()
	if m.Summary.DC.Name != alpha.name || m.Summary.DC.WithQuorum != "true" {
		t.Fatalf("DC %q with quorum %q, want %s with quorum", m.Summary.DC.Name, m.Summary.DC.WithQuorum, alpha.name)
	}
	if m.Summary.Options.StonithEnabled != "false" {
		t.Fatalf("stonith-enabled is %q in the sandbox's CIB", m.Summary.Options.StonithEnabled)
	}
	if got := strings.TrimSpace(sb.mustExec("crm_resource", "--list-agents", "ocf:repd")); got != "repd" {
		t.Fatalf("crm_resource --list-agents ocf:repd: %q, want repd", got)
	}

	// beta runs beside the cluster (its Pacemaker node is not part of this
	// test); alpha is Pacemaker's.
	sb.startNode(beta)

	// The agent's node parameter is left to its default, crm_node -n: the
	// cluster node is named alpha like the repd node.
	statedir := filepath.Join(sb.dir, "state")
	cloneXML := fmt.Sprintf(`<clone id="%[1]s">
  <meta_attributes id="%[1]s-meta">
    <nvpair id="%[1]s-promotable" name="promotable" value="true"/>
    <nvpair id="%[1]s-promoted-max" name="promoted-max" value="1"/>
    <nvpair id="%[1]s-promoted-node-max" name="promoted-node-max" value="1"/>
    <nvpair id="%[1]s-clone-max" name="clone-max" value="1"/>
    <nvpair id="%[1]s-clone-node-max" name="clone-node-max" value="1"/>
    <nvpair id="%[1]s-notify" name="notify" value="true"/>
  </meta_attributes>
  <primitive id="%[2]s" class="ocf" provider="repd" type="repd">
    <instance_attributes id="%[2]s-params">
      <nvpair id="%[2]s-config" name="config" value="%[3]s"/>
      <nvpair id="%[2]s-repd_bin" name="repd_bin" value="%[4]s"/>
      <nvpair id="%[2]s-repctl_bin" name="repctl_bin" value="%[5]s"/>
      <nvpair id="%[2]s-statedir" name="statedir" value="%[6]s"/>
      <nvpair id="%[2]s-log_level" name="log_level" value="debug"/>
    </instance_attributes>
    <operations>
      <op id="%[2]s-monitor-promoted" name="monitor" interval="2s" role="Promoted" timeout="20s"/>
      <op id="%[2]s-monitor-unpromoted" name="monitor" interval="1s" role="Unpromoted" timeout="20s"/>
      <op id="%[2]s-start" name="start" interval="0s" timeout="60s"/>
      <op id="%[2]s-stop" name="stop" interval="0s" timeout="100s"/>
      <op id="%[2]s-promote" name="promote" interval="0s" timeout="90s"/>
      <op id="%[2]s-demote" name="demote" interval="0s" timeout="90s"/>
    </operations>
  </primitive>
</clone>`, clone, rsc, xmlAttr(c.conf), xmlAttr(bins.repd), xmlAttr(bins.ctl), xmlAttr(statedir))
	sb.mustExec("cibadmin", "--create", "--scope", "resources", "--xml-text", cloneXML)
	sb.mustExec("crm_verify", "--live-check")

	// Started, and not promoted: both disks are brand new (Inconsistent), so
	// the agent sets no promotion score.
	pollFor(t, "Pacemaker to start the clone and monitor it", 60*time.Second, func() bool {
		m := sb.mon()
		return m.role(clone, alpha.name) == "Unpromoted" && m.ran(alpha.name, rsc, "monitor", "0")
	})
	step("started, unpromoted")
	waitFor(t, "alpha and beta Connected", 60*time.Second, func() bool {
		s := alpha.status()
		return len(s.Peers) == 1 && s.Peers[0].Connection == api.Connected
	})
	time.Sleep(2 * time.Second) // a few more monitors: none may promote
	m = sb.mon()
	if r := m.role(clone, alpha.name); r != "Unpromoted" {
		t.Fatalf("Pacemaker made an Inconsistent disk %s", r)
	}
	if v := m.attr(alpha.name, score); v != "" {
		t.Fatalf("promotion score %s=%s for an Inconsistent disk", score, v)
	}
	if s := alpha.status(); s.Role != api.Secondary || s.Disk != "Inconsistent" {
		t.Fatalf("alpha is %s/%s before the first promote, want Secondary/Inconsistent", s.Role, s.Disk)
	}

	// The one manual step of a new resource; then the agent's monitor sets
	// the score and Pacemaker promotes.
	alpha.mustCtl("new-current-uuid", "--clear-bitmap")
	// Promoted, and the promoted role's monitor says so (rc 8).
	pollFor(t, "Pacemaker to promote alpha", 60*time.Second, func() bool {
		m := sb.mon()
		return m.role(clone, alpha.name) == "Promoted" && m.ran(alpha.name, rsc, "monitor", "8")
	})
	step("promoted")
	m = sb.mon()
	if v := m.attr(alpha.name, score); v != "10000" {
		t.Errorf("promotion score %s=%q, want 10000 (UpToDate, peer connected)", score, v)
	}
	if s := alpha.status(); s.Role != api.Primary || s.Disk != "UpToDate" {
		t.Fatalf("Pacemaker says Promoted but repd says %s/%s", s.Role, s.Disk)
	}
	waitFor(t, "beta to see alpha Primary", 30*time.Second, func() bool {
		s := beta.status()
		return len(s.Peers) == 1 && s.Peers[0].Role == "Primary"
	})

	// Demote: a ban on the promoted role.
	sb.mustExec("crm_resource", "--ban", "--promoted", "--resource", clone, "--node", alpha.name)
	pollFor(t, "Pacemaker to demote alpha", 60*time.Second, func() bool {
		m := sb.mon()
		return m.role(clone, alpha.name) == "Unpromoted" && m.ran(alpha.name, rsc, "demote", "0")
	})
	step("demoted (ban)")
	if s := alpha.status(); s.Role != api.Secondary {
		t.Fatalf("Pacemaker demoted alpha but repd says %s", s.Role)
	}
	// Pacemaker 3 has no crm_master; the agent then sets its score with
	// crm_attribute --promotion. Hide crm_master inside the sandbox, let any
	// monitor that still saw it finish, drop the score: it must come back,
	// set by that other path.
	sb.hide("crm_master")
	time.Sleep(2500 * time.Millisecond) // > 2 unpromoted monitor intervals
	sb.mustExec("crm_attribute", "--node", alpha.name, "--name", score, "--lifetime", "reboot", "--delete")
	pollFor(t, "the agent to set the score again without crm_master", 30*time.Second, func() bool {
		return sb.mon().attr(alpha.name, score) == "10000"
	})
	step("score set without crm_master")

	// And back.
	sb.mustExec("crm_resource", "--clear", "--resource", clone)
	pollFor(t, "Pacemaker to promote alpha again", 60*time.Second, func() bool {
		return sb.mon().role(clone, alpha.name) == "Promoted"
	})
	step("promoted again (clear)")
	if s := alpha.status(); s.Role != api.Primary {
		t.Fatalf("Pacemaker promoted alpha again but repd says %s", s.Role)
	}

	// The Primary's daemon dies: the promoted monitor finds it not running,
	// Pacemaker records the failure, starts the daemon again and, once the
	// monitor sets the score (alpha comes back UpToDate and reconnects to
	// beta), promotes it again. Then the operator cleans the failure up.
	pidfile := filepath.Join(statedir, alpha.name+".pid")
	pidb, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("the agent's pid file: %v", err)
	}
	nspid := strings.TrimSpace(string(pidb)) // a PID in the sandbox's namespace
	sb.mustExec("kill", "-KILL", nspid)
	pollFor(t, "Pacemaker to notice the dead daemon", 60*time.Second, func() bool {
		return len(sb.mon().Failures) > 0
	})
	pollFor(t, "Pacemaker to restart and promote alpha (a new daemon in the pid file, Promoted, a promoted monitor)", 90*time.Second, func() bool {
		// crm_mon may still show the role and the monitor result from
		// before the kill once the failure is recorded: the restart is
		// the agent's new pid file and a daemon that answers.
		b, err := os.ReadFile(pidfile)
		if pid := strings.TrimSpace(string(b)); err != nil || pid == "" || pid == nspid {
			return false
		}
		if st, err := alpha.h.Status(context.Background()); err != nil || st.Role != api.Primary {
			return false
		}
		m := sb.mon()
		return m.role(clone, alpha.name) == "Promoted" && m.ran(alpha.name, rsc, "monitor", "8")
	})
	step("recovered from a killed daemon")
	if s := alpha.status(); s.Role != api.Primary || s.Disk != "UpToDate" {
		t.Fatalf("Pacemaker recovered alpha as Promoted but repd says %s/%s", s.Role, s.Disk)
	}
	// The failure Pacemaker shows says what happened (the agent's exit
	// reason), whichever operation recorded it last.
	fails := sb.mon().Failures
	explained := false
	for _, f := range fails {
		t.Logf("failure Pacemaker recorded: %s on %s: %s (%s)", f.OpKey, f.Node, f.ExitStat, f.ExitRsn)
		explained = explained || strings.Contains(f.ExitRsn, "repd for alpha is not running")
	}
	if !explained {
		t.Errorf("no failure Pacemaker recorded gives the agent's reason (repd not running): %+v", fails)
	}
	sb.mustExec("crm_resource", "--cleanup", "--resource", clone)
	pollFor(t, "the failure to be cleaned up", 60*time.Second, func() bool {
		m := sb.mon()
		return len(m.Failures) == 0 && m.role(clone, alpha.name) == "Promoted"
	})

	// Stop: Pacemaker demotes, then stops; the daemon exits cleanly.
	sb.mustExec("crm_resource", "--resource", clone, "--meta", "--set-parameter", "target-role", "--parameter-value", "Stopped")
	pollFor(t, "Pacemaker to stop the clone", 90*time.Second, func() bool {
		m := sb.mon()
		return m.role(clone, alpha.name) == "Stopped" && m.ran(alpha.name, rsc, "stop", "0")
	})
	step("stopped")
	if out, err := alpha.ctl("status", "--json"); err == nil {
		t.Fatalf("alpha's repd still answers after Pacemaker stopped it:\n%s", out)
	}
	if b, err := os.ReadFile(filepath.Join(statedir, alpha.name+".log")); err != nil || !strings.Contains(string(b), "stopped cleanly") {
		t.Errorf("alpha's log (the agent's logfile) does not show a clean stop (err %v)", err)
	}
	waitFor(t, "beta to see alpha gone", 30*time.Second, func() bool {
		s := beta.status()
		return len(s.Peers) == 1 && s.Peers[0].Connection != api.Connected
	})
	m = sb.mon()
	if v := m.attr(alpha.name, score); v != "" {
		t.Errorf("promotion score %s=%s left after stop", score, v)
	}
	if len(m.Failures) > 0 {
		t.Errorf("Pacemaker recorded failed operations: %+v", m.Failures)
	}

	sb.stop()
	step("cluster shut down")
	t.Logf("whole cluster story in %v", time.Since(start).Round(time.Millisecond))
	if after := hostState(t); !slices.Equal(before, after) {
		t.Errorf("the sandbox changed the host:\nbefore %v\nafter  %v", before, after)
	}
}
