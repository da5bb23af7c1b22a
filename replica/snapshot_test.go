package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/protocol"
)

// snapCluster is a cluster whose nodes have a snapshot store of storeBytes.
func snapCluster(t *testing.T, k int, storeBytes int64, wrap func(i int, s Store) Store) *cluster {
	t.Helper()
	return newClusterWrap(t, k, func(i int, cfg *Config) { cfg.SnapshotStoreBytes = storeBytes }, wrap)
}

// snapHash reads a whole snapshot of n through its device and hashes it.
func snapHash(t *testing.T, n *Node, name string) [32]byte {
	t.Helper()
	d, err := n.SnapshotDevice(name)
	if err != nil {
		t.Fatalf("%s: open snapshot %s: %v", n.cfg.Self.Name, name, err)
	}
	h := blake3.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		if err := d.ReadAt(context.Background(), buf, off); err != nil {
			t.Fatalf("%s: read snapshot %s at %d: %v", n.cfg.Self.Name, name, off, err)
		}
		h.Write(buf)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func readSnap(t *testing.T, n *Node, name string, off int64, k int) []byte {
	t.Helper()
	d, err := n.SnapshotDevice(name)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, k)
	if err := d.ReadAt(context.Background(), b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// timedWrite is one write of a block by a test writer: its content and
// when it was issued and acknowledged.
type timedWrite struct {
	data          []byte
	issued, acked time.Time
}

// blockWriters write unique 4 KiB blocks, each writer into its own region
// (so the writes of a block are sequential), and remember every write.
type blockWriters struct {
	mu     sync.Mutex
	blocks map[int64][]timedWrite // by offset, in order
}

func (b *blockWriters) run(t *testing.T, n *Node, w int, lo, hi int64, stop <-chan struct{}) {
	r := rand.New(rand.NewPCG(uint64(w), 99))
	for seq := uint64(1); ; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		off := lo + r.Int64N((hi-lo)/4096)*4096
		data := bytes.Repeat([]byte{byte(seq)}, 4096)
		binary.LittleEndian.PutUint64(data, uint64(w)<<48|seq)
		issued := time.Now()
		if err := n.WriteAt(context.Background(), data, off, false); err != nil {
			t.Errorf("writer %d: %v", w, err)
			return
		}
		acked := time.Now()
		b.mu.Lock()
		b.blocks[off] = append(b.blocks[off], timedWrite{data, issued, acked})
		b.mu.Unlock()
	}
}

// check asserts that the image (read by read) holds, for every block
// written, the last write acknowledged before called, or a write issued
// before returned (in flight across the snapshot), and never a write
// issued after returned nor one older than the last acknowledged. And that
// the image is one point of time: no write it lacks was acknowledged
// before a write it holds was issued.
func (b *blockWriters) check(t *testing.T, what string, called, returned time.Time, read func(off int64) []byte) (inFlight int) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var lastIn, firstOut time.Time // the latest issue of a write held, the earliest ack of one lacked
	for off, ws := range b.blocks {
		got := read(off)
		allowed := [][]byte{make([]byte, 4096)} // never written before: zeroes
		idx := []int{-1}
		for i, w := range ws {
			switch {
			case w.acked.Before(called):
				allowed, idx = [][]byte{w.data}, []int{i} // a later acknowledged write replaces it
			case w.issued.Before(returned):
				allowed, idx = append(allowed, w.data), append(idx, i)
			}
		}
		found := -1
		for i, a := range allowed {
			if bytes.Equal(got, a) {
				found = i
			}
		}
		if found < 0 {
			id := binary.LittleEndian.Uint64(got)
			t.Fatalf("%s: block %d holds write %#x, which is neither the last acknowledged before the snapshot nor one in flight (%d writes to it)",
				what, off, id, len(ws))
		}
		if found > 0 {
			inFlight++
		}
		if i := idx[found]; i >= 0 && ws[i].issued.After(lastIn) {
			lastIn = ws[i].issued
		}
		if i := idx[found] + 1; i < len(ws) && (firstOut.IsZero() || ws[i].acked.Before(firstOut)) {
			firstOut = ws[i].acked
		}
	}
	if !firstOut.IsZero() && firstOut.Before(lastIn) {
		t.Fatalf("%s is not one point: it lacks a write acknowledged at %v but holds one issued later, at %v",
			what, firstOut.Format(time.StampMicro), lastIn.Format(time.StampMicro))
	}
	return inFlight
}

// A snapshot taken on the Primary and its Secondary while writers run is
// one consistent point: every write acknowledged before Snapshot was
// called is in it, none issued after it returned, writes in flight either
// way; the Secondary's image equals the Primary's byte for byte; and
// neither changes while the writers go on.
func TestSnapshotConsistentPoint(t *testing.T) {
	for _, proto := range []api.Protocol{api.ProtocolC, api.ProtocolA} {
		t.Run("protocol "+proto.String(), func(t *testing.T) { testSnapshotConsistentPoint(t, proto) })
	}
}

