package replica

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"

	"github.com/repd/repd/bitmap"
)

// bootstrapHot bootstraps the cluster with node 0 Primary and writes
// 64 KiB into each of 4 activity-log extents (at 0, 5, 10 and 15 MiB),
// replicated: 16 MiB of hot extents on every node.
func (c *cluster) bootstrapHot() {
	c.t.Helper()
	alpha := c.bootstrap()
	data := bytes.Repeat([]byte{0xAB}, 64<<10)
	for i := range 4 {
		if err := alpha.WriteAt(context.Background(), data, int64(i)*(5<<20), false); err != nil {
			c.t.Fatal(err)
		}
	}
	c.waitSynced(5 * time.Second)
}

// crash drops a node without Close: its goroutines stop and its files are
// closed, but neither the crash flag nor the activity log is touched.
func (c *cluster) crash(tn *tnode) {
	n := tn.n
	tn.cancel()
	<-tn.done
	n.meta.Close()
	n.st.Close()
	tn.n = nil
}

func TestCrashedPrimaryMarksHotExtents(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.bootstrapHot()
	// Crash alpha, and change its disk behind its back in a hot extent
	// (a write that reached alpha's disk, not beta's).
	c.crash(c.nodes[0])
	sb, err := bitmap.ReadSuperblock(c.nodes[0].cfg.MetaPath)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Flags&bitmap.FlagPrimary == 0 {
		t.Fatal("crash flag not set on a crashed Primary")
	}
	f, err := os.OpenFile(c.nodes[0].path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xCD}, 4096), 5<<20)
	f.Close()
	c.start(c.nodes[0])
	alpha := c.nodes[0].n
	ps := peerState(alpha, "beta")
	if ps.OutOfSyncKiB < 4*4096 {
		t.Fatalf("after a crash as Primary, %d KiB out of sync; want the 4 hot extents (16 MiB)", ps.OutOfSyncKiB)
	}
	t.Logf("crashed primary reopened: %d KiB marked from the activity log", ps.OutOfSyncKiB)
	// beta is promoted meanwhile (failover), alpha comes back as
	// Secondary: the marked extents resync from beta.
	beta := c.nodes[1].n
	// Wait for the new session: beta may not have noticed the crash yet and
	// still see the old connection to a Primary alpha.
	waitFor(t, 10*time.Second, "alpha and beta connected, alpha Secondary", func() bool {
		ps := peerState(beta, "alpha")
		return ps.Connection == api.Connected && ps.Role == api.Secondary.String()
	})
	if err := beta.Promote(false); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(20 * time.Second)
	c.assertEqualStores()
	// A clean Close clears the flag and the activity log: nothing marked.
	c.stop(c.nodes[1])
	c.stop(c.nodes[0])
	for _, tn := range c.nodes {
		sb, err := bitmap.ReadSuperblock(tn.cfg.MetaPath)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Flags&bitmap.FlagPrimary != 0 {
			t.Fatalf("%s: crash flag set after a clean Close", tn.cfg.Self.Name)
		}
	}
	c.start(c.nodes[1])
	if ps := peerState(c.nodes[1].n, "alpha"); ps.OutOfSyncKiB != 0 {
		t.Fatalf("after a clean Close of the Primary, %d KiB out of sync", ps.OutOfSyncKiB)
	}
	waitFor(t, 5*time.Second, "Run started", func() bool { return c.nodes[1].n.running.Load() })
}

