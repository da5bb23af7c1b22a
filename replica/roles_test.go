package replica

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
	"github.com/repd/repd/protocol"
)

// Story 6: promote and demote rules.
func TestRoles(t *testing.T) {
	c := newCluster(t, 2, nil)
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	// A second primary is refused while connected.
	err := beta.Promote(false)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "peer alpha is Primary") {
		t.Fatalf("second promote: %v", err)
	}
	t.Logf("refused: %v", err)
	// The secondary refuses writes with EPERM.
	if err := beta.WriteAt(context.Background(), make([]byte, 4096), 0, false); !errors.Is(err, syscall.EPERM) || !strings.Contains(err.Error(), "not primary") {
		t.Fatalf("write on secondary: %v", err)
	}
	// Demote waits for in-flight writes: slow the link so writes are in
	// flight, demote in the middle, and check every successful write
	// finished before Demote returned.
	c.proxy(0, 1).SetLink(faultnet.Link{Delay: 50 * time.Millisecond}, faultnet.Link{Delay: 50 * time.Millisecond})
	var mu sync.Mutex
	var ends []time.Time
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(g + 1)}, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := alpha.WriteAt(context.Background(), buf, int64(g*64+i%64)*4096, false)
				if errors.Is(err, syscall.EPERM) {
					continue
				}
				if err != nil {
					t.Errorf("write: %v", err)
					return
				}
				mu.Lock()
				ends = append(ends, time.Now())
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := alpha.Demote(); err != nil {
		t.Fatal(err)
	}
	demoted := time.Now()
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	for _, e := range ends {
		if e.After(demoted) {
			t.Fatalf("a write completed %v after Demote returned", e.Sub(demoted))
		}
	}
	t.Logf("%d writes completed before demote", len(ends))
	c.proxy(0, 1).SetLink(faultnet.Link{}, faultnet.Link{})
	if err := alpha.WriteAt(context.Background(), make([]byte, 4096), 0, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write after demote: %v", err)
	}
	// Failover: the promoted secondary serves writes at once, and they
	// reach the old primary.
	waitFor(t, 5*time.Second, "alpha Secondary at beta", func() bool { return peerState(beta, "alpha").Role == "Secondary" })
	if err := beta.Promote(false); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("failover"), 512)
	if err := beta.WriteAt(context.Background(), data, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if got := readFileAt(t, c.nodes[0].path, 1<<20, len(data)); !bytes.Equal(got, data) {
		t.Fatal("write on the new primary missing on the old one")
	}
	// An Inconsistent node cannot be promoted without force: make one.
	if err := alpha.Promote(false); !errors.Is(err, ErrRefused) {
		t.Fatalf("promote while peer primary: %v", err)
	}
	c.assertEqualStores()
}

