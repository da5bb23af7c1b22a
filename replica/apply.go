package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/bufpool"
)

// applyWorkers is how many writes a receiving node applies at once. It
// bounds the snapshot copies in flight on a Secondary (the writes that
// need one go to the workers): each waits for its copy's fdatasync, which
// the copies in flight share, so with fewer workers than the Primary
// has writes in flight the copies, not the disk, set the pace (the
// bench's backup drill, 4k QD32 with a fresh snapshot on the Secondary:
// 16 workers kept 16 copies per round at most).
const applyWorkers = 64

// applier applies a peer's writes to the local store: in sequence order
// where they overlap, concurrently where they do not; a barrier waits for
// every earlier write, makes them durable, and holds back every later one.
// So the store only passes through states the primary's store passed
// through, and is never torn across a barrier.
type applier struct {
	s    *session
	n    *Node
	work chan *aitem
	wg   sync.WaitGroup

	mu          sync.Mutex
	cond        *sync.Cond
	items       []*aitem // received, not yet acknowledged, in sequence order
	active      []*aitem // received, not yet applied (the overlap checks scan only these)
	lastBarrier *aitem
	broken      bool          // an item failed: acked never advances again
	acked       atomic.Uint64 // cumulative: every item up to it is applied

	// The workers' items hold copies of the peer's data (and a Verify
	// its sums and, once applied, a read buffer): held counts their
	// buffers' sizes, and submit waits while a new item would take it
	// past budget (journal-size), unless nothing is held. The queue's
	// count alone (applyWorkers + cap(work)) let a peer pin 321 copies
	// of 1 MiB: a legitimate Primary sends no more than its own journal
	// holds, a hostile or broken one no more than this.
	held, budget int64
	room         *sync.Cond // signalled when held falls
}

type aitem struct {
	seq      uint64
	barrier  bool
	flags    protocol.Flags
	off, n   int64
	data     []byte
	buf      *[]byte
	sums     [][protocol.SumSize]byte // a Verify: hash the range and answer (verify.go)
	snap     string                   // a barrier that takes this snapshot (snapshot.go)
	deps     []*aitem
	done     chan struct{}
	finished bool
	inline   bool  // applied by the receiving goroutine (submit)
	flushed  bool  // a barrier that flushed the store (its ack says so)
	slot     int   // index in active
	cost     int64 // counted in held until finished
}

func newApplier(s *session) *applier {
	a := &applier{s: s, n: s.p.n, work: make(chan *aitem, 256), budget: s.p.n.cfg.JournalBytes}
	a.cond = sync.NewCond(&a.mu)
	a.room = sync.NewCond(&a.mu)
	a.wg.Add(applyWorkers)
	for range applyWorkers {
		go a.worker()
	}
	return a
}

// close stops taking work; wait waits for the queued work to finish.
func (a *applier) close() { close(a.work) }

func (a *applier) wait() { a.wg.Wait() }

func (a *applier) write(seq uint64, f protocol.Flags, off, n int64, data []byte) error {
	a.n.mu.Lock()
	role := a.n.role
	a.n.mu.Unlock()
	if role == api.Primary {
		return fmt.Errorf("%w: peer %s sent a write to this Primary (%s)", ErrRefused, a.s.p.cfg.Name, a.n.cfg.Self.Name)
	}
	if f&protocol.FlagResync != 0 {
		a.s.p.sync.recvResync.Add(n)
	}
	it := &aitem{seq: seq, flags: f, off: off, n: n, done: make(chan struct{})}
	a.submit(it, data)
	return nil
}

func (a *applier) barrier(seq uint64) {
	a.submit(&aitem{seq: seq, barrier: true, done: make(chan struct{})}, nil)
}

// snapshot queues a Snapshot frame: a barrier that takes the snapshot.
func (a *applier) snapshot(seq uint64, name string) error {
	a.n.mu.Lock()
	role := a.n.role
	a.n.mu.Unlock()
	if role == api.Primary {
		return fmt.Errorf("%w: peer %s sent a snapshot point to this Primary (%s)", ErrRefused, a.s.p.cfg.Name, a.n.cfg.Self.Name)
	}
	a.submit(&aitem{seq: seq, barrier: true, snap: name, done: make(chan struct{})}, nil)
	return nil
}

