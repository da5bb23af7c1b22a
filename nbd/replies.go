package nbd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// copyReplyMax: read data up to this size is copied into the pending
// replies; larger data goes to the socket from the request's buffer. A
// queue of copied replies must fit in maxRetained, or every batch is a
// fresh allocation that the GC and page faults pay for: at 64 KiB, 32
// replies in flight made 2 MiB batches, and 64 KiB random reads at QD32
// ran at 4.7k IOPS against repd where nbdkit did 19k (16 KiB: 25k, and
// 32 KiB reads doubled).
const copyReplyMax = 16 << 10

// writeChunk bounds one write to the socket under the write deadline: a
// client must take each piece within WriteTimeout (at the default 30s, at
// least about 10 KB/s while replies wait). A write that timed out is not
// resumed: crypto/tls fails for good, and on a plain socket the bytes
// written before the deadline could be a trickle into the kernel's
// buffers, not the client reading.
const writeChunk = 256 << 10

// maxRetained bounds each of the two batch buffers a connection keeps for
// reuse between writes (the pending batch and the spare); a larger one (a
// burst of replies) is left to the GC.
const maxRetained = 1 << 20

// ErrWriteTimeout ends a connection whose client took no reply bytes for
// WriteTimeout.
var ErrWriteTimeout = errors.New("nbd: client does not read its replies")

// replies writes a connection's replies with one system call for all the
// replies that complete while a write is under way. Whoever adds a reply
// when no write is under way becomes the writer: it writes what is pending,
// then again whatever others added meanwhile, until nothing is left. The
// others only append and return, without waiting for the socket or for
// each other. No reply waits for a later one, so batching adds no latency.
//
// A reply keeps its request's gate budget (one request and its bytes)
// until it is written, and its bytes count in the gate's backlog from
// reply until written (the pending batch counts what it holds, see add):
// a client that does not read stops the reader, the queue does not grow.
// Replies go to the socket in pieces of at most writeChunk, each under a
// deadline WriteTimeout ahead (refreshed when an eighth of it has passed);
// a piece not taken in time fails the connection.
type replies struct {
	nc      net.Conn
	g       *gate
	timeout time.Duration // 0: none
	// failed is called once, by the writer whose write failed, before
	// any budget is given back: it must stop the reader (close the gate),
	// or the freed budget would admit requests for a dead connection.
	failed func(error)
	once   sync.Once

	mu       sync.Mutex
	pending  []byte // replies not yet handed to the socket
	pendN    int    // gate requests held by the pending replies
	pendCost int64  // and their bytes
	pendHeld int64  // what pending counts in the backlog (add)
	pendBase int    // pending's capacity when it was taken for reuse
	spare    []byte // the writer's previous batch, reused
	writing  bool   // a writer is at work (outside mu)
	armed    bool   // queued replies wait for their completer's flush
	waiters  int    // big replies waiting for the writer's turn, and drain
	turn     *sync.Cond
	err      error

	// try writes what the socket takes at once without blocking: the
	// bytes taken, and an error only if the connection failed (nil: no
	// asynchronous completions, see queue). flushFn is flush, made once.
	try     func([]byte) (int, error)
	flushFn func()

	deadline time.Time // the socket's write deadline; the writer's

	// sends counts the hand-overs of replies to the socket (the writer's;
	// tests watch how replies are batched).
	sends atomic.Int64
}

func (w *replies) init(nc net.Conn, g *gate, timeout time.Duration, failed func(error)) {
	w.nc = nc
	w.g = g
	w.timeout = max(timeout, 0)
	w.failed = failed
	w.turn = sync.NewCond(&w.mu)
	w.flushFn = w.flush
}