// Checksum-based resync of identical data sends (almost) nothing; a block
// that differs is found and sent.
func TestCSumsResync(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.CSums = true })
	alpha := c.bootstrap()
	ctx := context.Background()
	r := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB, not zero
	for off := int64(0); off < testSize; off += int64(len(r)) {
		if err := alpha.WriteAt(ctx, r, off, false); err != nil {
			t.Fatal(err)
		}
	}
	c.waitSynced(10 * time.Second)
	// Change one block on beta behind repd's back, then a full resync.
	c.stop(c.nodes[1])
	f, err := os.OpenFile(c.nodes[1].path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xEE}, 4096), 3<<20)
	f.Close()
	c.start(c.nodes[1])
	c.waitConnected(10 * time.Second)
	sentBefore := peerState(alpha, "beta").BytesSent
	if err := alpha.InvalidateRemote("beta"); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(20 * time.Second)
	ps := peerState(alpha, "beta")
	sent := ps.BytesSent - sentBefore
	t.Logf("checksum resync of %d bytes: %d bytes sent, %d found equal, %d resynced", testSize, sent, ps.CSumsEqualBytes, ps.ResyncedBytes)
	if sent > testSize/100 {
		t.Fatalf("checksum resync of identical data sent %d bytes (>1%% of %d)", sent, testSize)
	}
	if ps.CSumsEqualBytes != testSize-4096 {
		t.Fatalf("csums found %d bytes equal, want %d", ps.CSumsEqualBytes, testSize-4096)
	}
	c.assertEqualStores()
}

// Online verify finds exactly a block corrupted behind repd's back, while
// the Primary keeps writing elsewhere and to the same region, and the
// Primary repairs it at once.
func TestVerifyFindsCorruption(t *testing.T) {
	c := newCluster(t, 2, nil)
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	if err := beta.Verify("alpha"); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "run verify there") {
		t.Fatalf("verify on a Secondary of a Primary: %v", err)
	}
	if err := alpha.Verify("nobody"); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("verify toward an unknown peer: %v", err)
	}
	// Corrupt one block on beta's disk (repd reads with pread: no cache).
	f, err := os.OpenFile(c.nodes[1].path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0x5A}, 4096), 7<<20)
	f.Close()
	// A loaded machine may still be settling the connection.
	waitFor(t, 10*time.Second, "alpha sees beta UpToDate", func() bool {
		ps := peerState(alpha, "beta")
		return ps.Disk == "UpToDate" && ps.Replication == api.Established
	})
	// Writes race the verify, also into the blocks around the bad one.
	stop := make(chan struct{})
	done := make(chan int, 2)
	go func() { done <- writer(t, alpha, c.seed, 6<<20, 7<<20, stop, nil) }()
	go func() { done <- writer(t, alpha, c.seed+1, 7<<20+64<<10, 8<<20, stop, nil) }()
	if err := alpha.Verify("beta"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "verify finished", func() bool {
		r := peerState(alpha, "beta").Replication
		return r != api.VerifySource
	})
	close(stop)
	t.Logf("%d writes during the verify", <-done+<-done)
	ps := peerState(alpha, "beta")
	if ps.VerifyMismatchKiB != 4 {
		t.Fatalf("verify found %d KiB different, want exactly the 4 KiB corrupted", ps.VerifyMismatchKiB)
	}
	if ps2 := peerState(beta, "alpha"); ps2.VerifyMismatchKiB != 4 {
		t.Fatalf("verify target counted %d KiB different", ps2.VerifyMismatchKiB)
	}
	c.waitSynced(20 * time.Second)
	c.assertEqualStores()
}

