package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
)

// The in-process cluster: real nodes over loopback TCP, each link from a
// lower to a higher node id through a faultnet proxy, real files as stores.

const testSize = 16 << 20

type tnode struct {
	n      *Node
	wrap   func(Store) Store // decorates the store (fault injection)
	cfg    Config
	path   string
	cancel context.CancelFunc
	done   chan struct{}
	events *eventLog
}

type eventLog struct {
	mu  sync.Mutex
	evs []api.Event
}

func (l *eventLog) add(e api.Event) {
	l.mu.Lock()
	l.evs = append(l.evs, e)
	l.mu.Unlock()
}

func (l *eventLog) has(kind, peer string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.evs {
		if e.Kind == kind && (peer == "" || e.Peer == peer) {
			return true
		}
	}
	return false
}

type cluster struct {
	t       testing.TB
	dir     string
	nodes   []*tnode
	proxies map[[2]int]*faultnet.Proxy // [lower, higher] index
	seed    uint64
	logs    *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// freeAddr returns a free TCP address on 127.0.0.1 with a port below
// Linux's ephemeral range (32768-60999 by default): a port taken from that
// range by listening on port 0 could be given, between this check and the
// node's listen, to an outgoing connection of this or another test package
// running alongside ("bind: address already in use").
func freeAddr(t testing.TB) string {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if portsGiven[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		portsGiven[p] = true
		return ln.Addr().String()
	}
	t.Fatal("no free port in 20000-31999 on 127.0.0.1")
	return ""
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{} // by freeAddr in this process
)

// directLinks makes newCluster connect nodes without proxies (benchmarks).
var directLinks bool

var names = []string{"alpha", "beta", "gamma", "delta"}

// newCluster builds k nodes (ids 1..k) and starts them.
func newCluster(t testing.TB, k int, mod func(i int, c *Config)) *cluster {
	t.Helper()
	return newClusterWrap(t, k, mod, nil)
}

// newClusterWrap is newCluster with wrap decorating each node's store.
func newClusterWrap(t testing.TB, k int, mod func(i int, c *Config), wrap func(i int, s Store) Store) *cluster {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("cluster seed %d", seed)
	c := &cluster{t: t, dir: t.TempDir(), proxies: map[[2]int]*faultnet.Proxy{}, seed: seed, logs: &syncBuf{}}
	addrs := make([]string, k)
	for i := range addrs {
		addrs[i] = freeAddr(t)
	}
	for i := range k {
		for j := i + 1; j < k; j++ {
			px, err := faultnet.NewProxy("127.0.0.1:0", addrs[j], int64(seed)+int64(10*i+j))
			if err != nil {
				t.Fatal(err)
			}
			if err := px.Start(); err != nil {
				t.Fatal(err)
			}
			c.proxies[[2]int{i, j}] = px
		}
	}
	for i := range k {
		cfg := Config{
			Resource: "r0", Size: testSize, Protocol: api.ProtocolC,
			Self:     PeerConfig{ID: uint8(i + 1), Name: names[i], Addr: addrs[i]},
			MetaPath: filepath.Join(c.dir, names[i]+".meta"), Secret: []byte("s3cret"),
			Timeout: time.Second, ConnectInterval: 50 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("at", names[i]),
		}
		for j := range k {
			if j == i {
				continue
			}
			addr := addrs[j]
			if i < j && !directLinks {
				addr = c.proxies[[2]int{i, j}].Addr()
			}
			cfg.Peers = append(cfg.Peers, PeerConfig{ID: uint8(j + 1), Name: names[j], Addr: addr})
		}
		if mod != nil {
			mod(i, &cfg)
		}
		tn := &tnode{cfg: cfg, path: filepath.Join(c.dir, names[i]+".img")}
		if wrap != nil {
			tn.wrap = func(s Store) Store { return wrap(i, s) }
		}
		c.nodes = append(c.nodes, tn)
	}
	t.Cleanup(func() {
		for _, tn := range c.nodes {
			c.stop(tn)
		}
		for _, px := range c.proxies {
			px.Close()
		}
		if t.Failed() {
			for _, tn := range c.nodes {
				if tn.n != nil {
					t.Logf("status of %s:\n%s", tn.cfg.Self.Name, tn.n.Status())
				}
			}
			c.logs.mu.Lock()
			out := c.logs.b.String()
			c.logs.mu.Unlock()
			if len(out) > 200000 {
				out = out[len(out)-200000:]
			}
			t.Logf("logs:\n%s", out)
		}
	})
	for _, tn := range c.nodes {
		c.start(tn)
	}
	return c
}

func (c *cluster) start(tn *tnode) {
	c.t.Helper()
	tn.events = &eventLog{}
	tn.cfg.OnEvent = tn.events.add
	var store Store
	if !tn.cfg.Self.Witness {
		st, err := OpenFileStore(tn.path, tn.cfg.Size)
		if err != nil {
			c.t.Fatal(err)
		}
		store = st
		if tn.wrap != nil {
			store = tn.wrap(st)
		}
	}
	n, err := Open(tn.cfg, store)
	if err != nil {
		c.t.Fatal(err)
	}
	tn.n = n
	ctx, cancel := context.WithCancel(context.Background())
	tn.cancel, tn.done = cancel, make(chan struct{})
	go func() {
		defer close(tn.done)
		// ErrClosed: the test closed the node before this goroutine ran.
		if err := n.Run(ctx); err != nil && !errors.Is(err, ErrClosed) {
			c.t.Errorf("%s: Run: %v", tn.cfg.Self.Name, err)
		}
	}()
}

func (c *cluster) stop(tn *tnode) {
	if tn.n == nil {
		return
	}
	tn.n.Close()
	tn.cancel()
	<-tn.done
	tn.n = nil
}

func (c *cluster) proxy(i, j int) *faultnet.Proxy {
	if i > j {
		i, j = j, i
	}
	return c.proxies[[2]int{i, j}]
}

// isolate partitions node i from every other node.
func (c *cluster) isolate(i int, on bool) {
	for j := range c.nodes {
		if j != i {
			c.proxy(i, j).Partition(on)
		}
	}
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func peerState(n *Node, peer string) api.PeerStatus {
	for _, p := range n.Status().Peers {
		if p.Name == peer {
			return p
		}
	}
	return api.PeerStatus{}
}

// waitSynced waits until every pair of nodes is Connected and Established
// with nothing out of sync.
func (c *cluster) waitSynced(d time.Duration) {
	c.t.Helper()
	defer func() {
		if c.t.Failed() {
			for _, tn := range c.nodes {
				if tn.n != nil {
					s := tn.n.Status()
					c.t.Logf("%s: role %s disk %s", tn.cfg.Self.Name, s.Role, s.Disk)
					for _, p := range s.Peers {
						c.t.Logf("  %s: %s %s out-of-sync %d KiB, peer disk %s", p.Name, p.Connection, p.Replication, p.OutOfSyncKiB, p.Disk)
					}
				}
			}
		}
	}()
	waitFor(c.t, d, "all nodes connected, established, in sync", func() bool {
		for _, tn := range c.nodes {
			s := tn.n.Status()
			if s.Disk != "UpToDate" && !s.Witness {
				return false
			}
			for _, p := range s.Peers {
				if p.Connection != api.Connected || p.Replication != api.Established || p.OutOfSyncKiB != 0 {
					return false
				}
			}
		}
		return true
	})
}

// waitConnected waits until every pair is Connected.
func (c *cluster) waitConnected(d time.Duration) {
	c.t.Helper()
	waitFor(c.t, d, "all nodes connected", func() bool {
		for _, tn := range c.nodes {
			for _, p := range tn.n.Status().Peers {
				if p.Connection != api.Connected {
					return false
				}
			}
		}
		return true
	})
}

// bootstrap connects a fresh cluster and makes node 0 an UpToDate primary
// without an initial sync (new-current-uuid --clear-bitmap).
func (c *cluster) bootstrap() *Node {
	c.t.Helper()
	c.waitConnected(10 * time.Second)
	if err := c.nodes[0].n.NewCurrentUUID(true); err != nil {
		c.t.Fatal(err)
	}
	c.waitSynced(10 * time.Second)
	if err := c.nodes[0].n.Promote(false); err != nil {
		c.t.Fatal(err)
	}
	waitFor(c.t, 5*time.Second, "peers see the primary", func() bool {
		for _, tn := range c.nodes[1:] {
			if tn.n == nil {
				continue
			}
			if peerState(tn.n, c.nodes[0].cfg.Self.Name).Role != "Primary" {
				return false
			}
		}
		return true
	})
	return c.nodes[0].n
}

func fileHash(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return blake3.Sum256(b)
}

func readFileAt(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// assertEqualStores checks every node's backing file hashes the same.
func (c *cluster) assertEqualStores() {
	c.t.Helper()
	want := fileHash(c.t, c.nodes[0].path)
	for _, tn := range c.nodes[1:] {
		if tn.cfg.Self.Witness {
			continue
		}
		if got := fileHash(c.t, tn.path); got != want {
			c.t.Fatalf("store of %s differs from %s's (blake3 %x vs %x)", tn.cfg.Self.Name, c.nodes[0].cfg.Self.Name, got[:8], want[:8])
		}
	}
}

func randBlock(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for k := 0; k < 8 && i+k < n; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

// writer runs random writes (1-16 blocks of 4 KiB) into [lo, hi) until stop
// closes, checking after each acknowledged write that check accepts it.
func writer(t *testing.T, n *Node, seed uint64, lo, hi int64, stop <-chan struct{}, check func(off int64, data []byte)) int {
	r := rand.New(rand.NewPCG(seed, 7))
	count := 0
	for {
		select {
		case <-stop:
			return count
		default:
		}
		blocks := 1 + r.IntN(16)
		span := (hi - lo) / 4096
		off := lo + r.Int64N(span-int64(blocks)+1)*4096
		data := randBlock(r, blocks*4096)
		if err := n.WriteAt(context.Background(), data, off, r.IntN(20) == 0); err != nil {
			t.Errorf("write %d+%d: %v", off, len(data), err)
			return count
		}
		count++
		if check != nil {
			check(off, data)
		}
		if r.IntN(50) == 0 {
			if err := n.Flush(context.Background()); err != nil {
				t.Errorf("flush: %v", err)
			}
		}
	}
}

// durableStore remembers what its store would hold after a crash: writes
// reach the durable image only when a Flush (or FUA) that follows them
// completes.
type durableStore struct {
	Store
	mu      sync.Mutex
	pending []pendingWrite
	image   []byte
}

type pendingWrite struct {
	off  int64
	data []byte
}

func newDurableStore(s Store) *durableStore {
	return &durableStore{Store: s, image: make([]byte, s.Size())}
}

func (d *durableStore) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.Store.WriteAt(ctx, p, off, fua); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if fua {
		copy(d.image[off:], p)
	} else {
		d.pending = append(d.pending, pendingWrite{off, bytes.Clone(p)})
	}
	return nil
}

func (d *durableStore) zero(off, n int64, fua bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	z := make([]byte, n)
	if fua {
		copy(d.image[off:], z)
	} else {
		d.pending = append(d.pending, pendingWrite{off, z})
	}
}

func (d *durableStore) Trim(ctx context.Context, off, n int64, fua bool) error {
	if err := d.Store.Trim(ctx, off, n, fua); err != nil {
		return err
	}
	d.zero(off, n, fua)
	return nil
}

func (d *durableStore) WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error {
	if err := d.Store.WriteZeroes(ctx, off, n, noHole, fua); err != nil {
		return err
	}
	d.zero(off, n, fua)
	return nil
}

func (d *durableStore) Flush(ctx context.Context) error {
	d.mu.Lock()
	snap := d.pending
	d.pending = nil
	d.mu.Unlock()
	if err := d.Store.Flush(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	// Flushes on a secondary come from barriers, which are serialized, so
	// snapshots apply in order.
	for _, w := range snap {
		copy(d.image[w.off:], w.data)
	}
	d.mu.Unlock()
	return nil
}

func (d *durableStore) durable(off int64, n int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.image[off : off+int64(n)])
}

var _ = fmt.Sprint
