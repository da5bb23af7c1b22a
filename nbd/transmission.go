package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// request is one parsed transmission request on its way to a worker.
type request struct {
	typ    uint16
	flags  uint16
	cookie uint64
	off    int64  // the offset, if within the export (else 0)
	woff   uint64 // the offset as sent, for messages
	n      int64
	buf    *[]byte       // payload (WRITE) or reply data (READ); owned by the request
	cost   int64         // bytes held in the gate
	start  time.Duration // since clockBase, if OnRequest is set
}

// clockBase: request times are read as time.Since(clockBase), one monotonic
// clock read (time.Now reads the wall clock as well).
var clockBase = time.Now()

var requestPool = sync.Pool{New: func() any { return new(request) }}

// errDisc ends the reader after NBD_CMD_DISC; errFraming after a request
// whose payload cannot be skipped.
var (
	errDisc    = errors.New("nbd: client sent NBD_CMD_DISC")
	errFraming = errors.New("nbd: broken request framing")
)

// transmit serves requests on exp until the reader stops, then waits for the
// in-flight requests, flushes their replies and returns.
func (c *conn) transmit(exp Export) error {
	c.exp = exp
	c.dev = exp.Device
	c.trimmer, _ = exp.Device.(Trimmer)
	c.zeroer, _ = exp.Device.(Zeroer)
	c.quick, _ = exp.Device.(Quick)
	c.allocator, _ = exp.Device.(Allocator)
	c.metaDev, _ = exp.Device.(MetaContexts)
	c.size = exp.Device.Size()
	c.maxLen = int64(c.srv.maxPayload())
	c.gate.init(c.srv.maxInFlight(), c.srv.maxInFlightBytes(), c.srv.maxReplyBacklog())
	c.jobs = make(chan *request)
	c.rw.init(c.nc, &c.gate, c.srv.writeTimeout(), c.writeFailed)
	c.useRaw()
	if aw, ok := exp.Device.(AsyncWriter); ok && c.raw != nil {
		c.async = aw
		c.rw.try = c.sendNow
	}

	err := c.readLoop()

	close(c.jobs)
	c.workerWG.Wait()
	// Every reply is written once its worker returns; an asynchronous
	// write's once it completed and the writer at work (or its flush) is
	// done.
	c.asyncWG.Wait()
	c.rw.drain()
	c.rw.mu.Lock()
	werr := c.rw.err
	c.rw.mu.Unlock()
	if err == errDisc || err == nil || werr != nil {
		// A failed write also ends the reader (abort): report the cause.
		err = werr
	}
	return err
}