// invalidate, pause-sync and resume-sync, and their refusals.
func TestInvalidatePauseResume(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.ResyncRate = 16 << 20 })
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	ctx := context.Background()
	if err := alpha.Invalidate(""); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "Primary") {
		t.Fatalf("invalidate on a Primary: %v", err)
	}
	if err := alpha.WriteAt(ctx, bytes.Repeat([]byte{7}, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	// beta throws its copy away and syncs all 16 MiB at 16 MiB/s.
	if err := beta.Invalidate("alpha"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "alpha SyncSource", func() bool { return peerState(alpha, "beta").Replication == api.SyncSource })
	if err := alpha.PauseSync("beta"); err != nil {
		t.Fatal(err)
	}
	ps := peerState(alpha, "beta")
	if ps.Replication != api.PausedSync || !ps.SyncPausedByUser || ps.SyncLeftBytes == 0 {
		t.Fatalf("after pause-sync: %+v", ps)
	}
	waitFor(t, 5*time.Second, "beta sees the pause", func() bool { return peerState(beta, "alpha").Replication == api.PausedSync })
	left := peerState(alpha, "beta").OutOfSyncKiB
	time.Sleep(300 * time.Millisecond)
	if now := peerState(alpha, "beta").OutOfSyncKiB; now != left {
		t.Fatalf("resync went on while paused: %d -> %d KiB", left, now)
	}
	if err := alpha.ResumeSync("beta"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "progress reported", func() bool {
		ps := peerState(alpha, "beta")
		return ps.SyncPercent != nil && ps.SyncRateBytesPerSec > 0 || ps.Replication == api.Established
	})
	c.waitSynced(20 * time.Second)
	c.assertEqualStores()
	// Refusals: verify toward a disconnected peer.
	if err := alpha.Disconnect("beta"); err != nil {
		t.Fatal(err)
	}
	if err := alpha.Verify("beta"); err == nil || err.Error() != "refused: peer beta is not connected" {
		t.Fatalf("verify of a disconnected peer: %v", err)
	}
	if err := alpha.InvalidateRemote("beta"); !errors.Is(err, ErrRefused) {
		t.Fatalf("invalidate-remote of a disconnected peer: %v", err)
	}
}

// rewriteWhileAway disconnects peer and overwrites n's whole device in
// 1 MiB writes (each MiB its own byte, marked with mark), so the peer's
// next connection resyncs all of it.
func rewriteWhileAway(t *testing.T, n *Node, peer string, mark byte) {
	t.Helper()
	n.Disconnect(peer)
	for off := int64(0); off < testSize; off += 1 << 20 {
		if err := n.WriteAt(context.Background(), bytes.Repeat([]byte{byte(off>>20) | mark}, 1<<20), off, false); err != nil {
			t.Fatal(err)
		}
	}
}

// A resync larger than one shipper batch (4 MiB) runs back to back: the
// shipper goes round again while ready entries wait, instead of sleeping
// until its keepalive tick (here Timeout/8 = 5 s) — found by the sync
// bench, where 100 MiB took 250–750 ms instead of ~100 ms.
func TestResyncDoesNotWaitForTick(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.Timeout = 40 * time.Second })
	alpha := c.bootstrap()
	rewriteWhileAway(t, alpha, "beta", 1)
	start := time.Now()
	if err := alpha.Connect("beta", false); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(30 * time.Second)
	// 16 MiB in 1 MiB entries is at least four batches; one tick alone
	// would take 5 s.
	if d := syncDuration(c.nodes[0].events, "beta", start); d > 4*time.Second {
		t.Fatalf("resync of %d MiB took %v: the shipper waited for its tick", testSize>>20, d)
	}
	c.assertEqualStores()
}

// A resync waiting for journal room stops when its session ends, although
// no write completes to free room: the daemon's shutdown (Run's context
// ends, then Close) during a resync over a slow link, with the journal's
// resync half full, returns promptly, and after a restart the resync
// finishes. It hung: the session's teardown waited for the resync
// goroutine, which waited for room only that teardown would free.
func TestResyncWaitingForRoomStopsWithSession(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) {
		cfg.Protocol = api.ProtocolA
		cfg.JournalBytes = 2 << 20
		cfg.Timeout = 30 * time.Second
	})
	alpha := c.bootstrap()
	rewriteWhileAway(t, alpha, "beta", 3)
	c.proxy(0, 1).SetLink(faultnet.Link{Bandwidth: 256 << 10}, faultnet.Link{})
	if err := alpha.Connect("beta", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "resync under way", func() bool { return peerState(alpha, "beta").Replication == api.SyncSource })
	time.Sleep(500 * time.Millisecond) // the journal's resync half fills
	tn := c.nodes[0]
	tn.cancel() // as repd does on SIGTERM: Run's context first, then Close
	select {
	case <-tn.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return: a resync waiting for journal room held its session")
	}
	c.stop(tn)
	c.proxy(0, 1).SetLink(faultnet.Link{}, faultnet.Link{})
	c.start(tn)
	// Between two Secondaries the resync waits for a Primary.
	if err := tn.n.Promote(false); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(20 * time.Second)
	c.assertEqualStores()
}

