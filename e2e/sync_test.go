package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
)

// Issue 4 story 2: the Primary is SIGKILLed mid-write (fio); the other node
// is promoted and written; the old Primary comes back as Secondary: its
// activity log's hot extents are marked and resync, and the hashes end equal.
func TestCrashedPrimaryResyncsActivityLog(t *testing.T) {
	fio := testtool.Require(t, "fio")
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "64MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, fio, "--name=crash", "--ioengine=nbd", "--uri="+p.uri(), "--rw=randwrite",
		"--bs=64k", "--size=48M", "--time_based", "--runtime=30", "--iodepth=16", "--randseed=11")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fio writing", 20*time.Second, func() bool { return peerCounter(t, p, "beta", "bytes_sent") > 8<<20 })
	p.stop(syscall.SIGKILL)
	cmd.Wait() // fails: its server died
	s.mustCtl("primary")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x44 56M 1M", s.uri())
	p.start()
	waitInSync(t, c, 60*time.Second)
	resynced := resyncedBytes(t, s, "alpha")
	t.Logf("resynced %d bytes to the crashed Primary", resynced)
	if resynced < 1<<20 {
		t.Fatalf("resynced %d bytes; want at least the 1 MiB written meanwhile plus the hot extents", resynced)
	}
	c.terminateAll(t)
	sameDisks(t, p, s, 64<<20, "backing files differ after the crashed Primary resynced")
}

// Issue 4 story 5: a block corrupted behind repd's back on the Secondary is
// found by `repctl verify` (exactly that block) and repaired by the resync
// the Primary starts after the verify.
func TestVerifyFindsCorruptedBlock(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "64MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x61 0 32M", p.uri())
	waitInSync(t, c, 30*time.Second)
	f, err := os.OpenFile(s.disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("corrupt!", 512)), 20<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := s.ctl("verify", "alpha"); err == nil || !strings.Contains(out, "run verify there") {
		t.Fatalf("verify on the Secondary: %v %s", err, out)
	}
	out := p.mustCtl("verify", "--wait", "--timeout", "60s", "beta")
	t.Logf("%s", out)
	if got := peerCounter(t, p, "beta", "verify_mismatches_kib"); got != 4 {
		t.Fatalf("verify found %d KiB different, want the 4 KiB corrupted", got)
	}
	waitInSync(t, c, 30*time.Second)
	c.terminateAll(t)
	sameDisks(t, p, s, 64<<20, "backing files differ after verify and resync")
}

// Issue 4 story 4: both nodes promoted while partitioned and written; on
// reconnect split brain is reported and neither backing file changes until
// the operator resolves it; after --discard-my-data on the victim it
// resyncs from the survivor.
func TestSplitBrainStory(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "64MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	p.mustCtl("disconnect", "beta")
	s.mustCtl("disconnect", "alpha")
	s.mustCtl("primary")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x0a 0 4M", p.uri())
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x0b 8M 2M", s.uri())
	p.mustCtl("secondary")
	s.mustCtl("secondary")
	run(t, 10*time.Second, "sync")
	hp, hs := hashFile(t, p.disk, 64<<20), hashFile(t, s.disk, 64<<20)
	ev := exec.Command(bins.ctl, "--admin", p.admin, "events")
	evOut := &strings.Builder{}
	ev.Stdout = evOut
	if err := ev.Start(); err != nil {
		t.Fatal(err)
	}
	defer ev.Process.Kill()
	p.mustCtl("connect", "beta")
	s.mustCtl("connect", "alpha")
	waitFor(t, "split brain reported", 20*time.Second, func() bool { return splitBrain(t, p, "beta") && splitBrain(t, s, "alpha") })
	time.Sleep(time.Second)
	if hashFile(t, p.disk, 64<<20) != hp || hashFile(t, s.disk, 64<<20) != hs {
		t.Fatal("a backing file changed after split brain was detected")
	}
	ev.Process.Kill()
	ev.Wait()
	if !strings.Contains(evOut.String(), `"kind":"split-brain"`) {
		t.Fatalf("no split-brain event:\n%s", evOut.String())
	}
	// Resolve: beta is the victim.
	s.mustCtl("connect", "--discard-my-data", "alpha")
	p.mustCtl("connect", "beta")
	waitInSync(t, c, 30*time.Second)
	if got := resyncedBytes(t, p, "beta"); got < 6<<20 {
		t.Fatalf("resynced %d bytes to the victim; both sides' 6 MiB of changes must cross", got)
	}
	c.terminateAll(t)
	if h := hashFile(t, s.disk, 64<<20); h != hashFile(t, p.disk, 64<<20) || h != hp {
		t.Fatal("after resolving, the victim does not hold the survivor's data")
	}
}

func splitBrain(t *testing.T, n *node, peer string) bool {
	t.Helper()
	var st struct {
		Peers []struct {
			Name       string `json:"name"`
			SplitBrain bool   `json:"split_brain"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(n.mustCtl("status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.Name == peer {
			return p.SplitBrain
		}
	}
	return false
}