// The receiving goroutine applies a write itself when it overlaps nothing
// in flight and is at most inlineMax bytes, or at most one frame's worth
// without FUA (no fdatasync holding up the frames behind it): a write to
// the page cache costs less than handing it to a worker, which takes a
// copy of the data (for 1 MiB writes under protocol C: secondary CPU per
// write 380 -> 280 µs, IOPS +4-5 %), a channel send and a wake-up. A
// write whose range a snapshot still needs copied goes to the workers
// (submit asks Node.preserveCopies): copies made one after the other here
// cost an fdatasync each (two before the store's format 2) and held the
// Primary's protocol-C writes to a few hundred a second (the bench's
// backup drill: 0.08x with a fresh snapshot on the Secondary).
const inlineMax = 16 << 10

// inline reports whether the receiving goroutine applies it itself.
func inline(it *aitem, data []byte) bool {
	if len(it.deps) != 0 || it.barrier || it.sums != nil || len(data) == 0 {
		return false
	}
	return len(data) <= inlineMax || it.flags&protocol.FlagFUA == 0
}

// submit queues it, with data (only valid during the call) as its payload,
// or applies it at once if inline says so.
func (a *applier) submit(it *aitem, data []byte) {
	a.mu.Lock()
	for _, x := range a.active {
		if !x.barrier && (it.barrier || x.off < it.off+it.n && it.off < x.off+x.n) {
			it.deps = append(it.deps, x)
		}
	}
	if b := a.lastBarrier; b != nil && !b.finished {
		it.deps = append(it.deps, b)
	}
	if it.barrier {
		a.lastBarrier = it
	}
	a.items = append(a.items, it)
	it.slot = len(a.active)
	a.active = append(a.active, it)
	a.mu.Unlock()
	if inline(it, data) && !a.n.preserveCopies(it.off, it.n) {
		it.data = data // borrowed: apply returns before the caller reuses it
		it.inline = true
		a.apply(it)
		return
	}
	a.reserve(it, len(data))
	if len(data) > 0 {
		it.data, it.buf = bufpool.Get(len(data))
		copy(it.data, data)
	}
	a.work <- it
}

// reserve counts what a worker's item will hold (a copy of data bytes, or
// a Verify's sums and read buffer) in held, waiting for room first.
func (a *applier) reserve(it *aitem, data int) {
	var cost int64
	switch {
	case it.sums != nil:
		cost = int64(bufpool.Cap(int(it.n)) + len(it.sums)*protocol.SumSize)
	case data > 0:
		cost = int64(bufpool.Cap(data))
	default:
		return
	}
	a.mu.Lock()
	for a.held > 0 && a.held+cost > a.budget {
		a.room.Wait()
	}
	a.held += cost
	it.cost = cost
	a.mu.Unlock()
}

func (a *applier) worker() {
	defer a.wg.Done()
	for it := range a.work {
		for _, d := range it.deps {
			<-d.done
		}
		it.deps = nil
		a.apply(it)
	}
}

// apply applies one item whose dependencies are done, and finishes it.
func (a *applier) apply(it *aitem) {
	n := a.n
	p := a.s.p
	ctx := context.Background()
	var err error
	fua := it.flags&protocol.FlagFUA != 0
	if n.detached.Load() {
		// The local disk failed: apply and ack nothing more.
		if it.snap != "" {
			a.applySnapshot(it, errors.New("the local disk Failed (detached)"))
		}
		a.finish(it, false)
		return
	}
	switch {
	case it.barrier:
		if !n.lazySnapshot(it.snap) {
			err = n.st.Flush(ctx)
			it.flushed = err == nil
		}
		if it.snap != "" {
			a.applySnapshot(it, err) // answered before the ack that follows
		}
	case it.sums != nil:
		err = a.verifyItem(it)
	default:
		if it.flags&protocol.FlagResync == 0 {
			n.noteApplied(p, it.seq, it.off, it.n)
			if n.snapPacing() {
				n.lastPeerWrite.Store(time.Now().UnixNano()) // snapshot reads yield to it
			}
		}
		// Peers that do not get this write from us in sync miss it.
		if n.allMask()&^n.recvAtomic.Load()&^p.bit != 0 {
			n.markMissed(p, it.seq, it.off, it.n)
		}
		al := false
		if it.flags&protocol.FlagResync == 0 {
			// Into the activity log first, as on the Primary: this
			// node acks the write once it is in the page cache, and
			// should the system go down before the disk has it, the
			// log says where to resync (recoverLostWrites). A resync
			// write needs none: its bit is cleared only once synced.
			if aerr := n.meta.Activate(ctx, it.off, it.n); aerr != nil {
				// The meta file cannot take the transaction
				// (diskfail.go): the disk is not written any more.
				n.detach("activity log transaction", aerr)
				a.finish(it, false)
				return
			}
			al = true
		}
		if n.snap != nil {
			// A snapshot taken with no Primary connected waits for
			// this write, or this write for it (snapshot.go).
			n.snapGate.RLock()
			n.preserve(it.off, it.n)
		}
		switch {
		case it.flags&protocol.FlagTrim != 0:
			err = n.st.Trim(ctx, it.off, it.n, fua)
		case it.flags&protocol.FlagZeroes != 0:
			err = n.st.WriteZeroes(ctx, it.off, it.n, it.flags&protocol.FlagNoHole != 0, fua)
		default:
			err = n.st.WriteAt(ctx, it.data, it.off, fua)
		}
		if n.snap != nil {
			n.snapGate.RUnlock()
		}
		if al {
			n.meta.Complete(it.off, it.n)
		}
	}
	if err != nil {
		n.log.Error("applying peer write failed", "peer", p.cfg.Name, "seq", it.seq, "err", err)
		if it.sums == nil && n.diskError(err) {
			n.detach("apply write", err)
		} else {
			a.s.fail(fmt.Errorf("apply write from %s: %w", p.cfg.Name, err))
		}
	}
	a.finish(it, err == nil)
}