// new-current-uuid --clear-bitmap right after a connection: the peer's
// State from the connect, still on its way, says Inconsistent; the peer
// then adopts the new UUID and must say so again, or this node keeps
// believing the peer Inconsistent.
func TestNewUUIDPeerDiskConverges(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.waitConnected(10 * time.Second)
	// Reconnect with beta → alpha slow, so that beta's State from the
	// connect arrives after alpha started the new UUID.
	px := c.proxy(0, 1)
	alpha, beta := c.nodes[0].n, c.nodes[1].n
	before := peerState(alpha, "beta").Connects
	px.SetLink(faultnet.Link{}, faultnet.Link{Delay: 300 * time.Millisecond})
	px.CutAll()
	waitFor(t, 10*time.Second, "alpha connected to beta again", func() bool {
		ps := peerState(alpha, "beta")
		return ps.Connects > before && ps.Connection == api.Connected
	})
	if err := alpha.NewCurrentUUID(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "beta UpToDate", func() bool { return beta.Status().Disk == "UpToDate" })
	// Beta's older State lands within the link's delay.
	time.Sleep(time.Second)
	waitFor(t, 3*time.Second, "alpha sees beta UpToDate", func() bool {
		return peerState(alpha, "beta").Disk == "UpToDate"
	})
}

// A Secondary acknowledges a replicated write once it is in its page cache.
// Should its system go down (a power loss) before the disk took the write,
// the write is gone there and nothing else records it: the Primary's
// bitmap marks only what the Secondary did not acknowledge. The Secondary
// keeps an activity log like the Primary's, and after a restart of its
// system it marks the hot extents out of sync and its disk Outdated until
// the Primary resyncs them. A crash of the process alone (same boot) keeps
// the page cache and marks nothing.
func TestSecondaryPowerLossResyncsHotExtents(t *testing.T) {
	boots := [2][16]byte{{1: 1}, {1: 2}}
	c := newCluster(t, 2, func(i int, cfg *Config) {
		cfg.bootID = func() [16]byte { return boots[i] }
	})
	c.bootstrapHot()

	// The process alone crashes and comes back on the same boot: the
	// page cache kept everything, nothing is marked.
	c.crash(c.nodes[1])
	c.isolate(1, true)
	c.start(c.nodes[1])
	beta := c.nodes[1].n
	if ps := peerState(beta, "alpha"); ps.OutOfSyncKiB != 0 || beta.Status().Disk != "UpToDate" {
		t.Fatalf("after a crash of the process alone: %d KiB out of sync toward alpha, disk %s; want 0, UpToDate", ps.OutOfSyncKiB, beta.Status().Disk)
	}
	c.isolate(1, false)
	c.waitSynced(10 * time.Second)

	// Now its system goes down: the write into the second extent never
	// reached beta's disk (its old content, zeroes, is back).
	c.crash(c.nodes[1])
	f, err := os.OpenFile(c.nodes[1].path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 5<<20+8192); err != nil {
		t.Fatal(err)
	}
	f.Close()
	boots[1] = [16]byte{1: 3}
	c.isolate(1, true)
	c.start(c.nodes[1])
	beta = c.nodes[1].n
	st := beta.Status()
	if ps := peerState(beta, "alpha"); ps.OutOfSyncKiB < 4*4096 || st.Disk != "Outdated" {
		t.Fatalf("after a power loss of the Secondary: %d KiB out of sync toward alpha, disk %s; want the 4 hot extents (16 MiB), Outdated", ps.OutOfSyncKiB, st.Disk)
	}
	if err := beta.Promote(false); err == nil {
		t.Fatal("an Outdated node that may have lost acknowledged writes was promoted without --force")
	}
	c.isolate(1, false)
	c.waitSynced(20 * time.Second)
	c.assertEqualStores()
	if d := c.nodes[1].n.Status().Disk; d != "UpToDate" {
		t.Fatalf("after the resync beta's disk is %s, want UpToDate", d)
	}
}
