package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
)

// TestFailoverFailback is reference story 3: promote the DR node, write
// there, bring the old primary back as Secondary, resync only what changed,
// switch roles back; the backing files hash equal.
func TestFailoverFailback(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "64MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x10 0 8M", p.uri())
	// Planned switchover: demote alpha, stop it, promote beta, write there.
	p.mustCtl("secondary")
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.mustCtl("primary")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x20 32M 2M", s.uri())
	// alpha comes back as Secondary and takes only what changed.
	p.start()
	waitInSync(t, c, 60*time.Second)
	st := s.status()
	if st.Role != api.Primary || p.status().Role != api.Secondary {
		t.Fatalf("roles after return: beta %s, alpha %s", st.Role, p.status().Role)
	}
	resynced := resyncedBytes(t, s, "alpha")
	if resynced < 2<<20 || resynced > 3<<20 {
		t.Fatalf("resynced %d bytes to alpha; 2 MiB changed while it was away", resynced)
	}
	// Fail back.
	s.mustCtl("secondary")
	p.mustCtl("primary")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x20 32M 2M", "-c", "read -P 0x10 0 8M", p.uri())
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x30 40M 1M", p.uri())
	waitInSync(t, c, 30*time.Second)
	c.terminateAll(t)
	sameDisks(t, p, s, 64<<20, "backing files differ after failback")
}

// TestPeerOutageResyncsOnlyChanges is reference story 2: the peer is away
// while the primary writes; on reconnect only the marked regions cross the
// wire; afterwards the backing files hash equal.
func TestPeerOutageResyncsOnlyChanges(t *testing.T) {
	fio := testtool.Require(t, "fio")
	c := newCluster(t, clusterOpts{nodes: 2, size: "128MiB"})
	p := upCluster(t, c)
	s := c.nodes[1]
	if err := s.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// 4 MiB of 64k random writes into the first 64 MiB while beta is down.
	run(t, 2*time.Minute, fio, "--name=outage", "--ioengine=nbd", "--uri="+p.uri(), "--rw=randwrite",
		"--bs=64k", "--size=64M", "--io_size=4M", "--iodepth=8", "--randseed=7", "--output-format=json")
	dirty := p.status().Peers[0].OutOfSyncKiB * 1024
	if dirty < 4<<20 || dirty > 4<<20+1<<20 {
		t.Fatalf("out of sync after 4 MiB of writes: %d bytes", dirty)
	}
	sentBefore := peerCounter(t, p, "beta", "bytes_sent")
	s.start()
	waitInSync(t, c, 60*time.Second)
	sent := peerCounter(t, p, "beta", "bytes_sent") - sentBefore
	t.Logf("dirty %d bytes; resync sent %d bytes on the wire", dirty, sent)
	if float64(sent) > 1.1*float64(dirty)+256<<10 {
		t.Fatalf("resync sent %d bytes for %d dirty bytes (limit 1.1x + 256 KiB)", sent, dirty)
	}
	c.terminateAll(t)
	sameDisks(t, p, s, 128<<20, "backing files differ after resync")
}
