package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/harness"
	"github.com/repd/repd/internal/ctxtime"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// Follower writes like a Workload, but to whichever data node is Primary
// now, as a failover client would: it asks the nodes (their status, as
// `repctl status --json` shows it) which one is Primary and holds its
// lease, opens its connections there and writes until a request fails (a
// Secondary refuses writes with EPERM, a Primary without quorum fails them
// with EIO or suspends them) or hangs for longer than Stuck; then it looks
// again. Every write is recorded with the node that served it and the
// route (Epoch) it went by, on the History's one logical clock.
//
// A request that hangs is not given up: it stays outstanding on its
// connection and its outcome is recorded when it comes (an old Primary
// that completes a suspended write after its successor acknowledged one
// is exactly what CheckExclusive looks for). Stop waits a while for the
// outstanding requests before it closes their connections.
type Follower struct {
	Nodes        []*harness.Node // the data nodes
	Export       string
	Conns, Depth int
	Blocks       int64
	MaxBlocks    int64
	FlushEvery   int
	Seed         uint64
	H            *History
	// Stuck is how long a request may go without a reply before its
	// writer looks for the Primary again.
	Stuck time.Duration
	// OnSwitch, if set, is called with every writer paused before the
	// first write to a Primary other than the last one (from is nil at
	// the start); an error is recorded and the writes go on.
	OnSwitch func(from, to *harness.Node) error
	// Logf reports route changes; nil is quiet.
	Logf func(format string, args ...any)

	mu      sync.Mutex
	cond    *sync.Cond
	cur     *route // nil: looking for the Primary
	last    *route // the last route installed
	looking bool
	routes  []*route
	errs    map[string]map[uint32]int // per node: error replies by NBD error (0: connection broken)
	switchE []error

	maxLat      atomic.Int64
	outstanding sync.WaitGroup
	nout        atomic.Int64
	ctx         context.Context
}

// route is a set of connections to one node, opened once it was found
// Primary.
type route struct {
	node    *harness.Node
	epoch   int
	clients []*fclient
	broken  atomic.Bool // a request on it failed: look again
}

// fclient is one connection of a route and its outstanding requests.
type fclient struct {
	c       *nbdtest.Client
	mu      sync.Mutex
	pending int
	retired bool // its route was replaced: close it once nothing is pending
	closed  bool
	gone    atomic.Bool // the connection broke
}

func (fc *fclient) begin() {
	fc.mu.Lock()
	fc.pending++
	fc.mu.Unlock()
}

func (fc *fclient) end() {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.pending--
	if fc.retired && fc.pending == 0 && !fc.closed {
		fc.closed = true
		fc.c.Close()
	}
}

func (fc *fclient) retire() {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.retired = true
	if fc.pending == 0 && !fc.closed {
		fc.closed = true
		fc.c.Close()
	}
}

func (fc *fclient) close() {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if !fc.closed {
		fc.closed = true
		fc.c.Close()
	}
}

func (f *Follower) logf(format string, args ...any) {
	if f.Logf != nil {
		f.Logf(format, args...)
	}
}

// Run writes until ctx ends.
func (f *Follower) Run(ctx context.Context) error {
	if len(f.Nodes) == 0 || f.Conns < 1 || f.Depth < 1 || f.Blocks < f.MaxBlocks || f.MaxBlocks < 1 || f.Stuck <= 0 {
		return fmt.Errorf("follower: bad configuration: %d nodes, %d connections of depth %d, %d blocks in writes of up to %d, stuck after %v",
			len(f.Nodes), f.Conns, f.Depth, f.Blocks, f.MaxBlocks, f.Stuck)
	}
	f.mu.Lock()
	f.cond = sync.NewCond(&f.mu)
	f.errs = map[string]map[uint32]int{}
	f.ctx = ctx
	f.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer stop()
	var wg sync.WaitGroup
	for k := range f.Conns * f.Depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.writer(ctx, k)
		}()
	}
	wg.Wait()
	return nil
}

