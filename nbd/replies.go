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

// tlsWriteChunk bounds one write to a connection that cannot resume a
// write after a timeout (TLS: crypto/tls fails for good once a write times
// out), so that each piece gets a whole WriteTimeout.
const tlsWriteChunk = 256 << 10

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
// queue does not grow. Every write has a deadline WriteTimeout ahead
// (refreshed when an eighth of it has passed); a write that times out
// without progress fails the connection, one that made progress goes on.
type replies struct {
	nc      net.Conn
	g       *gate
	timeout time.Duration // 0: none
	resume  bool          // nc can go on writing after a timeout (not TLS)

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

func (w *replies) init(nc net.Conn, g *gate, timeout time.Duration, resume bool) {
	w.nc = nc
	w.g = g
	w.timeout = max(timeout, 0)
	w.resume = resume
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
		w.g.sent(int64(len(batch) + len(data)))
		w.g.releaseN(pn, pc)
		w.give(held, cost)
		w.mu.Lock()
		w.spare = batch[:0]
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
		w.g.sent(int64(len(batch)))
		w.g.releaseN(pn, pc)
		w.mu.Lock()
		w.spare = batch[:0]
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

// give returns a reply's own gate budget.
func (w *replies) give(held bool, cost int64) {
	if held {
		w.g.release(cost)
	}
}

// send writes a, then b (if any), to the socket under the write deadline.
// Only the writer calls it.
func (w *replies) send(a, b []byte) error {
	if w.timeout == 0 {
		return w.write(a, b)
	}
	if !w.resume {
		// One piece at a time, each with a fresh deadline.
		for _, p := range [2][]byte{a, b} {
			for len(p) > 0 {
				k := min(len(p), tlsWriteChunk)
				w.refreshDeadline(true)
				if _, err := w.nc.Write(p[:k]); err != nil {
					return w.writeError(err)
				}
				p = p[k:]
			}
		}
		return nil
	}
	force := false
	for {
		w.refreshDeadline(force)
		n, err := w.writeN(&a, &b)
		if err == nil {
			return nil
		}
		if n > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			// Slow, but the client reads: a fresh deadline for the rest.
			force = true
			continue
		}
		return w.writeError(err)
	}
}

// write writes a and b with one system call.
func (w *replies) write(a, b []byte) error {
	_, err := w.writeN(&a, &b)
	return err
}

// writeN writes *a and *b (one writev when both are there) and leaves in
// them what was not written.
func (w *replies) writeN(a, b *[]byte) (int64, error) {
	if len(*b) == 0 {
		n, err := w.nc.Write(*a)
		*a = (*a)[n:]
		return int64(n), err
	}
	bufs := net.Buffers{*a, *b}
	n, err := bufs.WriteTo(w.nc) // consumes what it wrote
	*a, *b = nil, nil
	switch len(bufs) {
	case 2:
		*a, *b = bufs[0], bufs[1]
	case 1:
		*b = bufs[0]
	}
	return n, err
}

// refreshDeadline moves the write deadline WriteTimeout ahead when force
// is set or an eighth of it has passed since it was set (a system call
// saved on most writes: a stalled write fails after 7/8 to 8/8 of
// WriteTimeout without progress).
func (w *replies) refreshDeadline(force bool) {
	now := time.Now()
	if !force && w.deadline.Sub(now) > w.timeout-w.timeout/8 {
		return
	}
	w.deadline = now.Add(w.timeout)
	w.nc.SetWriteDeadline(w.deadline)
}

func (w *replies) writeError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: no reply bytes taken for %v (write timeout)", ErrWriteTimeout, w.timeout)
	}
	return err
}