func testSnapshotConsistentPoint(t *testing.T, proto api.Protocol) {
	c := newCluster(t, 2, func(i int, cfg *Config) {
		cfg.SnapshotStoreBytes, cfg.Protocol = 8<<20, proto
		// Under protocol A the writers run ahead of beta by at most the
		// journal; with the race detector on a busy machine beta may
		// still take more than the default test timeout to ack.
		cfg.JournalBytes, cfg.Timeout = 4<<20, 5*time.Second
	})
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	bw := &blockWriters{blocks: map[int64][]timedWrite{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const writers = 4
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo := int64(w) * (1 << 20)
			bw.run(t, alpha, w, lo, lo+1<<20, stop)
		}()
	}
	time.Sleep(300 * time.Millisecond)
	called := time.Now()
	res, err := alpha.Snapshot(context.Background(), "point", []string{"alpha", "beta"})
	returned := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Created, ",") != "alpha,beta" {
		t.Fatalf("created on %v", res.Created)
	}
	time.Sleep(300 * time.Millisecond) // the writers overwrite what the snapshot holds
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	inFlight := bw.check(t, "alpha's snapshot", called, returned, func(off int64) []byte { return readSnap(t, alpha, "point", off, 4096) })
	bw.check(t, "beta's snapshot", called, returned, func(off int64) []byte { return readSnap(t, beta, "point", off, 4096) })
	ha, hb := snapHash(t, alpha, "point"), snapHash(t, beta, "point")
	if ha != hb {
		t.Fatalf("beta's snapshot differs from alpha's (%x vs %x)", hb[:8], ha[:8])
	}
	written := 0
	for _, ws := range bw.blocks {
		written += len(ws)
	}
	t.Logf("%d writes to %d blocks, %d blocks in flight across the snapshot (took %v)", written, len(bw.blocks), inFlight, returned.Sub(called))
	// The snapshot no longer follows the device: more writes leave it as
	// it was, and the live device differs from it.
	for i := range 64 {
		if err := alpha.WriteAt(context.Background(), bytes.Repeat([]byte{0xEE}, 4096), int64(i)*(1<<16), false); err != nil {
			t.Fatal(err)
		}
	}
	if snapHash(t, alpha, "point") != ha || snapHash(t, beta, "point") != hb {
		t.Fatal("a snapshot changed after later writes")
	}
	if fileHash(t, c.nodes[0].path) == ha {
		t.Fatal("the live device equals the snapshot after later writes")
	}
	if err := alpha.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(10 * time.Second)
	for _, tn := range c.nodes {
		l := tn.n.SnapshotList()
		if !l.Enabled || len(l.Snapshots) != 1 || l.Snapshots[0].Name != "point" || !l.Snapshots[0].Valid || l.Snapshots[0].Bytes == 0 {
			t.Fatalf("%s lists %+v", tn.cfg.Self.Name, l)
		}
		if !tn.events.has("snapshot", "") {
			t.Fatalf("%s reported no snapshot event", tn.cfg.Self.Name)
		}
		if s := tn.n.Status(); s.Snapshots != 1 || s.SnapshotStoreUsed == 0 || s.SnapshotStoreCapacity != 8<<20 {
			t.Fatalf("%s status: %d snapshots, %d of %d bytes", tn.cfg.Self.Name, s.Snapshots, s.SnapshotStoreUsed, s.SnapshotStoreCapacity)
		}
	}
	c.assertEqualStores()
}

