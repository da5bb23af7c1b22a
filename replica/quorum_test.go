package replica

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
	"github.com/repd/repd/faultnet"
)

// quorumCluster builds k nodes with quorum majority; the nodes listed in
// witnesses are witnesses. mod adjusts each node's configuration after.
func quorumCluster(t *testing.T, k int, witnesses []int, mod func(i int, cfg *Config)) *cluster {
	t.Helper()
	isWitness := func(name string) bool {
		for _, w := range witnesses {
			if names[w] == name {
				return true
			}
		}
		return false
	}
	return newCluster(t, k, func(i int, cfg *Config) {
		cfg.Quorum = k/2 + 1
		cfg.Self.Witness = isWitness(cfg.Self.Name)
		for j := range cfg.Peers {
			cfg.Peers[j].Witness = isWitness(cfg.Peers[j].Name)
		}
		if mod != nil {
			mod(i, cfg)
		}
	})
}

// ackedWrites records what a writer saw acknowledged, to check later that
// none is lost.
type ackedWrites struct {
	mu   sync.Mutex
	data map[int64][]byte // the last acknowledged content of each block
}

func (a *ackedWrites) write(t *testing.T, n *Node, ctx context.Context, off int64, b byte) error {
	data := bytes.Repeat([]byte{b}, 4096)
	err := n.WriteAt(ctx, data, off, false)
	if err == nil {
		a.mu.Lock()
		if a.data == nil {
			a.data = map[int64][]byte{}
		}
		a.data[off] = data
		a.mu.Unlock()
	}
	return err
}

// assertNoSplitBrain fails if any of nodes reports split brain with a peer.
func assertNoSplitBrain(t *testing.T, nodes []*tnode) {
	t.Helper()
	for _, tn := range nodes {
		for _, p := range tn.n.Status().Peers {
			if p.SplitBrain {
				t.Fatalf("%s reports split brain with %s", tn.cfg.Self.Name, p.Name)
			}
		}
	}
}

// check asserts every acknowledged write is on the node's disk.
func (a *ackedWrites) check(t *testing.T, tn *tnode) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for off, want := range a.data {
		if got := readFileAt(t, tn.path, off, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("%s lacks the write acknowledged at %d (has %x..., want %x...)", tn.cfg.Self.Name, off, got[:4], want[:4])
		}
	}
}

// witnessCluster is two data nodes and a witness, auto-promote (mod
// adjusts each configuration further), once the election made alpha
// Primary on fresh data.
func witnessCluster(t *testing.T, mod func(i int, cfg *Config)) (c *cluster, alpha, beta *Node) {
	t.Helper()
	c = quorumCluster(t, 3, []int{2}, func(i int, cfg *Config) {
		cfg.AutoPromote = true
		if mod != nil {
			mod(i, cfg)
		}
	})
	c.waitConnected(10 * time.Second)
	alpha, beta = c.nodes[0].n, c.nodes[1].n
	if err := alpha.NewCurrentUUID(true); err != nil {
		t.Fatal(err)
	}
	// The election promotes one data node (the lower id: same data,
	// same priority).
	waitFor(t, 15*time.Second, "alpha elected", func() bool { return alpha.Status().Role == api.Primary })
	return c, alpha, beta
}

