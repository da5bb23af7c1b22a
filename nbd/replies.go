package nbd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
)

// copyReplyMax: read data up to this size is copied into the pending
// replies; larger data goes to the socket from the request's buffer.
const copyReplyMax = 64 << 10

// writeChunk bounds one write to the socket under the write deadline: a
// client must take each piece within WriteTimeout (at the default 30s, at
// least about 10 KB/s while replies wait). A write that timed out is not
// resumed: crypto/tls fails for good, and on a plain socket the bytes
// written before the deadline could be a trickle into the kernel's
// buffers, not the client reading.
const writeChunk = 256 << 10

// maxRetained bounds the batch buffer a connection keeps for reuse between
// writes; a larger one (a burst of replies) is left to the GC.
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
// reply until written: a client that does not read stops the reader, the
// queue does not grow. Replies go to the socket in pieces of at most
// writeChunk, each under a deadline WriteTimeout ahead (refreshed when an
// eighth of it has passed); a piece not taken in time fails the
// connection.
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
	spare    []byte // the writer's previous batch, reused
	writing  bool   // a writer is at work (outside mu)
	waiters  int    // big replies waiting for the writer's turn
	turn     *sync.Cond
	err      error

	deadline time.Time // the socket's write deadline; the writer's
}

func (w *replies) init(nc net.Conn, g *gate, timeout time.Duration, failed func(error)) {
	w.nc = nc
	w.g = g
	w.timeout = max(timeout, 0)
	w.failed = failed
	w.turn = sync.NewCond(&w.mu)
}

// reply sends one simple reply header and its data (nil for none). held
// says whether the reply holds a gate request and cost bytes, given back
// once it is written or the connection failed. It returns after the reply
// is written (by this goroutine or by the writer at work, which may still
// be at it) or the connection failed; the error is the connection's first
// write error. With others (more requests in flight), a reply that starts
// a write first lets the goroutines that are ready to reply add theirs.
func (w *replies) reply(head []byte, data []byte, others, held bool, cost int64) error {
	n := int64(len(head) + len(data))
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		w.give(held, cost)
		return err
	}
	w.g.backlog.Add(n)
	if len(data) <= copyReplyMax {
		w.pending = append(w.pending, head...)
		w.pending = append(w.pending, data...)
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
		for w.writing {
			w.waiters++
			w.turn.Wait()
			w.waiters--
		}
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			w.g.sent(n)
			w.give(held, cost)
			return err
		}
		w.writing = true
		batch := append(w.pending, head...) // head stays on the caller's stack
		pn, pc := w.pendN, w.pendCost
		w.pending, w.pendN, w.pendCost = w.spare[:0], 0, 0
		w.mu.Unlock()
		err := w.send(batch, data)
		w.fail(err)
		w.g.sent(int64(len(batch) + len(data)))
		w.g.releaseN(pn, pc)
		w.give(held, cost)
		w.mu.Lock()
		w.keep(batch)
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	for len(w.pending) > 0 && w.err == nil {
		batch := w.pending
		pn, pc := w.pendN, w.pendCost
		w.pending, w.pendN, w.pendCost = w.spare[:0], 0, 0
		w.spare = nil
		w.mu.Unlock()
		err := w.send(batch, nil)
		w.fail(err)
		w.g.sent(int64(len(batch)))
		w.g.releaseN(pn, pc)
		w.mu.Lock()
		w.keep(batch)
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	if w.err != nil && len(w.pending) > 0 {
		// Never written: give their budget back.
		w.g.sent(int64(len(w.pending)))
		w.g.releaseN(w.pendN, w.pendCost)
		w.pending, w.pendN, w.pendCost = w.pending[:0], 0, 0
	}
	w.writing = false
	if w.waiters > 0 {
		w.turn.Broadcast()
	}
	err := w.err
	w.mu.Unlock()
	return err
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