// Without frame MACs (no secret, or TLS) the peers still announce that
// they take snapshots: FeatureSnapshot once shared its bit with
// FeatureFrameMAC, and a link without MACs refused every snapshot on a
// peer as "runs a repd that cannot take snapshots".
func TestSnapshotWithoutFrameMACs(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.SnapshotStoreBytes, cfg.Secret = 4<<20, nil })
	alpha := c.bootstrap()
	if err := alpha.WriteAt(context.Background(), bytes.Repeat([]byte{0x5A}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	res, err := alpha.Snapshot(context.Background(), "plain", []string{"alpha", "beta"})
	if err != nil {
		t.Fatalf("snapshot on both nodes of a link without frame MACs: %v", err)
	}
	if strings.Join(res.Created, ",") != "alpha,beta" {
		t.Fatalf("created on %v", res.Created)
	}
	if ha, hb := snapHash(t, alpha, "plain"), snapHash(t, c.nodes[1].n, "plain"); ha != hb {
		t.Fatalf("beta's snapshot differs from alpha's (%x vs %x)", hb[:8], ha[:8])
	}
}

// A Secondary asks the Primary for a snapshot in the write stream: for
// itself (the Primary takes none), or for every node; both images equal.
// With no Primary connected it takes one at once, and says so.
func TestSnapshotSecondaryAsksPrimary(t *testing.T) {
	c := snapCluster(t, 2, 4<<20, nil)
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); writer(t, alpha, 5, 0, testSize, stop, nil) }()
	time.Sleep(100 * time.Millisecond)
	res, err := beta.Snapshot(ctx, "mine", nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Created, ",") != "beta" || !strings.Contains(res.Note, "Primary alpha") {
		t.Fatalf("beta's own snapshot: %+v", res)
	}
	if len(alpha.Snapshots()) != 0 {
		t.Fatalf("alpha took a snapshot asked for beta only: %+v", alpha.Snapshots())
	}
	res, err = beta.Snapshot(ctx, "both", []string{SnapshotAll})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Created, ",") != "alpha,beta" {
		t.Fatalf("all: %+v", res)
	}
	close(stop)
	wg.Wait()
	if snapHash(t, alpha, "both") != snapHash(t, beta, "both") {
		t.Fatal("the snapshots asked for by beta differ")
	}
	// A name beta has already: refused by beta before it reaches the
	// stream; a name only alpha has: refused by alpha, nothing created.
	if _, err := beta.Snapshot(ctx, "mine", nil); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `already has a snapshot "mine"`) {
		t.Fatalf("duplicate on beta: %v", err)
	}
	if _, err := alpha.Snapshot(ctx, "alpha-only", nil); err != nil {
		t.Fatal(err)
	}
	_, err = beta.Snapshot(ctx, "alpha-only", []string{"alpha", "beta"})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "alpha already has") || !strings.Contains(err.Error(), "answer of the Primary alpha") {
		t.Fatalf("duplicate on alpha, asked by beta: %v", err)
	}
	if len(beta.Snapshots()) != 2 {
		t.Fatalf("beta: %+v", beta.Snapshots())
	}
	if err := alpha.Demote(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "beta sees alpha Secondary", func() bool { return peerState(beta, "alpha").Role == "Secondary" })
	res, err = beta.Snapshot(ctx, "lonely", nil)
	if err != nil || !strings.Contains(res.Note, "no Primary is connected") {
		t.Fatalf("without a Primary: %+v, %v", res, err)
	}
	if _, err := beta.Snapshot(ctx, "both2", []string{"alpha", "beta"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "no Primary is connected") {
		t.Fatalf("other nodes without a Primary: %v", err)
	}
}

// A full store invalidates the snapshot that needed the copy, with an
// event; the device keeps accepting writes; a snapshot is refused while
// the store is full.
func TestSnapshotStoreFull(t *testing.T) {
	c := snapCluster(t, 1, 4<<16, nil) // four 64 KiB chunks
	n := c.nodes[0].n
	if err := n.Promote(true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := n.Snapshot(ctx, "s1", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := n.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), int64(i)<<16, false); err != nil {
			t.Fatal(err)
		}
	}
	_, err := n.Snapshot(ctx, "s2", nil)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "snapshot store of alpha is full") || !strings.Contains(err.Error(), "snapshot-store-size") {
		t.Fatalf("snapshot into a full store: %v", err)
	}
	if l := n.SnapshotList(); l.UsedBytes != 4<<16 || !l.Snapshots[0].Valid {
		t.Fatalf("before the fifth chunk: %+v", l)
	}
	// The fifth chunk needs a copy that does not fit: s1 goes, the write
	// does not.
	for i := 4; i < 16; i++ {
		if err := n.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), int64(i)<<16, false); err != nil {
			t.Fatalf("write %d with a full snapshot store: %v", i, err)
		}
	}
	l := n.SnapshotList()
	if len(l.Snapshots) != 1 || l.Snapshots[0].Valid || !strings.Contains(l.Snapshots[0].Reason, "full") || l.Snapshots[0].Invalidated == nil {
		t.Fatalf("after the store filled: %+v", l)
	}
	if _, err := n.SnapshotDevice("s1"); !errors.Is(err, ErrSnapshotInvalid) {
		t.Fatalf("open an invalid snapshot: %v", err)
	}
	var ev api.Event
	c.nodes[0].events.mu.Lock()
	for _, e := range c.nodes[0].events.evs {
		if e.Kind == "snapshot" && e.New == "invalidated" {
			ev = e
		}
	}
	c.nodes[0].events.mu.Unlock()
	if ev.Snapshot != "s1" || !strings.Contains(ev.Message, "full") {
		t.Fatalf("invalidation event: %+v", ev)
	}
	// The copies went with s1: a new snapshot has room again.
	if _, err := n.Snapshot(ctx, "s2", nil); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteSnapshot("s1"); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `no snapshot "s1"`) {
		t.Fatalf("delete twice: %v", err)
	}
}

