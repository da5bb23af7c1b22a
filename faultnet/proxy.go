package faultnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultMaxInFlight is Proxy.MaxInFlight when it is 0.
	DefaultMaxInFlight = 4 << 20
	// defaultChunkSize is Proxy.ChunkSize when it is 0.
	defaultChunkSize = 32 << 10
	// defaultDialTimeout is Proxy.DialTimeout when it is 0.
	defaultDialTimeout = 5 * time.Second
)

// ErrClosed is returned by Start on a closed Proxy.
var ErrClosed = errors.New("faultnet: proxy closed")

// Proxy is a TCP proxy that forwards each accepted connection to a target,
// shaping each direction with a Link. "Up" is client→target, "down" is
// target→client.
//
// NewProxy binds the listener, Start starts accepting, Close stops
// everything. The control methods (SetLink, Partition, Stall, CutAll) may be
// called at any time from any goroutine.
type Proxy struct {
	// Logger receives connection events at debug level; nil discards.
	Logger *slog.Logger
	// MaxInFlight is how many bytes a direction of one connection may hold
	// (read from the source, not yet written); 0 means DefaultMaxInFlight.
	MaxInFlight int64
	// ChunkSize is the largest single read, and so the unit of delay,
	// corruption and loss; 0 means DefaultChunkSize.
	ChunkSize int
	// DialTimeout bounds the dial to the target; 0 means DefaultDialTimeout.
	DialTimeout time.Duration

	target string
	seed   int64
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	pool   sync.Pool

	links       [2]atomic.Pointer[Link] // up, down
	partitioned atomic.Bool             // also under mu; read without it on the write path

	mu      sync.Mutex
	stalled bool
	changed chan struct{} // closed and replaced when partitioned or stalled change
	conns   map[*conn]struct{}
	started bool
	closed  bool
	nconn   uint64

	stats counters
}

// NewProxy binds listen (such as "127.0.0.1:0") and returns a Proxy that
// will forward to target once started. A seed of 0 picks one from the clock;
// Seed reports the seed in use.
func NewProxy(listen, target string, seed int64) (*Proxy, error) {
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen %s: %w", listen, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:  target,
		seed:    seed,
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		changed: make(chan struct{}),
		conns:   make(map[*conn]struct{}),
	}
	p.links[up].Store(&Link{})
	p.links[down].Store(&Link{})
	return p, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is the address connections are forwarded to.
func (p *Proxy) Target() string { return p.target }

// Seed is the seed of the proxy's randomness.
func (p *Proxy) Seed() int64 { return p.seed }

// Start starts accepting connections. It returns at once.
func (p *Proxy) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.started {
		return errors.New("faultnet: proxy already started")
	}
	p.started = true
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	if p.MaxInFlight <= 0 {
		p.MaxInFlight = DefaultMaxInFlight
	}
	if p.ChunkSize <= 0 {
		p.ChunkSize = defaultChunkSize
	}
	if p.DialTimeout <= 0 {
		p.DialTimeout = defaultDialTimeout
	}
	size := p.ChunkSize
	p.pool.New = func() any { b := make([]byte, size); return &b }
	p.Logger.Info("faultnet proxy", "listen", p.Addr(), "target", p.target, "seed", p.seed)
	p.wg.Add(1)
	go p.accept()
	return nil
}

// Close stops accepting, resets every connection and returns after all of
// the proxy's goroutines have exited. It may be called more than once, and
// without Start.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := p.snapshot()
	p.mu.Unlock()
	err := p.ln.Close()
	p.cancel()
	for _, c := range conns {
		c.shutdown(true)
	}
	p.wg.Wait()
	return err
}

// SetLink sets the shaping of both directions. It applies to chunks read
// from now on; chunks already queued keep their release times.
func (p *Proxy) SetLink(up, down Link) {
	p.links[0].Store(&up)
	p.links[1].Store(&down)
}