// Two data nodes and a witness, auto-promote: the Primary is cut off from
// both. Its writes stop being acknowledged (they hang: suspend-io) before
// the other data node is elected Primary; once the partition heals the old
// Primary learns it was replaced, fails the suspended write with EIO,
// steps down and resyncs, and no node reports split brain. Every write
// acknowledged anywhere is on the new Primary.
func TestQuorumWitnessFailover(t *testing.T) {
	c, alpha, beta := witnessCluster(t, nil)
	if s := beta.Status(); s.Role != api.Secondary || !s.Quorum || s.Votes != 3 {
		t.Fatalf("beta: %+v", s)
	}
	var acked ackedWrites
	ctx := context.Background()
	for i := range 20 {
		if err := acked.write(t, alpha, ctx, int64(i)*4096, byte(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if s := alpha.Status(); s.Lease != "held" || !s.Quorum {
		t.Fatalf("alpha: lease %q quorum %v", s.Lease, s.Quorum)
	}

	cut := time.Now()
	c.isolate(0, true)
	done := make(chan error, 1)
	go func() {
		// Issued after the cut: beta cannot have it, so it must not be
		// acknowledged.
		done <- acked.write(t, alpha, ctx, 100*4096, 0xAA)
	}()
	waitFor(t, 15*time.Second, "beta elected", func() bool { return beta.Status().Role == api.Primary })
	elected := time.Since(cut)
	select {
	case err := <-done:
		t.Fatalf("alpha's write completed while it was cut off: %v", err)
	default:
	}
	if s := alpha.Status(); s.Lease != "expired" || s.SuspendedIO == 0 {
		t.Fatalf("alpha cut off: lease %q, %d suspended", s.Lease, s.SuspendedIO)
	}
	if err := acked.write(t, beta, ctx, 200*4096, 0xBB); err != nil {
		t.Fatal(err)
	}
	t.Logf("beta elected %v after the cut; %s", elected.Round(time.Millisecond), beta.Status().LastElection)

	c.isolate(0, false)
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "became Primary") {
			t.Fatalf("the suspended write on the replaced Primary: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the suspended write did not fail after the partition healed")
	}
	c.waitSynced(20 * time.Second)
	if alpha.Status().Role != api.Secondary {
		t.Fatal("alpha is still Primary")
	}
	assertNoSplitBrain(t, c.nodes)
	acked.check(t, c.nodes[1])
	acked.check(t, c.nodes[0])
	c.assertEqualStores()
}

// With on-no-quorum io-error a Primary cut off fails writes with EIO once
// its lease is over, instead of suspending them; quorum back, writes work.
func TestQuorumIOError(t *testing.T) {
	c := quorumCluster(t, 3, nil, func(i int, cfg *Config) { cfg.OnNoQuorum = config.NoQuorumIOError })
	alpha := c.bootstrap()
	ctx := context.Background()
	if err := alpha.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	c.isolate(0, true)
	var err error
	waitFor(t, 10*time.Second, "a write fails with EIO", func() bool {
		err = alpha.WriteAt(ctx, make([]byte, 4096), 4096, false)
		return err != nil
	})
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "io-error") {
		t.Fatalf("write without quorum: %v", err)
	}
	if err := alpha.Flush(ctx); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush without quorum: %v", err)
	}
	c.isolate(0, false)
	waitFor(t, 15*time.Second, "writes work again", func() bool {
		return alpha.WriteAt(ctx, make([]byte, 4096), 8192, false) == nil
	})
}

// Without auto-promote nobody replaces a cut-off Primary: its suspended
// write completes once the partition heals, with quorum.
func TestQuorumSuspendedWriteCompletes(t *testing.T) {
	c := quorumCluster(t, 3, nil, nil)
	alpha := c.bootstrap()
	ctx := context.Background()
	c.isolate(0, true)
	waitFor(t, 10*time.Second, "alpha's lease expired", func() bool { return alpha.Status().Lease == "expired" })
	done := make(chan error, 1)
	go func() { done <- alpha.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, false) }()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("a write completed without quorum: %v", err)
	default:
	}
	if n := alpha.Status().SuspendedIO; n != 1 {
		t.Fatalf("%d suspended, want 1", n)
	}
	c.isolate(0, false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the suspended write failed: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the suspended write did not complete once quorum returned")
	}
	c.waitSynced(20 * time.Second)
	c.assertEqualStores()
}

// A Secondary cut off from the Primary misses writes the Primary goes on
// acknowledging with the witness's vote; when the Primary is then lost, the
// witness refuses to elect the node that lacks them (no acknowledged write
// is lost: the resource waits for the old Primary instead), and manual
// promotion without --force is refused for lack of quorum.
func TestQuorumOutdatedNodeNotElected(t *testing.T) {
	c, alpha, beta := witnessCluster(t, nil)
	var acked ackedWrites
	ctx := context.Background()
	c.proxy(0, 1).Partition(true) // alpha and beta apart; both still reach the witness
	for i := range 10 {
		// Acknowledged with the witness's vote, without beta.
		if err := acked.write(t, alpha, ctx, int64(i)*4096, byte(0x10+i)); err != nil {
			t.Fatal(err)
		}
	}
	c.stop(c.nodes[0]) // alpha is lost
	time.Sleep(3 * c.nodes[0].cfg.Timeout)
	if s := beta.Status(); s.Role == api.Primary {
		t.Fatalf("beta, which lacks acknowledged writes, was elected: %s", s.LastElection)
	}
	err := beta.Promote(false)
	if err == nil || !errors.Is(err, ErrRefused) {
		t.Fatalf("manual promote of the outdated node: %v", err)
	}
	t.Logf("refused as expected: %v", err)
	// alpha returns: it has the newest data and is elected again.
	c.proxy(0, 1).Partition(false)
	c.start(c.nodes[0])
	alpha = c.nodes[0].n
	waitFor(t, 20*time.Second, "alpha elected again", func() bool { return alpha.Status().Role == api.Primary })
	c.waitSynced(20 * time.Second)
	acked.check(t, c.nodes[1])
	c.assertEqualStores()
}