// Snapshots survive a restart of the node: listed with their creation
// time, read as they were.
func TestSnapshotSurvivesRestart(t *testing.T) {
	c := snapCluster(t, 1, 2<<20, nil)
	tn := c.nodes[0]
	n := tn.n
	if err := n.Promote(true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	if err := n.WriteAt(ctx, randBlock(r, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Snapshot(ctx, "before", nil); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteAt(ctx, randBlock(r, 256<<10), 128<<10, false); err != nil {
		t.Fatal(err)
	}
	want, created := snapHash(t, n, "before"), n.Snapshots()[0].Created
	c.stop(tn)
	c.start(tn)
	n = tn.n
	got := n.Snapshots()
	if len(got) != 1 || got[0].Name != "before" || !got[0].Created.Equal(created) || !got[0].Valid {
		t.Fatalf("after restart: %+v", got)
	}
	if snapHash(t, n, "before") != want {
		t.Fatal("the snapshot reads differently after a restart")
	}
}

// Refusals: a witness, snapshots off (naming the key), a store file left
// while off, an Inconsistent disk, bad and duplicate names, unknown nodes,
// a peer that is not connected, reads of a snapshot through a write.
func TestSnapshotRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w, err := Open(Config{Resource: "r0", Size: testSize, Self: PeerConfig{ID: 3, Name: "tie", Addr: "127.0.0.1:1", Witness: true},
		Peers:    []PeerConfig{{ID: 1, Name: "alpha", Addr: "127.0.0.1:2"}, {ID: 2, Name: "beta", Addr: "127.0.0.1:3"}},
		MetaPath: filepath.Join(dir, "tie.state"), Quorum: 2, SnapshotStoreBytes: 1 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Snapshot(ctx, "x", nil); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "only votes") {
		t.Fatalf("witness: %v", err)
	}
	w.Close()

	c := newCluster(t, 2, func(i int, cfg *Config) {
		if i == 0 {
			cfg.SnapshotStoreBytes = 1 << 20
		}
	})
	alpha, beta := c.nodes[0].n, c.nodes[1].n
	c.waitConnected(10 * time.Second)
	// Fresh disks are Inconsistent.
	if _, err := alpha.Snapshot(ctx, "x", nil); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "Inconsistent") {
		t.Fatalf("Inconsistent disk: %v", err)
	}
	c.bootstrap()
	if _, err := beta.Snapshot(ctx, "x", nil); !errors.Is(err, ErrSnapshotsOff) || !strings.Contains(err.Error(), "snapshot-store-size") {
		t.Fatalf("snapshots off: %v", err)
	}
	_, err = alpha.Snapshot(ctx, "x", []string{"alpha", "beta"})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "created on alpha only") || !strings.Contains(err.Error(), "beta: ") ||
		!strings.Contains(err.Error(), "snapshot-store-size") {
		t.Fatalf("a peer with snapshots off: %v", err)
	}
	for _, bad := range []string{"", "a b", "r0@x", strings.Repeat("n", 65)} {
		if _, err := alpha.Snapshot(ctx, bad, nil); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "invalid snapshot name") {
			t.Fatalf("name %q: %v", bad, err)
		}
	}
	if _, err := alpha.Snapshot(ctx, "x", nil); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `already has a snapshot "x"`) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := alpha.Snapshot(ctx, "y", []string{"gamma"}); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("unknown node: %v", err)
	}
	if _, err := alpha.Snapshot(ctx, "y", []string{"beta", "beta"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("node twice: %v", err)
	}
	d, err := alpha.SnapshotDevice("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, make([]byte, 512), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a snapshot: %v", err)
	}
	if _, err := alpha.SnapshotDevice("nope"); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("open a missing snapshot: %v", err)
	}
	c.isolate(0, true)
	waitFor(t, 10*time.Second, "beta disconnected", func() bool { return peerState(alpha, "beta").Connection != api.Connected })
	if _, err := alpha.Snapshot(ctx, "y", []string{"beta"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("a peer away: %v", err)
	}
	c.isolate(0, false)

	// The store file of alpha is left while snapshots are turned off: repd
	// refuses to start rather than let its snapshots go stale.
	c.stop(c.nodes[0])
	c.nodes[0].cfg.SnapshotStoreBytes = 0
	st, err := OpenFileStore(c.nodes[0].path, testSize)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = Open(c.nodes[0].cfg, st)
	if err == nil || !strings.Contains(err.Error(), "snapshot-store-size is 0") || !strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("open with a store left behind: %v", err)
	}
	if _, err := os.Stat(c.nodes[0].cfg.MetaPath + ".snap"); err != nil {
		t.Fatal(err)
	}
}