func (a *applier) finish(it *aitem, ok bool) {
	bufpool.Put(it.buf)
	it.buf, it.data = nil, nil
	a.mu.Lock()
	if it.cost > 0 {
		a.held -= it.cost
		it.cost = 0
		a.room.Broadcast()
	}
	it.finished = true
	close(it.done)
	last := len(a.active) - 1
	a.active[it.slot] = a.active[last]
	a.active[it.slot].slot = it.slot
	a.active[last] = nil
	a.active = a.active[:last]
	i := 0
	var upto uint64
	for i < len(a.items) && a.items[i].finished {
		upto = a.items[i].seq
		a.items[i] = nil
		i++
	}
	a.items = a.items[i:]
	if !ok {
		a.broken = true
	}
	if i > 0 && !a.broken {
		a.acked.Store(upto)
		a.n.lastApplied.Store(upto) // for elections (election.go)
		a.n.lastAppliedBy.Store(uint32(a.s.p.cfg.ID))
	}
	if len(a.items) == 0 {
		a.cond.Broadcast()
	}
	broken := a.broken
	a.mu.Unlock()
	// A barrier's ack tells the Primary that everything before it is
	// durable here; a lazy snapshot's barrier that did not flush gets the
	// plain cumulative ack only.
	if it.barrier && it.flushed && ok && !broken && !a.s.enqueue(ctrlMsg{t: protocol.TypeBarrierAck, seq: it.seq}) {
		return
	}
	if !it.inline {
		// A worker's item: send the ack (and a barrier's) from here. The
		// receiving goroutine acks what it applied itself before it waits
		// for more frames (receive).
		a.s.pump()
	}
}

// drain waits until every received write is applied.
func (a *applier) drain() {
	a.mu.Lock()
	for len(a.items) > 0 {
		a.cond.Wait()
	}
	a.mu.Unlock()
}

// markMissed marks a write applied from p out of sync toward the other
// peers that do not receive writes in sync with us. It holds markMu for
// reading so that a settle (settleLocked) cannot clear a peer's bitmap
// between the check and the mark: the mark would outlive the clear.
func (n *Node) markMissed(p *peer, seq uint64, off, length int64) {
	n.markMu.RLock()
	defer n.markMu.RUnlock()
	miss := n.allMask() &^ n.recvAtomic.Load() &^ p.bit
	for _, q := range n.peers {
		if miss&q.bit != 0 {
			q.marks.soft(p, seq, q.bitmap.Count() > 0)
			q.bitmap.Set(off, length)
		}
	}
}

// waitRange waits until every received write overlapping [off, off+n) is
// applied. Called by the receiver, the only submitter, so none is added
// meanwhile.
func (a *applier) waitRange(off, n int64) {
	var wait []*aitem
	a.mu.Lock()
	for _, x := range a.active {
		if !x.barrier && x.off < off+n && off < x.off+x.n {
			wait = append(wait, x)
		}
	}
	a.mu.Unlock()
	for _, x := range wait {
		<-x.done
	}
}