// Close waits up to grace for the requests still outstanding (an old
// Primary's suspended writes), then closes every connection, and returns
// how many were still outstanding. Call it after Run returned.
func (f *Follower) Close(grace time.Duration) int {
	done := make(chan struct{})
	go func() { f.outstanding.Wait(); close(done) }()
	left := 0
	select {
	case <-done:
	case <-time.After(grace):
		left = int(f.nout.Load())
	}
	f.mu.Lock()
	routes := slices.Clone(f.routes)
	f.mu.Unlock()
	for _, rt := range routes {
		for _, fc := range rt.clients {
			fc.close()
		}
	}
	<-done // closing the connections ends every request
	return left
}

// route returns the route to write by, looking for the Primary when there
// is none; nil once ctx ended.
func (f *Follower) route(ctx context.Context) *route {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if f.cur != nil && !f.cur.broken.Load() {
			return f.cur
		}
		if !f.looking {
			f.looking = true
			f.cur = nil
			f.mu.Unlock()
			rt := f.find(ctx)
			f.mu.Lock()
			f.looking = false
			if rt != nil {
				f.cur = rt
			}
			f.cond.Broadcast()
			continue
		}
		f.cond.Wait()
	}
}

// find looks for the Primary that holds its lease, and returns a route to
// it: the last one again if it is the same node and its connections work,
// else new connections (after OnSwitch when the node changed). nil once ctx
// ended.
func (f *Follower) find(ctx context.Context) *route {
	t0 := time.Now()
	next := 2 * time.Second
	for ctx.Err() == nil {
		n, seen := f.primary(ctx)
		if n == nil {
			if d := time.Since(t0); d > next {
				f.logf("follower: no Primary with its lease for %v: %s", d.Round(time.Millisecond), seen)
				next *= 2
			}
			ctxtime.Sleep(ctx, 50*time.Millisecond)
			continue
		}
		f.mu.Lock()
		last := f.last
		f.mu.Unlock()
		if last != nil && last.node == n && !last.dead() {
			last.broken.Store(false)
			return last
		}
		var clients []*fclient
		for range f.Conns {
			c, err := n.DialNBD()
			if err != nil {
				break
			}
			clients = append(clients, &fclient{c: c})
		}
		if len(clients) < f.Conns {
			for _, fc := range clients {
				fc.close()
			}
			ctxtime.Sleep(ctx, 50*time.Millisecond)
			continue
		}
		if f.OnSwitch != nil && (last == nil || last.node != n) {
			var from *harness.Node
			if last != nil {
				from = last.node
			}
			if err := f.OnSwitch(from, n); err != nil {
				f.mu.Lock()
				f.switchE = append(f.switchE, err)
				f.mu.Unlock()
			}
		}
		rt := &route{node: n, epoch: f.H.newEpoch(n.Name), clients: clients}
		f.mu.Lock()
		if last != nil {
			for _, fc := range last.clients {
				fc.retire()
			}
		}
		f.last = rt
		f.routes = append(f.routes, rt)
		f.mu.Unlock()
		from := "-"
		if last != nil {
			from = last.node.Name
		}
		f.logf("follower: route %d to %s (was %s)", rt.epoch, n.Name, from)
		return rt
	}
	return nil
}

// dead says whether a connection of the route is gone.
func (rt *route) dead() bool {
	for _, fc := range rt.clients {
		fc.mu.Lock()
		closed := fc.closed
		fc.mu.Unlock()
		if closed || fc.gone.Load() {
			return true
		}
	}
	return false
}

// primary asks every data node for its status and returns the one that is
// Primary and holds its lease (the one Primary, with quorum off); nil when
// there is none or more than one claims it. seen says what each said.
func (f *Follower) primary(ctx context.Context) (_ *harness.Node, seen string) {
	var found []*harness.Node
	for _, n := range f.Nodes {
		if !n.Running() {
			seen += n.Name + " down; "
			continue
		}
		t0 := time.Now()
		st, err := n.Status(ctx)
		if err != nil {
			seen += fmt.Sprintf("%s: %v; ", n.Name, err)
			continue
		}
		seen += fmt.Sprintf("%s %s/%s lease %q (%v); ", n.Name, st.Role, st.Disk, st.Lease, time.Since(t0).Round(time.Millisecond))
		if st.Role != api.Primary || st.VotesNeeded > 0 && st.Lease != "held" {
			continue
		}
		found = append(found, n)
	}
	if len(found) != 1 {
		return nil, seen
	}
	return found[0], seen
}