// A Secondary that floods its Primary with snapshot requests gets at most
// maxSnapshotRequests served at once; the rest are refused at once, so a
// peer cannot make the Primary hold an unbounded number of waiting
// requests. A malformed request ends the connection as a bad frame.
func TestSnapshotRequestFlood(t *testing.T) {
	var slow atomic.Bool
	c := newClusterWrap(t, 2, func(i int, cfg *Config) {
		cfg.SnapshotStoreBytes = 4 << 20
		cfg.Timeout = 5 * time.Second // beta applies the served snapshots one after another, 300 ms each
	}, func(i int, s Store) Store {
		if i == 1 {
			return &slowFlushStore{Store: s, slow: &slow}
		}
		return s
	})
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	pb := alpha.byName["beta"]
	const flood = 40
	slow.Store(true) // beta's snapshots take 300 ms each
	beta.mu.Lock()
	pa := beta.byName["alpha"]
	sess := pa.sess
	var reqs []*snapRequest
	for i := range flood {
		req := protocol.SnapshotReq{Name: "flood" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Nodes: []uint8{beta.cfg.Self.ID}}
		r := &snapRequest{p: pa, ch: make(chan snapReply, 1)}
		if beta.snapReqs == nil {
			beta.snapReqs = map[uint64]*snapRequest{}
		}
		beta.snapReqs[uint64(1000+i)] = r
		reqs = append(reqs, r)
		sess.queue(ctrlMsg{t: protocol.TypeSnapshotReq, seq: uint64(1000 + i), payload: req.Append(nil)})
	}
	beta.mu.Unlock()
	most := int32(0)
	var ok, busy int
	for _, r := range reqs {
		var rep snapReply
		for done := false; !done; {
			if k := pb.snapReqs.Load(); k > most {
				most = k
			}
			select {
			case rep = <-r.ch:
				done = true
			case <-sess.ctx.Done():
				t.Fatalf("the connection ended before every request was answered: %v", sess.err)
			case <-time.After(5 * time.Millisecond):
			}
		}
		switch {
		case !rep.failed:
			ok++
		case strings.Contains(rep.text, "serving 4 snapshot requests of beta"):
			busy++
		default:
			t.Fatalf("reply: %+v", rep)
		}
	}
	slow.Store(false)
	t.Logf("%d requests: %d served, %d refused as too many; at most %d in flight on alpha", flood, ok, busy, most)
	if most > maxSnapshotRequests || ok > maxSnapshotRequests+1 || ok+busy != flood || ok == 0 {
		t.Fatalf("served %d, refused %d, at most %d at once", ok, busy, most)
	}
	if len(beta.Snapshots()) != ok {
		t.Fatalf("beta has %d snapshots, %d were reported created", len(beta.Snapshots()), ok)
	}
	waitFor(t, 5*time.Second, "alpha serves no request", func() bool { return pb.snapReqs.Load() == 0 })

	bad := peerState(alpha, "beta").BadFrames
	beta.mu.Lock()
	beta.byName["alpha"].sess.queue(ctrlMsg{t: protocol.TypeSnapshotReq, seq: 1, payload: append([]byte{0, 0}, "a b"...)})
	beta.mu.Unlock()
	waitFor(t, 5*time.Second, "alpha counts a bad frame", func() bool { return peerState(alpha, "beta").BadFrames > bad })
	if len(alpha.Snapshots()) != 0 {
		t.Fatal("a malformed request made a snapshot")
	}
	c.waitSynced(10 * time.Second)
}

// slowFlushStore makes Flush take 300 ms while slow is set.
type slowFlushStore struct {
	Store
	slow *atomic.Bool
}

func (s *slowFlushStore) Flush(ctx context.Context) error {
	if s.slow.Load() {
		time.Sleep(300 * time.Millisecond)
	}
	return s.Store.Flush(ctx)
}