// A replaced Primary that never learned it was replaced must not win a
// lease back from the witness. alpha is cut off and beta elected (beta
// acknowledges a write alpha lacks); then beta is cut off too, and once
// the witness has dropped its session to beta, alpha (still Primary, its
// lease expired) reaches the witness again. The witness knows a newer data
// generation (beta's) than alpha's: it must refuse alpha's lease, and
// alpha must acknowledge nothing, since its data lacks beta's
// acknowledged write. (Found by chaos's quorum-flap scenario.)
func TestQuorumWitnessRefusesReplacedPrimary(t *testing.T) {
	c, alpha, beta := witnessCluster(t, nil)
	tie := c.nodes[2].n
	var acked ackedWrites
	ctx := context.Background()
	if err := acked.write(t, alpha, ctx, 0, 1); err != nil {
		t.Fatal(err)
	}
	c.isolate(0, true)
	waitFor(t, 15*time.Second, "beta elected", func() bool { return beta.Status().Role == api.Primary })
	if err := acked.write(t, beta, ctx, 4096, 2); err != nil {
		t.Fatal(err)
	}
	// beta cut off as well; the witness drops both sessions.
	c.isolate(1, true)
	waitFor(t, 15*time.Second, "the witness alone", func() bool {
		for _, p := range tie.Status().Peers {
			if p.Connection == api.Connected {
				return false
			}
		}
		return true
	})
	if alpha.Status().Role != api.Primary {
		t.Fatal("alpha learned it was replaced while cut off: the story needs it not to")
	}
	// alpha and the witness meet again; beta stays away.
	c.proxy(0, 2).Partition(false)
	waitFor(t, 15*time.Second, "alpha and the witness connected", func() bool {
		for _, p := range tie.Status().Peers {
			if p.Name == names[0] && p.Connection == api.Connected {
				return true
			}
		}
		return false
	})
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := acked.write(t, alpha, wctx, 2*4096, 3)
	if err == nil {
		t.Fatalf("alpha, replaced by beta and lacking beta's acknowledged write, acknowledged a write (lease %q)", alpha.Status().Lease)
	}
	if s := alpha.Status(); s.Lease == "held" {
		t.Fatalf("alpha holds a lease again: %+v", s)
	}
	t.Logf("alpha's write: %v; alpha %s, %s", err, alpha.Status().Role, alpha.Status().LastElection)
}

// A replaced Primary whose resync from the new Primary is cut comes back
// Inconsistent with the generation it had diverged to: the Primary that
// holds its lease resyncs it again (the whole device), rather than both
// refusing the connection for good. Two data nodes and a witness: alpha
// is cut off (its write there fails, io-error), beta is elected and writes
// a lot; alpha returns, steps down and becomes beta's sync target over a
// slow link; alpha is cut off again mid-resync while beta writes on; then
// everything heals. (Found by chaos's quorum-flap scenario, where with no
// third data node the refusal — "after its resync ends this resolves" —
// never resolved.)
func TestQuorumCutResyncOfReplacedPrimary(t *testing.T) {
	c, alpha, beta := witnessCluster(t, func(i int, cfg *Config) { cfg.OnNoQuorum = config.NoQuorumIOError })
	var acked ackedWrites
	ctx := context.Background()
	for i := range 16 {
		if err := acked.write(t, alpha, ctx, int64(i)*4096, byte(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	c.isolate(0, true)
	// alpha, cut off, writes where beta will not: its generation diverges
	// (the write itself fails once the lease is over).
	for i := range 4 {
		if err := acked.write(t, alpha, ctx, int64(1000+i)*4096, 0xAA); err == nil {
			t.Logf("alpha's write %d after the cut acknowledged (within its lease)", i)
		}
	}
	waitFor(t, 15*time.Second, "beta elected", func() bool { return beta.Status().Role == api.Primary })
	// 8 MiB for the resync to carry.
	for i := range 2048 {
		if err := acked.write(t, beta, ctx, int64(i)*4096, byte(0x40+i%64)); err != nil {
			t.Fatal(err)
		}
	}
	c.proxy(0, 1).SetLink(faultnet.Link{Bandwidth: 1 << 20}, faultnet.Link{Bandwidth: 1 << 20})
	c.isolate(0, false)
	waitFor(t, 20*time.Second, "alpha a sync target", func() bool {
		s := alpha.Status()
		return s.Role == api.Secondary && s.Disk == "Inconsistent" && peerState(alpha, "beta").Replication == api.SyncTarget
	})
	time.Sleep(500 * time.Millisecond)
	c.isolate(0, true) // the resync is cut
	waitFor(t, 10*time.Second, "alpha cut off", func() bool { return peerState(beta, "alpha").Connection != api.Connected })
	if s := alpha.Status(); s.Disk != "Inconsistent" {
		t.Fatalf("alpha after the cut resync: disk %s, want Inconsistent", s.Disk)
	}
	for i := range 64 {
		if err := acked.write(t, beta, ctx, int64(3000+i)*4096, 0xBB); err != nil {
			t.Fatal(err)
		}
	}
	c.proxy(0, 1).SetLink(faultnet.Link{}, faultnet.Link{})
	c.isolate(0, false)
	c.waitSynced(30 * time.Second)
	assertNoSplitBrain(t, c.nodes[:2])
	acked.check(t, c.nodes[1])
	acked.check(t, c.nodes[0])
	c.assertEqualStores()
}