// readLoop parses requests until DISC, EOF, a stop or broken framing. Errors
// it can answer it answers itself; the rest go to workers.
func (c *conn) readLoop() (err error) {
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("nbd: panic reading requests", "panic", v, "stack", string(debug.Stack()))
			err = fmt.Errorf("nbd: panic: %v", v)
			c.kill()
		}
	}()
	defer c.kick()
	for {
		if (c.unkicked > 0 || c.owed) && (c.unkicked >= kickEvery || !c.requestBuffered()) {
			// Whatever comes next may wait (for the client, for room):
			// the writes started must go on without us.
			c.kick()
		}
		if c.stopping.Load() {
			c.drainBuffered()
			return nil
		}
		if (c.unkicked > 0 || c.owed) && c.gate.backlog.Load() >= c.gate.maxBacklog {
			c.kick()
		}
		if !c.gate.roomToReply() {
			return nil
		}
		if c.br.Buffered() < RequestSize {
			// Blocking mode (non-blocking receives first, see
			// sockReader, then sleeping in read(2)) pays while the
			// reader runs requests itself and the client pipelines them
			// (reads return more than one request on average: the next
			// one is near). A reader that hands every request to a
			// worker or starts writes that others complete
			// (AsyncWriter), or whose client waits for each reply (QD1),
			// waits cheaper in the netpoller.
			c.perFill += (c.sinceFill<<4 - c.perFill) / 8
			c.sinceFill = 0
			c.setBlocking(c.ranInline && c.perFill > 20)
		}
		c.sinceFill++
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			switch {
			case c.stopping.Load():
				return nil
			case err == io.EOF:
				return nil // client closed between requests
			case errors.Is(err, os.ErrDeadlineExceeded):
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		h := c.hdr[:]
		if m := binary.BigEndian.Uint32(h[0:]); m != MagicRequest {
			return fmt.Errorf("%w: request magic %#x", errFraming, m)
		}
		r := requestPool.Get().(*request)
		*r = request{
			flags:  binary.BigEndian.Uint16(h[4:]),
			typ:    binary.BigEndian.Uint16(h[6:]),
			cookie: binary.BigEndian.Uint64(h[8:]),
			woff:   binary.BigEndian.Uint64(h[16:]),
			n:      int64(binary.BigEndian.Uint32(h[24:])),
		}
		off := r.woff
		if c.srv.OnRequest != nil {
			r.start = time.Since(clockBase)
		}
		if r.typ == CmdDisc {
			requestPool.Put(r)
			return errDisc
		}
		// off > size is out of range; keep it representable as int64.
		inRange := off <= uint64(c.size) && r.n <= c.size-int64(off)
		if off <= uint64(c.size) {
			r.off = int64(off)
		}

		if err := c.check(r, inRange); err != nil {
			if r.typ == CmdWrite {
				if n := r.n; n > c.maxLen {
					// Its payload is not read: answer, then close.
					c.finish(r, err)
					return fmt.Errorf("%w: write of %d bytes", errFraming, n)
				}
				if _, derr := c.br.Discard(int(r.n)); derr != nil {
					requestPool.Put(r)
					if c.stopping.Load() {
						return nil
					}
					return fmt.Errorf("skip write payload: %w", derr)
				}
			}
			c.finish(r, err)
			continue
		}
		if r.n == 0 && r.typ != CmdFlush || r.typ == CmdCache {
			// Nothing to do: zero-length requests succeed, CACHE is a hint.
			c.finish(r, nil)
			continue
		}

		switch r.typ {
		case CmdRead, CmdWrite:
			r.cost = int64(payloads.Cap(int(r.n))) // the payload's buffer (payloads.Get below)
		case CmdBlockStatus:
			r.cost = c.statusCost(r)
		}
		if c.unkicked == 0 || !c.gate.tryAcquire(r.cost) {
			c.kick() // before a wait for room the writes started must go on
			if !c.gate.acquire(r.cost) {
				requestPool.Put(r)
				return nil
			}
		}
		if r.typ == CmdRead || r.typ == CmdWrite {
			r.buf = payloads.Get(int(r.n))
		}
		if r.typ == CmdWrite {
			if r.n > inlineMax && int64(c.br.Buffered()) < r.n {
				c.setBlocking(false)
			}
			if _, err := io.ReadFull(c.br, *r.buf); err != nil {
				c.gate.release(r.cost)
				payloads.Put(r.buf)
				requestPool.Put(r)
				if c.stopping.Load() {
					return nil
				}
				return fmt.Errorf("read write payload: %w", err)
			}
		}
		c.ranInline = c.inlineOK(r)
		if c.ranInline {
			c.kick()
			c.handle(r)
			continue
		}
		if c.asyncOK(r) && c.startWrite(r) {
			// Started here, but completed by whichever goroutine meets
			// its last condition (under protocol C, the one that reads
			// the last ack): not run inline. A reader waiting in the
			// netpoller leaves its thread to that goroutine; one asleep
			// in read(2) makes another thread wake for it (protocol C,
			// 4k QD32: +19 % IOPS, the Primary's CPU per write -20 %).
			continue
		}
		c.kick()
		if !c.dispatch(r) {
			c.gate.release(r.cost)
			payloads.Put(r.buf)
			requestPool.Put(r)
			return nil
		}
	}
}

// inlineOK: the reader runs r itself when no further request is buffered
// (its next read would wait for the client anyway) and r is a small read or
// write the Device says completes without waiting for anything remote.
func (c *conn) inlineOK(r *request) bool {
	if r.typ != CmdRead && r.typ != CmdWrite || r.n > inlineMax || c.br.Buffered() != 0 {
		return false
	}
	return c.quick != nil && c.quick.Quick(r.typ == CmdWrite, r.n)
}