// Changed blocks between snapshots and since the last one; the live
// device's allocation and a snapshot's (holes stay holes only where
// nothing was written since).
func TestSnapshotChangedAndAllocation(t *testing.T) {
	c := snapCluster(t, 1, 2<<20, nil)
	n := c.nodes[0].n
	if err := n.Promote(true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	block := bytes.Repeat([]byte{7}, 4096)
	if err := n.WriteAt(ctx, block, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	type ext struct {
		off, n int64
		data   bool
	}
	alloc := func(f func(off, n int64, fn func(off, n int64, data bool) bool) error) []ext {
		var out []ext
		if err := f(0, testSize, func(off, k int64, data bool) bool {
			out = append(out, ext{off, k, data})
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	live := alloc(n.Allocation)
	want := []ext{{0, 1 << 20, false}, {1 << 20, 4096, true}, {1<<20 + 4096, testSize - 1<<20 - 4096, false}}
	if len(live) != 3 || live[0] != want[0] || live[1] != want[1] || live[2] != want[2] {
		t.Fatalf("live allocation %+v, want %+v", live, want)
	}
	if _, err := n.Snapshot(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteAt(ctx, block, 8192, false); err != nil {
		t.Fatal(err)
	}
	if err := n.Trim(ctx, 1<<20, 4096, false); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Snapshot(ctx, "b", nil); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteAt(ctx, block, 3<<20, false); err != nil {
		t.Fatal(err)
	}
	changed := func(from, to string) []ext {
		var out []ext
		if err := n.ChangedRange(from, to, 0, testSize, func(off, k int64) bool {
			out = append(out, ext{off, k, true})
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := changed("a", "b"); len(got) != 2 || got[0] != (ext{8192, 4096, true}) || got[1] != (ext{1 << 20, 4096, true}) {
		t.Fatalf("changed a..b: %+v", got)
	}
	if got := changed("b", ""); len(got) != 1 || got[0] != (ext{3 << 20, 4096, true}) {
		t.Fatalf("changed since b: %+v", got)
	}
	if got := changed("a", ""); len(got) != 3 {
		t.Fatalf("changed since a: %+v", got)
	}
	d, err := n.SnapshotDevice("a")
	if err != nil {
		t.Fatal(err)
	}
	var dirty []ext
	d.Changed("a", 0, testSize, func(off, k int64) bool { dirty = append(dirty, ext{off, k, true}); return true })
	if len(dirty) != 0 {
		t.Fatalf("a changed since itself: %+v", dirty)
	}
	// Snapshot a: data at 1 MiB (trimmed live since: still data in a),
	// and at 8 KiB and 3 MiB where it was a hole but was written since
	// (reported as data: a superset is allowed, a hole that is not is not).
	sa := alloc(d.Allocation)
	isData := func(es []ext, off int64) bool {
		for _, e := range es {
			if off >= e.off && off < e.off+e.n {
				return e.data
			}
		}
		t.Fatalf("offset %d not covered by %+v", off, es)
		return false
	}
	if !isData(sa, 1<<20) || isData(sa, 2<<20) || isData(sa, 0) {
		t.Fatalf("snapshot a's allocation %+v", sa)
	}
	if got := readSnap(t, n, "a", 1<<20, 4096); !bytes.Equal(got, block) {
		t.Fatal("snapshot a lost the block trimmed after it")
	}
	if got := readSnap(t, n, "a", 8192, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("snapshot a shows a write made after it")
	}
	var total int64
	for _, e := range sa {
		total += e.n
	}
	if total != testSize {
		t.Fatalf("snapshot allocation covers %d of %d bytes", total, testSize)
	}
}

// failReadStore fails reads while fail is set, as a disk with a bad
// sector would.
type failReadStore struct {
	Store
	fail *atomic.Bool
}

func (s *failReadStore) ReadAt(ctx context.Context, p []byte, off int64) error {
	if s.fail.Load() {
		return errors.New("read: input/output error (injected)")
	}
	return s.Store.ReadAt(ctx, p, off)
}

// When the data a snapshot needs cannot be preserved (here: the live
// device cannot be read for the copy), the write still goes on; every
// snapshot is invalidated, durably (still invalid after a restart), with
// an event; the store takes no new snapshot until it is reopened.
func TestSnapshotPreserveFails(t *testing.T) {
	var fail atomic.Bool
	c := snapCluster(t, 1, 1<<20, func(i int, s Store) Store { return &failReadStore{Store: s, fail: &fail} })
	tn := c.nodes[0]
	n := tn.n
	if err := n.Promote(true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := n.Snapshot(ctx, "s", nil); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := n.WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 0, false); err != nil {
		t.Fatalf("the write failed with the snapshot's copy: %v", err)
	}
	fail.Store(false)
	if got := readFileAt(t, tn.path, 0, 4096); !bytes.Equal(got, bytes.Repeat([]byte{9}, 4096)) {
		t.Fatal("the write did not reach the disk")
	}
	l := n.SnapshotList()
	if len(l.Snapshots) != 1 || l.Snapshots[0].Valid || !strings.Contains(l.Snapshots[0].Reason, "could not be preserved") {
		t.Fatalf("after a failed copy: %+v", l)
	}
	if _, err := n.SnapshotDevice("s"); !errors.Is(err, ErrSnapshotInvalid) {
		t.Fatalf("open: %v", err)
	}
	if !tn.events.has("snapshot", "") {
		t.Fatal("no snapshot event")
	}
	if _, err := n.Snapshot(ctx, "t", nil); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "restart repd") {
		t.Fatalf("a snapshot on a failed store: %v", err)
	}
	if s := n.Status(); s.SnapshotStoreFailed == "" {
		t.Fatal("status does not say the store failed")
	}
	c.stop(tn)
	c.start(tn)
	n = tn.n
	if l := n.Snapshots(); len(l) != 1 || l[0].Valid {
		t.Fatalf("after a restart: %+v", l)
	}
	if _, err := n.Snapshot(ctx, "t", nil); err != nil {
		t.Fatalf("a snapshot on the reopened store: %v", err)
	}
}

var _ nbd.Device = (*SnapshotDevice)(nil)

// A SnapshotDevice served as a read-only NBD export reads, with libnbd's
// nbdcopy, as the device was when the snapshot was taken, while the live
// device has moved on; qemu-io's write to it is refused.
func TestSnapshotServedOverNBD(t *testing.T) {
	nbdcopy, qemuIO := testtool.Require(t, "nbdcopy"), testtool.Require(t, "qemu-io")
	c := snapCluster(t, 1, 4<<20, nil)
	n := c.nodes[0].n
	if err := n.Promote(true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := rand.New(rand.NewPCG(8, 9))
	want := randBlock(r, 2<<20)
	if err := n.WriteAt(ctx, want, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Snapshot(ctx, "s", nil); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteAt(ctx, randBlock(r, 1<<20), 2<<20, false); err != nil {
		t.Fatal(err)
	}
	dev, err := n.SnapshotDevice("s")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "r0@s", Device: dev, ReadOnly: true}}}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, l) }()
	defer func() { cancel(); <-done }()
	uri := "nbd+unix:///r0@s?socket=" + sock
	out := filepath.Join(t.TempDir(), "s.img")
	if b, err := exec.Command(nbdcopy, uri, out).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	image := make([]byte, testSize)
	copy(image[1<<20:], want)
	if !bytes.Equal(got, image) {
		t.Fatal("the snapshot's export does not hold the device as it was")
	}
	b, _ := exec.Command(qemuIO, "-f", "raw", "-c", "write 0 4k", uri).CombinedOutput()
	if msg := strings.ToLower(string(b)); !strings.Contains(msg, "not permitted") && !strings.Contains(msg, "read-only") && !strings.Contains(msg, "permission denied") {
		t.Fatalf("a write to the snapshot's export was not refused:\n%s", b)
	}
	t.Logf("qemu-io: %s", bytes.TrimSpace(b))
}

// A lazy snapshot (repctl backup's) is taken on the node asked only, is
// listed as lazy, and keeps its image while the writes it preserves go on.
// Reads of a snapshot export slow down to SnapshotReadMinRate while the
// node applies replicated writes, and go at full speed once it does not.
func TestSnapshotLazyAndReadPacing(t *testing.T) {
	const rate = 1 << 20
	c := newClusterWrap(t, 2, func(i int, cfg *Config) {
		cfg.SnapshotStoreBytes = 8 << 20
		cfg.SnapshotReadMinRate = rate
	}, nil)
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	ctx := context.Background()
	r := rand.New(rand.NewPCG(4, 4))
	if err := alpha.WriteAt(ctx, randBlock(r, 4<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	// Nothing writes: alpha's durable snapshot and beta's lazy one are
	// the same point.
	if _, err := alpha.Snapshot(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	res, err := beta.SnapshotLazy(ctx, "l")
	if err != nil || strings.Join(res.Created, ",") != "beta" {
		t.Fatalf("lazy snapshot on beta: %+v, %v", res, err)
	}
	if l := beta.Snapshots(); len(l) != 1 || !l[0].Lazy || !l[0].Valid {
		t.Fatalf("beta lists %+v", l)
	}
	if l := alpha.Snapshots(); len(l) != 1 || l[0].Lazy {
		t.Fatalf("alpha lists %+v", l)
	}
	if _, err := beta.SnapshotLazy(ctx, "l"); !errors.Is(err, ErrRefused) {
		t.Fatalf("a lazy snapshot under a taken name: %v", err)
	}
	want := snapHash(t, alpha, "a")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	// Plain writes (no FUA, no flush) that keep beta applying: the
	// fdatasyncs of flushes, and of alpha's durable copies while its
	// snapshot's chunks are first written, pause them for longer than
	// snapBusyWindow on a loaded machine, and a read then goes unpaced.
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(6, 7))
		for {
			select {
			case <-stop:
				return
			default:
			}
			blocks := 1 + r.Int64N(16)
			if err := alpha.WriteAt(ctx, randBlock(r, int(blocks)*4096), r.Int64N(1024-blocks+1)*4096, false); err != nil {
				t.Errorf("write on alpha: %v", err)
				return
			}
		}
	}()
	waitFor(t, 10*time.Second, "every chunk of the written 4 MiB copied on alpha and beta", func() bool {
		return alpha.Status().SnapshotStoreUsed >= 4<<20 && beta.Status().SnapshotStoreUsed >= 4<<20
	})
	waitFor(t, 5*time.Second, "beta applies writes", func() bool {
		return time.Since(time.Unix(0, beta.lastPeerWrite.Load())) < 50*time.Millisecond
	})
	d, err := beta.SnapshotDevice("l")
	if err != nil {
		t.Fatal(err)
	}
	read := func(k int) time.Duration {
		buf := make([]byte, 256<<10)
		t0 := time.Now()
		for i := range k {
			if err := d.ReadAt(ctx, buf, int64(i%16)*int64(len(buf))); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(t0)
	}
	// 2 MiB at 1 MiB/s: about 1.75 s (the first 256 KiB go at once, the
	// bucket's burst); a pause of the writer longer than snapBusyWindow
	// lets a read through unpaced, as on a loaded machine it may. Unpaced,
	// the 2 MiB take milliseconds.
	if busy := read(8); busy < 600*time.Millisecond {
		t.Fatalf("2 MiB of snapshot reads took %v while beta applied writes: not paced to %d B/s", busy, rate)
	}
	close(stop)
	wg.Wait()
	time.Sleep(300 * time.Millisecond) // past snapBusyWindow
	if idle := read(8); idle > time.Second {
		t.Fatalf("2 MiB of snapshot reads took %v with nothing writing: paced all the same", idle)
	}
	if snapHash(t, beta, "l") != want {
		t.Fatal("beta's lazy snapshot does not read as alpha's snapshot at the same point")
	}
}

// countFlushStore counts Flush calls.
type countFlushStore struct {
	Store
	flushes *atomic.Int64
}

func (s *countFlushStore) Flush(ctx context.Context) error {
	s.flushes.Add(1)
	return s.Store.Flush(ctx)
}

// A lazy snapshot taken in the write stream on a Secondary does not flush
// the Secondary's disk at its barrier (the flush would hold up every write
// of protocol C behind it): the snapshot store marks itself unsynced with
// it, and its flusher syncs the disk before clearing that. Beside a
// durable snapshot the flush comes back (a power loss must not take the
// durable one). Both read the same image as the Primary's durable
// snapshot at the same point.
func TestLazySnapshotSkipsTheBarrierFlush(t *testing.T) {
	var flushes atomic.Int64
	c := newClusterWrap(t, 2, func(i int, cfg *Config) { cfg.SnapshotStoreBytes = 8 << 20 },
		func(i int, s Store) Store {
			if i == 1 {
				return &countFlushStore{Store: s, flushes: &flushes}
			}
			return s
		})
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	ctx := context.Background()
	r := rand.New(rand.NewPCG(9, 9))
	if err := alpha.WriteAt(ctx, randBlock(r, 2<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := alpha.Snapshot(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	before := flushes.Load()
	if res, err := beta.SnapshotLazy(ctx, "l"); err != nil || strings.Join(res.Created, ",") != "beta" {
		t.Fatalf("lazy snapshot on beta: %+v, %v", res, err)
	}
	if got := flushes.Load() - before; got != 0 {
		t.Fatalf("beta's disk was flushed %d times for a lazy snapshot", got)
	}
	if !beta.snap.Stats().Unsynced {
		t.Fatalf("beta's store after a lazy snapshot without a flush: %+v; want it marked unsynced", beta.snap.Stats())
	}
	if snapHash(t, beta, "l") != snapHash(t, alpha, "a") {
		t.Fatal("beta's lazy snapshot differs from alpha's at the same point")
	}
	// The flusher (after 5 s without a copy, snapstore.DefaultLazySync) syncs the disk, then
	// clears the mark.
	waitFor(t, 30*time.Second, "beta's store flusher syncs the disk and clears the mark", func() bool {
		return !beta.snap.Stats().Unsynced
	})
	if flushes.Load() == before {
		t.Fatal("the mark was cleared without a flush of beta's disk")
	}

	// Beside a durable snapshot on beta: flushed at the barrier.
	if _, err := beta.Snapshot(ctx, "d", nil); err != nil {
		t.Fatal(err)
	}
	before = flushes.Load()
	if _, err := beta.SnapshotLazy(ctx, "l2"); err != nil {
		t.Fatal(err)
	}
	if flushes.Load() == before || beta.snap.Stats().Unsynced {
		t.Fatalf("a lazy snapshot beside a durable one: %d flushes, %+v; want a flush, nothing unsynced", flushes.Load()-before, beta.snap.Stats())
	}
	if snapHash(t, beta, "l2") != snapHash(t, beta, "d") {
		t.Fatal("beta's l2 differs from d, taken with nothing written between")
	}
}