// Links reports the shaping of both directions.
func (p *Proxy) Links() (up, down Link) {
	return *p.links[0].Load(), *p.links[1].Load()
}

// Partition(true) blackholes the link: nothing is read from either side
// (so each sender's TCP window fills, as behind a real partition) and
// nothing already read is written. Connections stay open. New connections
// are accepted but the target is not dialed until the partition heals.
//
// Partition(false) heals: data held during the partition is delivered in
// order, as TCP would retransmit it, and pending connections are dialed.
// Nothing is discarded; to model a partition long enough for TCP to give up,
// call CutAll.
func (p *Proxy) Partition(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partitioned.Load() == on {
		return
	}
	p.partitioned.Store(on)
	p.changedLocked()
}

// Partitioned reports whether the proxy is partitioned.
func (p *Proxy) Partitioned() bool { return p.partitioned.Load() }

// Stalled reports whether the proxy is stalled.
func (p *Proxy) Stalled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalled
}

// Stall(true) stops reading from both sides without closing anything: each
// sender's TCP window fills. Data already read is still delivered, and new
// connections are still dialed. Stall(false) resumes reading.
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled == on {
		return
	}
	p.stalled = on
	p.changedLocked()
}

// changedLocked wakes everyone waiting on the partition or stall state, and
// interrupts reads in progress so that a read cannot slip past a stall.
func (p *Proxy) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
	if !p.stalled && !p.partitioned.Load() {
		return
	}
	now := time.Now()
	for c := range p.conns {
		c.client.SetReadDeadline(now)
		if c.server != nil {
			c.server.SetReadDeadline(now)
		}
	}
}

// CutAll resets (RST) every current connection, including those waiting
// for a partition to heal. The proxy goes on accepting.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	conns := p.snapshot()
	p.mu.Unlock()
	for _, c := range conns {
		if c.shutdown(true) {
			p.stats.cut.Add(1)
		}
	}
}

func (p *Proxy) snapshot() []*conn {
	conns := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	return conns
}

// Stats reports what the proxy has done so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := int64(len(p.conns))
	p.mu.Unlock()
	return Stats{
		Up:         p.stats.dir[up].load(),
		Down:       p.stats.dir[down].load(),
		Accepted:   p.stats.accepted.Load(),
		Active:     active,
		DialErrors: p.stats.dialErrors.Load(),
		Cut:        p.stats.cut.Load(),
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			p.Logger.Warn("faultnet accept", "err", err)
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p.stats.accepted.Add(1)
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			nc.Close()
			return
		}
		p.nconn++
		c := newConn(p, p.nconn, nc)
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go c.serve()
	}
}

// waitHealed waits until the proxy is not partitioned.
func (p *Proxy) waitHealed(ctx context.Context) bool {
	for {
		p.mu.Lock()
		part, ch := p.partitioned.Load(), p.changed
		p.mu.Unlock()
		if !part {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// gateRead waits until reading is allowed (neither stalled nor
// partitioned). If the last read was interrupted by a deadline, it clears
// the deadline while holding mu, so that a stall that starts after the check
// sets a new deadline after the clear and interrupts the next read.
func (p *Proxy) gateRead(ctx context.Context, src net.Conn, interrupted *bool) bool {
	for {
		p.mu.Lock()
		if !p.stalled && !p.partitioned.Load() {
			if *interrupted {
				src.SetReadDeadline(time.Time{})
				*interrupted = false
			}
			p.mu.Unlock()
			return true
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// partitionWait returns a channel that is closed when the partition state
// changes, or nil if the proxy is not partitioned.
func (p *Proxy) partitionWait() <-chan struct{} {
	if !p.partitioned.Load() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.partitioned.Load() {
		return nil
	}
	return p.changed
}

func (p *Proxy) link(d direction) Link { return *p.links[d].Load() }

func (p *Proxy) getBuf() *[]byte  { return p.pool.Get().(*[]byte) }
func (p *Proxy) putBuf(b *[]byte) { p.pool.Put(b) }