const inlineMax = 64 << 10

// kickEvery bounds the writes the reader starts (AsyncWriter) before it
// lets them go on (Kick) while more requests are buffered.
const kickEvery = 16

// asyncOK: the reader starts a small write itself (AsyncWriter) when the
// Device would make it wait for something remote (not Quick).
func (c *conn) asyncOK(r *request) bool {
	return c.async != nil && r.typ == CmdWrite && r.n <= inlineMax && (c.quick == nil || !c.quick.Quick(true, r.n))
}

// startWrite starts r on the AsyncWriter; false if the Device declined.
// The request's reply is queued by whoever completes it.
//
// A write that completes before its StartWrite returns (protocol A: at
// once, after the local write) does not flush the replies: the reader does
// when it kicks, after the last write of the run it has buffered, so a
// run's replies leave in one system call instead of one each (4k random
// writes at QD32 under protocol A: a write(2) per request on the Primary
// before). Other completions meanwhile (acks under protocol C) flush as
// they would: holding them for the run would delay their replies.
func (c *conn) startWrite(r *request) bool {
	// The last of a run (no further request buffered, or the run is at
	// its bound) kicks itself: the Device ships it as early as it can.
	last := c.unkicked+1 >= kickEvery || !c.requestBuffered()
	c.asyncWG.Add(1)
	c.startSeq++
	seq := c.startSeq
	c.starting.Store(seq)
	ok := c.async.StartWrite(c.ctx, *r.buf, r.off, r.flags&CmdFlagFUA != 0, last, func(err error) func() {
		flush := c.writeDone(r, err)
		if flush != nil && c.starting.CompareAndSwap(seq, 0) {
			return nil // the reader's (c.owed)
		}
		return flush
	})
	if c.starting.Swap(0) == 0 {
		c.owed = true
	}
	if !ok {
		c.asyncWG.Done()
		return false
	}
	if last {
		c.unkicked = 0
		c.flushOwed()
	} else {
		c.unkicked++
	}
	return true
}

// flushOwed flushes the replies a completion left to the reader.
func (c *conn) flushOwed() {
	if c.owed {
		c.owed = false
		c.rw.flush()
	}
}

// writeDone completes a write the AsyncWriter started: it queues the reply
// (without blocking) and frees the request.
func (c *conn) writeDone(r *request, err error) (flush func()) {
	if err != nil {
		c.log.Debug("nbd: device error", "cmd", cmdName(r.typ), "off", r.off, "n", r.n, "err", err)
	}
	var b [SimpleReplySize]byte
	flush = c.rw.queue(c.appendAnswer(b[:0], r.cookie, r.typ, r.woff, r.n, err), r.cost)
	c.done(r, err)
	c.asyncWG.Done()
	return flush
}

// kick lets the writes started since the last kick go on (AsyncWriter.Kick)
// and flushes the replies owed.
func (c *conn) kick() {
	if c.unkicked > 0 {
		c.unkicked = 0
		c.async.Kick()
	}
	c.flushOwed()
}

// requestBuffered reports whether the next request, with a write's
// payload, is in the read buffer: the reader takes it without waiting.
func (c *conn) requestBuffered() bool {
	if c.br.Buffered() < RequestSize {
		return false
	}
	h, err := c.br.Peek(RequestSize)
	if err != nil {
		return false
	}
	if binary.BigEndian.Uint16(h[6:]) != CmdWrite {
		return true
	}
	return c.br.Buffered() >= RequestSize+int(binary.BigEndian.Uint32(h[24:]))
}

