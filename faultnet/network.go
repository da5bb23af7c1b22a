package faultnet

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Network joins named in-process nodes over loopback TCP, with a Proxy
// between every ordered pair (dialer → listener), made on first use. Tests
// give each node the address Addr(self, peer) for each peer, then
// partition, heal, shape and cut links by name.
//
// A pair is partitioned if Partition(a, b) was called and not healed, or if
// either node is isolated. Partitions cut both directions and both proxies
// of a pair (a dialing b, and b dialing a).
type Network struct {
	// Logger is given to each proxy, with the pair; nil discards.
	Logger *slog.Logger

	seed int64

	mu       sync.Mutex
	addrs    map[string]string // node → real listening address
	links    map[pair]Link     // shaping of traffic from → to
	parted   map[pair]bool     // unordered: key made by unordered()
	isolated map[string]bool
	proxies  map[pair]*Proxy // dialer → listener
	lns      []net.Listener
	closed   bool
}

type pair struct{ from, to string }

func unordered(a, b string) pair {
	if b < a {
		a, b = b, a
	}
	return pair{a, b}
}

// NewNetwork returns an empty Network. A seed of 0 picks one from the clock;
// each proxy's seed is derived from it and the pair's names.
func NewNetwork(seed int64) *Network {
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	return &Network{
		seed:     seed,
		addrs:    make(map[string]string),
		links:    make(map[pair]Link),
		parted:   make(map[pair]bool),
		isolated: make(map[string]bool),
		proxies:  make(map[pair]*Proxy),
	}
}

// Seed is the seed of the network's randomness.
func (n *Network) Seed() int64 { return n.seed }

// Listen makes a loopback listener for node and registers it. Close closes
// it too.
func (n *Network) Listen(node string) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		ln.Close()
		return nil, ErrClosed
	}
	n.lns = append(n.lns, ln)
	n.addrs[node] = ln.Addr().String()
	return ln, nil
}

// Register tells the network that node listens on addr. Proxies already
// made keep their old target.
func (n *Network) Register(node, addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.addrs[node] = addr
}

// Addr is the address from dials to reach to: a proxy, started on first
// use. to must be registered.
func (n *Network) Addr(from, to string) (string, error) {
	p, err := n.proxy(from, to)
	if err != nil {
		return "", err
	}
	return p.Addr(), nil
}

// Dial connects from to to through their proxy.
func (n *Network) Dial(ctx context.Context, from, to string) (net.Conn, error) {
	addr, err := n.Addr(from, to)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// Stats reports the proxy from dials to reach to; zero if there is none yet.
func (n *Network) Stats(from, to string) Stats {
	n.mu.Lock()
	p := n.proxies[pair{from, to}]
	n.mu.Unlock()
	if p == nil {
		return Stats{}
	}
	return p.Stats()
}

func (n *Network) proxy(from, to string) (*Proxy, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	k := pair{from, to}
	if p := n.proxies[k]; p != nil {
		return p, nil
	}
	target, ok := n.addrs[to]
	if !ok {
		return nil, fmt.Errorf("faultnet: unknown node %q", to)
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s\x00%s", from, to)
	p, err := NewProxy("127.0.0.1:0", target, n.seed^int64(h.Sum64()))
	if err != nil {
		return nil, err
	}
	if n.Logger != nil {
		p.Logger = n.Logger.With("from", from, "to", to)
	}
	n.proxies[k] = p
	n.applyLocked(k)
	if err := p.Start(); err != nil {
		delete(n.proxies, k)
		p.Close()
		return nil, err
	}
	return p, nil
}

// applyLocked brings the proxy of k up to date with links and partitions.
func (n *Network) applyLocked(k pair) {
	p := n.proxies[k]
	if p == nil {
		return
	}
	p.SetLink(n.links[k], n.links[pair{k.to, k.from}])
	p.Partition(n.parted[unordered(k.from, k.to)] || n.isolated[k.from] || n.isolated[k.to])
}

func (n *Network) applyAllLocked() {
	for k := range n.proxies {
		n.applyLocked(k)
	}
}

// SetLink sets the shaping of traffic from → to, on connections dialed by
// either side.
func (n *Network) SetLink(from, to string, l Link) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.links[pair{from, to}] = l
	n.applyLocked(pair{from, to})
	n.applyLocked(pair{to, from})
}

// Partition blackholes the link between a and b (see Proxy.Partition).
func (n *Network) Partition(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.parted[unordered(a, b)] = true
	n.applyLocked(pair{a, b})
	n.applyLocked(pair{b, a})
}

// Heal undoes Partition(a, b). A pair with an isolated node stays
// partitioned.
func (n *Network) Heal(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.parted, unordered(a, b))
	n.applyLocked(pair{a, b})
	n.applyLocked(pair{b, a})
}

// Isolate partitions node from every other node, including ones that
// appear later.
func (n *Network) Isolate(node string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.isolated[node] = true
	n.applyAllLocked()
}

// HealAll undoes every Partition and Isolate.
func (n *Network) HealAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.parted)
	clear(n.isolated)
	n.applyAllLocked()
}

// Cut resets every connection between a and b, dialed by either.
func (n *Network) Cut(a, b string) {
	n.mu.Lock()
	ps := []*Proxy{n.proxies[pair{a, b}], n.proxies[pair{b, a}]}
	n.mu.Unlock()
	for _, p := range ps {
		if p != nil {
			p.CutAll()
		}
	}
}

// Close closes every proxy and every listener made by Listen, and returns
// after all proxy goroutines have exited.
func (n *Network) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	proxies, lns := n.proxies, n.lns
	n.mu.Unlock()
	for _, p := range proxies {
		p.Close()
	}
	for _, ln := range lns {
		ln.Close()
	}
	return nil
}
