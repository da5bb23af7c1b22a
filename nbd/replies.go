package nbd

import (
	"net"
	"runtime"
	"sync"
)

// copyReplyMax: read data up to this size is copied into the pending
// replies; larger data goes to the socket from the request's buffer.
const copyReplyMax = 64 << 10

// replies writes a connection's replies with one system call for all the
// replies that complete while a write is under way. Whoever adds a reply
// when no write is under way becomes the writer: it writes what is pending,
// then again whatever others added meanwhile, until nothing is left. The
// others only append and return, without waiting for the socket or for
// each other. No reply waits for a later one, so batching adds no latency.
type replies struct {
	nc net.Conn

	mu      sync.Mutex
	pending []byte // replies not yet handed to the socket
	spare   []byte // the writer's previous batch, reused
	writing bool   // a writer is at work (outside mu)
	waiters int    // big replies waiting for the writer's turn
	turn    *sync.Cond
	err     error
}

func (w *replies) init(nc net.Conn) {
	w.nc = nc
	w.turn = sync.NewCond(&w.mu)
}

// reply sends one simple reply header and its data (nil for none). It
// returns after the reply is written (by this goroutine or by the writer at
// work) or the connection failed; the error is the connection's first write
// error. With others (more requests in flight), a reply that starts a write
// first lets the goroutines that are ready to reply add theirs.
func (w *replies) reply(head []byte, data []byte, others bool) error {
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	if len(data) <= copyReplyMax {
		w.pending = append(w.pending, head...)
		w.pending = append(w.pending, data...)
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
			return err
		}
		w.writing = true
		batch := append(w.pending, head...) // head stays on the caller's stack
		w.pending = w.spare[:0]
		w.mu.Unlock()
		bufs := net.Buffers{batch, data}
		_, err := bufs.WriteTo(w.nc)
		w.mu.Lock()
		w.spare = batch[:0]
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	for len(w.pending) > 0 && w.err == nil {
		batch := w.pending
		w.pending = w.spare[:0]
		w.spare = nil
		w.mu.Unlock()
		_, err := w.nc.Write(batch)
		w.mu.Lock()
		w.spare = batch[:0]
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	w.writing = false
	if w.waiters > 0 {
		w.turn.Broadcast()
	}
	err := w.err
	w.mu.Unlock()
	return err
}