func (f *Follower) writer(ctx context.Context, k int) {
	rng := rand.New(rand.NewPCG(f.Seed, uint64(k)))
	buf := make([]byte, f.MaxBlocks*BlockSize)
	for n := 1; ; n++ {
		rt := f.route(ctx)
		if rt == nil {
			return
		}
		fc := rt.clients[k%len(rt.clients)]
		blocks := 1 + rng.Int64N(f.MaxBlocks)
		b := rng.Int64N(f.Blocks - blocks + 1)
		r := f.H.addOn(b, blocks, rt.node.Name, rt.epoch)
		p := buf[:blocks*BlockSize]
		for i := range blocks {
			fillBlock(p[i*BlockSize:], r.ID, b+i)
		}
		fua := rng.IntN(50) == 0
		flags := uint16(0)
		if fua {
			flags = nbd.CmdFlagFUA
		}
		ok := f.do(rt, fc, nbdtest.Request{Type: nbd.CmdWrite, Flags: flags, Offset: uint64(b * BlockSize), Length: uint32(len(p)), Payload: p},
			func(err error) { f.H.done(r, err) })
		if !ok {
			continue
		}
		if f.FlushEvery > 0 && n%f.FlushEvery == 0 {
			s := f.H.tick()
			f.do(rt, fc, nbdtest.Request{Type: nbd.CmdFlush}, func(err error) {
				if err == nil {
					f.H.flushed(s)
				}
			})
		}
	}
}

// do sends req on fc and waits up to Stuck for its reply, then hands it
// to record; a request that takes longer stays outstanding (record is
// called when it ends). It reports whether the route may be used on: a
// failed or stuck request marks it broken.
func (f *Follower) do(rt *route, fc *fclient, req nbdtest.Request, record func(error)) bool {
	fc.begin()
	f.outstanding.Add(1)
	f.nout.Add(1)
	finish := func(err error) {
		record(err)
		if err != nil {
			f.noteErr(rt.node.Name, err)
			if nbdtest.ErrorCode(err) == 0 {
				fc.gone.Store(true)
			}
		}
		fc.end()
		f.nout.Add(-1)
		f.outstanding.Done()
	}
	t0 := time.Now()
	call, err := fc.c.Start(req)
	if err != nil {
		finish(err)
		rt.broken.Store(true)
		return false
	}
	result := func() error {
		rep, err := call.Wait()
		if err == nil && rep.Error != 0 {
			err = &nbdtest.Error{Code: rep.Error}
		}
		return err
	}
	t := time.NewTimer(f.Stuck)
	defer t.Stop()
	select {
	case <-call.Done:
		err := result()
		if err == nil {
			f.lat(time.Since(t0))
		}
		finish(err)
		if err != nil {
			rt.broken.Store(true)
			return false
		}
		return true
	case <-t.C:
		go func() { finish(result()) }()
		rt.broken.Store(true)
		return false
	}
}

func (f *Follower) noteErr(node string, err error) {
	code := nbdtest.ErrorCode(err)
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.errs[node]
	if m == nil {
		m = map[uint32]int{}
		f.errs[node] = m
	}
	m[code]++
}

func (f *Follower) lat(d time.Duration) {
	for {
		old := f.maxLat.Load()
		if int64(d) <= old || f.maxLat.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// MaxLatency is the longest acknowledged request so far.
func (f *Follower) MaxLatency() time.Duration { return time.Duration(f.maxLat.Load()) }

// ResetLatency forgets the latencies seen so far.
func (f *Follower) ResetLatency() { f.maxLat.Store(0) }

// Errors are the error replies per node, by NBD error (0: the connection
// broke).
func (f *Follower) Errors() map[string]map[uint32]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]map[uint32]int{}
	for n, m := range f.errs {
		out[n] = map[uint32]int{}
		for c, k := range m {
			out[n][c] = k
		}
	}
	return out
}

// SwitchErrors are the errors OnSwitch returned.
func (f *Follower) SwitchErrors() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.switchE)
}

// Current is the node written to now, nil while looking.
func (f *Follower) Current() *harness.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur == nil {
		return nil
	}
	return f.cur.node
}