// reply sends one simple reply header and its data (nil for none). held
// says whether the reply holds a gate request and cost bytes, given back
// once it is written or the connection failed. It returns after the reply
// is written (by this goroutine or by the writer at work, which may still
// be at it) or the connection failed; the error is the connection's first
// write error. With others (more requests in flight), a reply that starts
// a write first lets the goroutines that are ready to reply add theirs.
func (w *replies) reply(head []byte, data []byte, others, held bool, cost int64) error {
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		w.give(held, cost)
		return err
	}
	if len(data) <= copyReplyMax {
		w.add(head, data)
		if held {
			w.pendN++
			w.pendCost += cost
		}
		if w.writing {
			// The writer at work sends it before it stops.
			w.mu.Unlock()
			return nil
		}
		w.writing = true
		if others {
			// Let workers that are ready to reply add theirs to this write.
			w.mu.Unlock()
			runtime.Gosched()
			w.mu.Lock()
		}
	} else {
		// data is the request's buffer, freed when we return: write it
		// ourselves, in turn, after what is pending.
		w.g.backlog.Add(int64(len(data)))
		for w.writing {
			w.waiters++
			w.turn.Wait()
			w.waiters--
		}
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			w.g.sent(int64(len(data)))
			w.give(held, cost)
			return err
		}
		w.writing = true
		w.add(head, nil) // head stays on the caller's stack
		batch, bh, pn, pc := w.take()
		w.mu.Unlock()
		err := w.send(batch, data)
		w.fail(err)
		w.g.sent(bh + int64(len(data)))
		w.g.releaseN(pn, pc)
		w.give(held, cost)
		w.mu.Lock()
		w.keep(batch)
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	return w.writePending(false)
}

// writePending is the writer's loop: it writes what is pending, then what
// was added meanwhile, until nothing is left, and ends the writer's turn.
// Called with mu held by the writer (writing set); it returns with mu
// released and the connection's first write error. With try, each batch
// is first offered to the socket without blocking (w.try): the goroutine
// that completes asynchronous writes must not wait for a client; what the
// socket does not take at once is left to a goroutine of its own, which
// goes on as the writer.
func (w *replies) writePending(try bool) error {
	for len(w.pending) > 0 && w.err == nil {
		batch, bh, pn, pc := w.take()
		w.mu.Unlock()
		var err error
		if try {
			var k int
			if k, err = w.try(batch); err == nil && k < len(batch) {
				go w.finishBatch(batch, k, bh, pn, pc)
				return nil
			}
		} else {
			err = w.send(batch, nil)
		}
		w.sentBatch(batch, bh, pn, pc, err)
	}
	if w.err != nil && len(w.pending) > 0 {
		// Never written: give their budget back.
		w.g.sent(w.pendHeld)
		w.g.releaseN(w.pendN, w.pendCost)
		w.pending, w.pendN, w.pendCost = w.pending[:0], 0, 0
		w.pendHeld, w.pendBase = 0, cap(w.pending)
	}
	w.writing = false
	if w.waiters > 0 {
		w.turn.Broadcast()
	}
	err := w.err
	w.mu.Unlock()
	return err
}

// sentBatch accounts for a batch written (or failed): its backlog (bh,
// what it counted there) and budget are given back, its buffer kept. It
// returns with mu held.
func (w *replies) sentBatch(batch []byte, bh int64, pn int, pc int64, err error) {
	w.fail(err)
	w.g.sent(bh)
	w.g.releaseN(pn, pc)
	w.mu.Lock()
	w.keep(batch)
	if err != nil && w.err == nil {
		w.err = err
	}
}

// finishBatch writes the rest of a batch the socket did not take at once
// (from byte k), blocking under the write timeout, and goes on as the
// writer.
func (w *replies) finishBatch(batch []byte, k int, bh int64, pn int, pc int64) {
	w.sentBatch(batch, bh, pn, pc, w.send(batch[k:], nil))
	w.writePending(false)
}

// queue adds the reply head (at most copyReplyMax bytes, copied) of a
// request completed by a goroutine that must not block: an AsyncWriter's
// completion. It holds one gate request and cost bytes until written. The
// reply goes with the writer at work, or with the flush that queue returns
// to the first of a run of completions (nil to the others): the completer
// calls it once it has queued every reply it completes at that moment, and
// those replies leave in one system call.
func (w *replies) queue(head []byte, cost int64) (flush func()) {
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		w.give(true, cost)
		return nil
	}
	w.add(head, nil)
	w.pendN++
	w.pendCost += cost
	if w.writing || w.armed {
		w.mu.Unlock()
		return nil
	}
	w.armed = true
	w.mu.Unlock()
	return w.flushFn
}

// flush writes the replies queue queued, without blocking on the socket
// (writePending with try).
func (w *replies) flush() {
	w.mu.Lock()
	w.armed = false
	if w.writing {
		// The writer at work sends them before it stops.
		if w.waiters > 0 {
			w.turn.Broadcast()
		}
		w.mu.Unlock()
		return
	}
	w.writing = true
	w.writePending(true)
}

