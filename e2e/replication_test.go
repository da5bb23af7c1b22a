package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
)

func fioJSON(t *testing.T, out []byte) (writes, reads int64) {
	t.Helper()
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOs int64 `json:"total_ios"`
			} `json:"write"`
			Read struct {
				IOs int64 `json:"total_ios"`
			} `json:"read"`
		} `json:"jobs"`
	}
	i := bytes.IndexByte(out, '{')
	if i < 0 {
		t.Fatalf("fio printed no JSON:\n%s", out)
	}
	if err := json.Unmarshal(out[i:], &res); err != nil {
		t.Fatalf("fio json: %v\n%s", err, out)
	}
	for _, j := range res.Jobs {
		if j.Error != 0 {
			t.Fatalf("fio job error %d", j.Error)
		}
		writes += j.Write.IOs
		reads += j.Read.IOs
	}
	return
}

func TestReplicatedFioVerifyHashesEqual(t *testing.T) {
	fio := testtool.Require(t, "fio")
	for _, proto := range []string{"C", "A"} {
		t.Run("protocol"+proto, func(t *testing.T) {
			c := newCluster(t, clusterOpts{nodes: 3, size: "64MiB", protocol: proto})
			p := upCluster(t, c)
			out := run(t, 5*time.Minute, fio, "--name=repl", "--ioengine=nbd", "--uri="+p.uri(),
				"--rw=randwrite", "--bssplit=4k/60:16k/30:256k/10", "--numjobs=2", "--size=32M",
				"--offset_increment=32M", "--iodepth=16", "--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1",
				"--group_reporting", "--output-format=json")
			if w, r := fioJSON(t, out); w == 0 || r == 0 {
				t.Fatalf("fio did %d writes and %d verify reads", w, r)
			}
			waitInSync(t, c, 60*time.Second)
			// Stop cleanly so every node's writes are on its disk, then compare.
			for _, n := range c.nodes {
				if err := n.stop(syscall.SIGTERM); err != nil {
					t.Fatalf("stop %s: %v", n.name, err)
				}
			}
			want := hashFile(t, p.disk, 64<<20)
			for _, n := range c.nodes[1:] {
				if got := hashFile(t, n.disk, 64<<20); got != want {
					t.Fatalf("%s's backing file differs from the primary's", n.name)
				}
			}
		})
	}
}

// TestFailoverAfterSIGKILL is reference story 1: fio writes with verify on the
// primary under protocol C; the primary is killed with SIGKILL; the secondary
// is promoted; every write fio saw acknowledged reads back from it.
func TestFailoverAfterSIGKILL(t *testing.T) {
	fio := testtool.Require(t, "fio")
	c := newCluster(t, clusterOpts{nodes: 2, size: "64MiB", protocol: "C"})
	p := upCluster(t, c)
	s := c.nodes[1]
	dir := t.TempDir()
	job := []string{"--name=kill", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--size=64M",
		"--iodepth=8", "--verify=crc32c", "--verify_state_save=1", "--directory=" + dir,
		"--randseed=1234", "--output-format=json"}
	cmd := exec.Command(fio, append(job, "--uri="+p.uri(), "--do_verify=0", "--time_based", "--runtime=60")...)
	cmd.Dir = dir
	var fout bytes.Buffer
	cmd.Stdout = &fout
	cmd.Stderr = &fout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	p.stop(syscall.SIGKILL)
	cmd.Wait() // fio fails: its server died under it; the state file says what was acknowledged
	states, _ := filepath.Glob(filepath.Join(dir, "*verify.state"))
	if len(states) == 0 {
		t.Fatalf("fio saved no verify state:\n%s", fout.Bytes())
	}
	start := time.Now()
	waitFor(t, "beta sees alpha gone", 15*time.Second, func() bool {
		st := s.status()
		return len(st.Peers) == 1 && st.Peers[0].Connection != api.Connected
	})
	s.mustCtl("primary")
	t.Logf("promoted beta %v after alpha's loss was noticed", time.Since(start))
	// fio's verify state counts writes *issued*, minus those still in flight
	// when it saved the state. The writes in flight when alpha died did not
	// stay in flight: they completed with errors (never acknowledged), so
	// the replay expects them too. At most iodepth (8) blocks can be such
	// unacknowledged writes; any more is an acknowledged write lost. (The
	// chaos kill-primary scenario checks the same story with exact
	// per-write acknowledgement tracking.)
	vcmd := exec.Command(fio, append(job, "--uri="+s.uri(), "--verify_only", "--verify_state_load=1", "--verify_fatal=0")...)
	vcmd.Dir = dir
	out, _ := vcmd.CombinedOutput()
	bad := bytes.Count(out, []byte("verify: bad"))
	if bad > 8 {
		t.Fatalf("%d blocks fio saw written are wrong on the new primary (at most 8 were in flight, unacknowledged):\n%s", bad, out)
	}
	i := bytes.IndexByte(out, '{')
	var res struct {
		Jobs []struct {
			Read struct {
				IOs int64 `json:"total_ios"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if i < 0 || json.Unmarshal(out[i:], &res) != nil || len(res.Jobs) == 0 || res.Jobs[0].Read.IOs < 1000 {
		t.Fatalf("fio verified too little:\n%s", out)
	}
	t.Logf("fio verified %d acknowledged blocks on the new primary; %d in-flight blocks at the kill not there", res.Jobs[0].Read.IOs, bad)
	// The old primary comes back as a Secondary and resyncs from beta.
	p.start()
	if st := p.status(); st.Role != api.Secondary {
		t.Fatalf("restarted alpha is %s, want Secondary", st.Role)
	}
	waitInSync(t, c, 60*time.Second)
}

func TestSecondaryRefusesWrites(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x11 0 1M", p.uri())
	out, err := exec.Command(qemuIO, "-f", "raw", "-c", "write -P 0x22 0 4k", s.uri()).CombinedOutput()
	if err == nil && !strings.Contains(string(out), "Operation not permitted") {
		t.Fatalf("write to the secondary was not refused:\n%s", out)
	}
	// Reads are served: its disk is UpToDate.
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x11 0 1M", s.uri())
	// Promote refused while alpha is Primary, with a reason.
	msg, err := s.ctl("primary")
	if err == nil || !strings.Contains(msg, "Primary") {
		t.Fatalf("second primary not refused: %v %s", err, msg)
	}
	if code := exitCodeOf(err); code != 3 {
		t.Fatalf("repctl exit code %d for a refusal, want 3", code)
	}
	// Switch roles: demote alpha, promote beta, write there, read on alpha after demote.
	p.mustCtl("secondary")
	s.mustCtl("primary")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x33 1M 1M", s.uri())
	waitInSync(t, c, 30*time.Second)
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x33 1M 1M", p.uri())
}

func exitCodeOf(err error) int {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return -1
	}
	return ee.ExitCode()
}