// check validates a request before any Device call, in the order the spec's
// error values suggest: command, flags, read-only, length, range.
func (c *conn) check(r *request, inRange bool) error {
	ro := c.exp.ReadOnly
	switch r.typ {
	case CmdRead, CmdCache:
		allowed := CmdFlagFUA
		if r.typ == CmdRead && c.structured {
			allowed |= CmdFlagDF // NBD_FLAG_SEND_DF is advertised
		}
		if r.flags&^allowed != 0 {
			return ErrBadFlags
		}
		if r.typ == CmdRead && r.n > c.maxLen {
			return ErrTooLarge
		}
		if !inRange {
			return ErrOutOfRange
		}
	case CmdWrite:
		if r.flags&^CmdFlagFUA != 0 {
			return ErrBadFlags
		}
		if r.n > c.maxLen {
			return ErrTooLarge
		}
		if ro {
			return ErrReadOnly
		}
		if !inRange {
			return ErrNoSpace
		}
	case CmdFlush:
		if r.flags&^CmdFlagFUA != 0 {
			return ErrBadFlags
		}
	case CmdTrim:
		if r.flags&^CmdFlagFUA != 0 {
			return ErrBadFlags
		}
		if ro {
			return ErrReadOnly
		}
		if c.trimmer == nil {
			return ErrUnknownCommand
		}
		if !inRange {
			return ErrOutOfRange
		}
	case CmdWriteZeroes:
		if r.flags&^(CmdFlagFUA|CmdFlagNoHole|CmdFlagFastZero) != 0 {
			return ErrBadFlags
		}
		if ro {
			return ErrReadOnly
		}
		if !inRange {
			return ErrNoSpace
		}
		if r.flags&CmdFlagFastZero != 0 && c.zeroer == nil {
			return ErrNotFast
		}
	case CmdBlockStatus:
		if r.flags&^(CmdFlagFUA|CmdFlagReqOne) != 0 {
			return ErrBadFlags
		}
		if len(c.metas) == 0 {
			return ErrNoMetaContext
		}
		if r.n == 0 {
			return ErrZeroLength
		}
		if !inRange {
			return ErrOutOfRange
		}
	default:
		return ErrUnknownCommand
	}
	if c.stopping.Load() {
		return ErrShutdown
	}
	return nil
}

// dispatch hands r to an idle worker, starts a worker if fewer than
// MaxInFlight run, or waits for one. False if the connection was killed.
func (c *conn) dispatch(r *request) bool {
	select {
	case c.jobs <- r:
		return true
	default:
	}
	if c.workers < c.gate.maxN {
		c.workers++
		c.workerWG.Add(1)
		go c.worker(r)
		return true
	}
	select {
	case c.jobs <- r:
		return true
	case <-c.ctx.Done():
		return false
	}
}

func (c *conn) worker(r *request) {
	defer c.workerWG.Done()
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("nbd: panic handling request", "panic", v, "stack", string(debug.Stack()))
			c.kill()
		}
	}()
	for {
		c.handle(r)
		var ok bool
		if r, ok = <-c.jobs; !ok {
			return
		}
	}
}

// handle runs r on the Device, answers it and frees it.
func (c *conn) handle(r *request) {
	var err error
	fua := r.flags&CmdFlagFUA != 0
	switch r.typ {
	case CmdRead:
		if c.structured {
			c.readStructured(r)
			return
		}
		if err = c.dev.ReadAt(c.ctx, *r.buf, r.off); err == nil {
			c.reply(r.cookie, 0, *r.buf, true, r.cost)
			c.done(r, nil)
			return
		}
	case CmdBlockStatus:
		c.blockStatus(r)
		return
	case CmdWrite:
		err = c.dev.WriteAt(c.ctx, *r.buf, r.off, fua)
	case CmdFlush:
		err = c.dev.Flush(c.ctx)
	case CmdTrim:
		err = c.trimmer.Trim(c.ctx, r.off, r.n, fua)
	case CmdWriteZeroes:
		err = c.writeZeroes(r.off, r.n, r.flags&CmdFlagNoHole != 0, fua)
	}
	if err != nil {
		c.log.Debug("nbd: device error", "cmd", cmdName(r.typ), "off", r.off, "n", r.n, "err", err)
	}
	c.answer(r.cookie, r.typ, r.woff, r.n, err, true, r.cost) // gives the gate back once written
	c.done(r, err)
}