// drain waits until no writer is at work and no flush is due: every reply
// queued is written or failed.
func (w *replies) drain() {
	w.mu.Lock()
	for w.writing || w.armed {
		w.waiters++
		w.turn.Wait()
		w.waiters--
	}
	w.mu.Unlock()
}

// add appends a reply (head, then data) to the pending batch and counts
// it in the backlog. The batch counts what it holds: its length, or, if
// more, its capacity beyond the buffer it started from (a spare, within
// maxRetained). It grows as append grows it, by a quarter and more, but
// not past the capacity the backlog bound leaves it (unless the reply
// needs more). Counted by its length and grown by append, a batch held
// 1.25 times MaxReplyBacklog. Under mu.
func (w *replies) add(head, data []byte) {
	if need := len(w.pending) + len(head) + len(data); need > cap(w.pending) {
		// append's growth, before it rounds up to the allocation's
		// size (by at most a page, 8 KiB).
		c := cap(w.pending)
		switch {
		case need > 2*c:
			c = need
		case c < 256:
			c *= 2
		default:
			for c < need {
				c += (c + 768) / 4
			}
		}
		room := w.g.maxBacklog - (w.g.backlog.Load() - w.pendHeld) + int64(w.pendBase)
		if int64(c)+8<<10 > room {
			p := make([]byte, len(w.pending), max(need, int(min(int64(c), room))))
			copy(p, w.pending)
			w.pending = p
		}
	}
	w.pending = append(w.pending, head...)
	w.pending = append(w.pending, data...)
	held := int64(max(len(w.pending), cap(w.pending)-w.pendBase))
	w.g.backlog.Add(held - w.pendHeld)
	w.pendHeld = held
}

// take takes the pending batch for a write, with what it counts in the
// backlog and the gate budget it holds; the spare becomes the pending
// batch. Under mu.
func (w *replies) take() (batch []byte, held int64, pn int, pc int64) {
	batch, held, pn, pc = w.pending, w.pendHeld, w.pendN, w.pendCost
	w.pending, w.pendN, w.pendCost = w.spare[:0], 0, 0
	w.pendHeld, w.pendBase = 0, cap(w.pending)
	w.spare = nil
	return batch, held, pn, pc
}

// keep keeps a written batch's buffer for the next batch, unless it grew
// beyond maxRetained. Under mu.
func (w *replies) keep(batch []byte) {
	if cap(batch) <= maxRetained {
		w.spare = batch[:0]
	} else {
		w.spare = nil
	}
}

// fail reports a write error, once.
func (w *replies) fail(err error) {
	if err != nil && w.failed != nil {
		w.once.Do(func() { w.failed(err) })
	}
}

// give returns a reply's own gate budget.
func (w *replies) give(held bool, cost int64) {
	if held {
		w.g.release(cost)
	}
}

// send writes a, then b (if any), to the socket. Only the writer calls it.
func (w *replies) send(a, b []byte) error {
	w.sends.Add(1)
	if w.timeout == 0 {
		if len(b) == 0 {
			_, err := w.nc.Write(a)
			return err
		}
		bufs := net.Buffers{a, b}
		_, err := bufs.WriteTo(w.nc)
		return err
	}
	if len(b) > 0 && len(a)+len(b) <= writeChunk {
		// One piece: one system call.
		w.refreshDeadline()
		bufs := net.Buffers{a, b}
		_, err := bufs.WriteTo(w.nc)
		return w.writeError(err, len(a)+len(b))
	}
	for _, p := range [2][]byte{a, b} {
		for len(p) > 0 {
			k := min(len(p), writeChunk)
			w.refreshDeadline()
			if _, err := w.nc.Write(p[:k]); err != nil {
				return w.writeError(err, k)
			}
			p = p[k:]
		}
	}
	return nil
}

func (w *replies) writeError(err error, n int) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %d bytes of replies not taken in %v (write timeout)", ErrWriteTimeout, n, w.timeout)
	}
	return err
}

// refreshDeadline moves the write deadline WriteTimeout ahead once an
// eighth of it has passed since it was set (a system call saved on most
// writes: a piece gets between 7/8 of WriteTimeout and all of it).
func (w *replies) refreshDeadline() {
	now := time.Now()
	if w.deadline.Sub(now) > w.timeout-w.timeout/8 {
		return
	}
	w.deadline = now.Add(w.timeout)
	w.nc.SetWriteDeadline(w.deadline)
}