// DESIGN story 4: both nodes promoted while partitioned. On reconnect split
// brain is reported and no data is touched; the operator resolves it with
// --discard-my-data on the victim.
func TestSplitBrain(t *testing.T) {
	c := newCluster(t, 2, nil)
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	c.proxy(0, 1).Partition(true)
	waitFor(t, 5*time.Second, "partition noticed", func() bool {
		return peerState(alpha, "beta").Connection != api.Connected && peerState(beta, "alpha").Connection != api.Connected
	})
	if err := beta.Promote(false); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := bytes.Repeat([]byte{0xaa}, 8192)
	b := bytes.Repeat([]byte{0xbb}, 8192)
	if err := alpha.WriteAt(ctx, a, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := beta.WriteAt(ctx, b, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	ha, hb := fileHash(t, c.nodes[0].path), fileHash(t, c.nodes[1].path)
	c.proxy(0, 1).CutAll()
	c.proxy(0, 1).Partition(false)
	waitFor(t, 10*time.Second, "split brain reported on both", func() bool {
		return peerState(alpha, "beta").SplitBrain && peerState(beta, "alpha").SplitBrain
	})
	if !c.nodes[0].events.has("split-brain", "beta") || !c.nodes[1].events.has("split-brain", "alpha") {
		t.Fatal("no split-brain event")
	}
	ps := peerState(alpha, "beta")
	t.Logf("alpha sees beta: %s / %s: %s", ps.Connection, ps.Replication, ps.LastError)
	if ps.Connection != api.StandAlone {
		t.Fatalf("after split brain alpha is %s toward beta, want StandAlone", ps.Connection)
	}
	time.Sleep(300 * time.Millisecond)
	if fileHash(t, c.nodes[0].path) != ha || fileHash(t, c.nodes[1].path) != hb {
		t.Fatal("data touched after split brain")
	}
	// Resolve: beta is the victim.
	if err := beta.Connect("alpha", true); !errors.Is(err, ErrRefused) {
		t.Fatalf("discard on a primary: %v", err)
	}
	if err := beta.Demote(); err != nil {
		t.Fatal(err)
	}
	if err := beta.Connect("alpha", true); err != nil {
		t.Fatal(err)
	}
	if err := alpha.Connect("beta", false); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(10 * time.Second)
	c.assertEqualStores()
	if got := readFileAt(t, c.nodes[1].path, 1<<20, 8192); bytes.Equal(got, b) {
		t.Fatal("the victim's write survived")
	}
	if got := readFileAt(t, c.nodes[1].path, 0, 8192); !bytes.Equal(got, a) {
		t.Fatal("the survivor's write did not reach the victim")
	}
}

// Story 7: bad peers are refused with a clear reason, touching no data.
func TestBadPeers(t *testing.T) {
	c := newCluster(t, 2, nil)
	alpha := c.bootstrap()
	ctx := context.Background()
	if err := alpha.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, true); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(5 * time.Second)
	hb := fileHash(t, c.nodes[1].path)
	// Garbage on beta's peer port: closed, beta stays connected to alpha.
	nc, err := net.Dial("tcp", c.nodes[1].cfg.Self.Addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("GET / HTTP/1.0\r\n\r\n" + strings.Repeat("x", 100)))
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := nc.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("garbage connection not closed")
			}
			break
		}
	}
	nc.Close()
	if ps := peerState(c.nodes[1].n, "alpha"); ps.Connection != api.Connected {
		t.Fatalf("beta lost alpha over garbage: %+v", ps)
	}
	// Intruders: a node with the id of gamma (not configured), another
	// resource, another size, a wrong secret. Each dials beta directly.
	intruder := func(mod func(*Config)) *Node {
		cfg := Config{Resource: "r0", Size: testSize, Self: PeerConfig{ID: 0, Name: "mallory", Addr: freeAddr(t)},
			Peers:    []PeerConfig{{ID: 2, Name: "beta", Addr: c.nodes[1].cfg.Self.Addr}},
			MetaPath: t.TempDir() + "/m.meta", Secret: []byte("s3cret"), Timeout: time.Second, ConnectInterval: 50 * time.Millisecond}
		mod(&cfg)
		st, err := OpenFileStore(t.TempDir()+"/m.img", cfg.Size)
		if err != nil {
			t.Fatal(err)
		}
		n, err := Open(cfg, st)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { n.Run(cctx); close(done) }()
		t.Cleanup(func() { n.Close(); cancel(); <-done })
		return n
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"unknown node", func(c *Config) {}, "not a peer of resource"},
		{"other resource", func(c *Config) { c.Resource = "r1"; c.Self.ID = 1 }, "resource name differs"},
		{"other size", func(c *Config) { c.Size = testSize / 2; c.Self.ID = 1 }, "size differs"},
		{"wrong secret", func(c *Config) { c.Secret = []byte("guess"); c.Self.ID = 1; c.Self.Name = "alpha" }, "authentication failed"},
	} {
		m := intruder(tc.mod)
		waitFor(t, 5*time.Second, tc.name+" refused", func() bool {
			return strings.Contains(peerState(m, "beta").LastError, tc.want)
		})
		t.Logf("%s: %s", tc.name, peerState(m, "beta").LastError)
		m.Close()
	}
	if fileHash(t, c.nodes[1].path) != hb {
		t.Fatal("beta's data changed")
	}
	if ps := peerState(c.nodes[1].n, "alpha"); ps.Connection != api.Connected {
		t.Fatalf("beta lost alpha: %+v", ps)
	}
}

// Story 8: frames corrupted on the wire are detected by their checksum; the
// connection is re-established and the resync repairs; stores end equal.
// Once with s2, once with zstd and dedup (writers that repeat blocks, so
// references and zero markers cross the corrupting link too).
func TestCorruptFramesRepaired(t *testing.T) {
	for _, v := range []struct {
		name  string
		codec protocol.Codec
		dedup int64
	}{{"s2", protocol.CodecS2, 0}, {"zstd-dedup", protocol.CodecZstd, 4 << 20}} {
		t.Run(v.name, func(t *testing.T) { testCorruptFramesRepaired(t, v.codec, v.dedup) })
	}
}

func testCorruptFramesRepaired(t *testing.T, codec protocol.Codec, dedup int64) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.Compression, cfg.DedupIndexBytes = codec, dedup })
	alpha := c.bootstrap()
	c.proxy(0, 1).SetLink(faultnet.Link{CorruptProb: 0.01}, faultnet.Link{CorruptProb: 0.01})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writer(t, alpha, c.seed+uint64(g), int64(g)*(4<<20), int64(g+1)*(4<<20), stop, nil)
		}()
	}
	if dedup > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			repeatWriter(t, alpha, c.seed, stop)
		}()
	}
	waitFor(t, 20*time.Second, "corruption detected", func() bool {
		return peerState(c.nodes[1].n, "alpha").BadFrames+peerState(alpha, "beta").BadFrames >= 2
	})
	close(stop)
	wg.Wait()
	c.proxy(0, 1).SetLink(faultnet.Link{}, faultnet.Link{})
	bad := peerState(c.nodes[1].n, "alpha").BadFrames + peerState(alpha, "beta").BadFrames
	t.Logf("bad frames detected: %d; connects %d", bad, peerState(alpha, "beta").Connects)
	c.waitSynced(15 * time.Second)
	c.assertEqualStores()
	if ps := peerState(alpha, "beta"); dedup > 0 && (ps.DedupBlocks == 0 || ps.ZeroBlocks == 0) {
		t.Errorf("no dedup traffic: %+v", ps)
	}
}