// writeZeroes zeroes through the Zeroer, or by writing zero buffers.
func (c *conn) writeZeroes(off, n int64, noHole, fua bool) error {
	if c.zeroer != nil {
		return c.zeroer.WriteZeroes(c.ctx, off, n, noHole, fua)
	}
	z := zeroes()
	for n > 0 {
		k := min(n, int64(len(z)))
		if err := c.dev.WriteAt(c.ctx, z[:k], off, false); err != nil {
			return fmt.Errorf("write zeroes %d+%d: %w", off, k, err)
		}
		off += k
		n -= k
	}
	if fua {
		return c.dev.Flush(c.ctx)
	}
	return nil
}

// finish answers a request the reader refused or completed itself.
func (c *conn) finish(r *request, err error) {
	if err != nil {
		c.log.Debug("nbd: request refused", "cmd", cmdName(r.typ), "flags", r.flags, "off", r.off, "n", r.n, "err", err)
	}
	c.answer(r.cookie, r.typ, r.woff, r.n, err, false, 0)
	c.done(r, err)
}

// done reports r to OnRequest and returns it and its buffer to the pools.
func (c *conn) done(r *request, err error) {
	if f := c.srv.OnRequest; f != nil {
		f(cmdName(r.typ), r.n, time.Since(clockBase)-r.start, err)
	}
	payloads.Put(r.buf)
	*r = request{}
	requestPool.Put(r)
}

// drainBuffered answers NBD_ESHUTDOWN to complete requests the reader has
// already buffered when a stop begins, so that they are not left unanswered.
func (c *conn) drainBuffered() {
	for c.br.Buffered() >= RequestSize {
		h, _ := c.br.Peek(RequestSize)
		if binary.BigEndian.Uint32(h[0:]) != MagicRequest {
			return
		}
		typ := binary.BigEndian.Uint16(h[6:])
		cookie := binary.BigEndian.Uint64(h[8:])
		off := binary.BigEndian.Uint64(h[16:])
		n := int(binary.BigEndian.Uint32(h[24:]))
		if typ == CmdDisc {
			return
		}
		if typ == CmdWrite {
			if c.br.Buffered() < RequestSize+n {
				return
			}
			c.br.Discard(RequestSize + n)
		} else {
			c.br.Discard(RequestSize)
		}
		c.answer(cookie, typ, off, int64(n), ErrShutdown, false, 0)
	}
}

// reply writes one simple reply. held: the reply holds one request and
// cost bytes of the gate until it is written.
func (c *conn) reply(cookie uint64, errno uint32, data []byte, held bool, cost int64) {
	var h [SimpleReplySize]byte
	c.send(appendSimpleReply(h[:0], cookie, errno), data, held, cost)
}

// appendSimpleReply appends a simple reply header to b.
func appendSimpleReply(b []byte, cookie uint64, errno uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}

// send writes one reply message, head then data (see replies: replies that
// complete while another is being written share its next system call).
func (c *conn) send(head, data []byte, held bool, cost int64) {
	// Other requests in flight may complete in a moment: give their replies
	// a chance to join this one's write. With none (a client that waits for
	// each reply), the yield would only wake an idle thread for nothing.
	others := c.gate.n.Load() > 1
	c.rw.reply(head, data, others, held, cost) // a failure ends the connection through writeFailed
}

// writeFailed ends the connection after a failed reply write: the client
// is gone or stuck. It stops the reader wherever it waits, before the
// failed replies give their budget back.
func (c *conn) writeFailed(err error) {
	if !c.werrOnce.CompareAndSwap(false, true) {
		return
	}
	if errors.Is(err, ErrWriteTimeout) {
		c.log.Warn("nbd: disconnecting a client that does not read its replies", "err", err)
	} else {
		c.log.Debug("nbd: write reply", "err", err)
	}
	c.gate.close()
	c.abort()
}

func cmdName(typ uint16) string {
	switch typ {
	case CmdRead:
		return "read"
	case CmdWrite:
		return "write"
	case CmdDisc:
		return "disc"
	case CmdFlush:
		return "flush"
	case CmdTrim:
		return "trim"
	case CmdCache:
		return "cache"
	case CmdWriteZeroes:
		return "write_zeroes"
	case CmdBlockStatus:
		return "block_status"
	}
	return "unknown"
}
