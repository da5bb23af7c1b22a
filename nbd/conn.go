package nbd

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

const (
	readBufSize  = 128 << 10
	writeBufSize = 128 << 10
)

// conn is one client connection. Its goroutines: the one running serve (which
// negotiates, then reads and parses requests, and runs a small request
// itself when no other is waiting and the Device calls it Quick) and up to
// MaxInFlight workers that call the Device and write replies.
type conn struct {
	srv *Server
	// sock is the accepted connection; nc is what NBD is spoken on: sock,
	// or the TLS connection over it after NBD_OPT_STARTTLS. Stops, aborts
	// and deadlines act on sock, the only one other goroutines touch.
	sock net.Conn
	nc   net.Conn
	tls  bool // nc is a *tls.Conn
	log  *slog.Logger

	handshaking bool // counted in srv.handshaking; under srv.mu
	// serving is the export the connection entered transmission on, once
	// it did (transmitting); under srv.mu, for CloseExport. ended is
	// closed when the connection has ended and its goroutines exited.
	serving      string
	transmitting bool
	ended        chan struct{}

	// ctx is given to the Device; kill cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	br *bufio.Reader

	// dmu orders read-deadline changes against stop, so that negotiation
	// clearing its deadline cannot undo a stop.
	dmu       sync.Mutex
	stopping  atomic.Bool
	raw       syscall.RawConn // set at transmission start, see setBlocking
	blocking  bool            // the socket's mode; the reader's
	ranInline bool            // the reader ran the last request itself
	sinceFill int             // requests parsed since the read buffer ran dry
	perFill   int             // moving average of sinceFill, ×16

	// Negotiated in option haggling; read-only in transmission.
	structured bool          // NBD_OPT_STRUCTURED_REPLY
	metas      []metaContext // NBD_OPT_SET_META_CONTEXT's selection
	metaExport string        // the export name it was made for

	// Transmission state, set once before the first request.
	exp       Export
	dev       Device
	trimmer   Trimmer
	zeroer    Zeroer
	quick     Quick
	allocator Allocator
	metaDev   MetaContexts
	size      int64
	maxLen    int64

	// async starts writes the reader does not wait for (nil: none);
	// unkicked counts those started since its last Kick (the reader's);
	// asyncWG the ones not yet completed. While the reader is in
	// StartWrite, starting holds that write's number (startSeq, the
	// reader's count), and 0 once its completion left the replies' flush
	// to the reader (see startWrite); owed: the reader must flush them
	// before it waits for anything (kick).
	async    AsyncWriter
	unkicked int
	asyncWG  sync.WaitGroup
	startSeq uint64
	starting atomic.Uint64
	owed     bool

	// bw writes the negotiation (flushed before transmission); rw writes
	// the replies after it.
	bw       *bufio.Writer
	rw       replies
	werrOnce atomic.Bool

	gate     gate
	jobs     chan *request
	workers  int // started so far; only the reader touches it
	workerWG sync.WaitGroup

	hdr [RequestSize]byte // reader's scratch
}

func newConn(s *Server, ctx context.Context, nc net.Conn) *conn {
	c := &conn{srv: s, sock: nc, nc: nc, ended: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.log = s.logger().With("remote", remoteAddr(nc))
	return c
}

func remoteAddr(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

// serve runs the connection to its end and closes it.
func (c *conn) serve() (err error) {
	defer c.cancel()
	defer func() { c.close(err) }()
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("nbd: panic serving connection", "panic", v, "stack", string(debug.Stack()))
			err = fmt.Errorf("nbd: panic: %v", v)
		}
	}()
	c.br = bufio.NewReaderSize(sockReader{c}, readBufSize)
	c.bw = bufio.NewWriterSize(c.nc, writeBufSize)
	exp, ok, err := c.negotiate()
	c.srv.endHandshake(c)
	if !ok {
		if err != nil && !c.stopping.Load() {
			// Any client can end negotiations at will: a line a
			// second, with how many ended since the last.
			c.srv.endedLog.Log(c.log, slog.LevelInfo, "ended_since_last_log", "nbd: negotiation ended", "err", err)
			return err
		}
		return nil
	}
	c.log.Info("nbd: client connected", "export", exp.Name)
	err = c.transmit(exp)
	if c.stopping.Load() {
		err = nil
	}
	c.log.Info("nbd: client disconnected", "export", exp.Name, "err", err)
	return err
}

// stop asks the connection to end gracefully: the reader stops at the next
// request boundary (a blocked read is interrupted by a past deadline, or
// by shutdown(SHUT_RD) when it sleeps in read(2)),
// in-flight requests finish and are answered, then the connection closes.
func (c *conn) stop() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.stopping.Swap(true) {
		return
	}
	if err := c.sock.SetReadDeadline(time.Unix(1, 0)); err != nil {
		c.sock.Close()
	}
	if c.raw != nil {
		// A read blocked in the kernel ignores deadlines.
		c.shutdown(syscall.SHUT_RD)
	}
}

func (c *conn) shutdown(how int) {
	c.raw.Control(func(fd uintptr) { syscall.Shutdown(int(fd), how) })
}

// useRaw gives the reader control over the socket's blocking mode
// (setBlocking) once transmission starts, and stop a way to interrupt a
// read blocked in the kernel.
func (c *conn) useRaw() {
	if c.tls {
		// Every byte goes through TLS: no reads of the socket itself.
		return
	}
	sc, ok := c.sock.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	if d := c.srv.writeTimeout(); d > 0 {
		// In blocking mode a reply write waits in write(2), where the
		// write deadline does not reach: the kernel bounds it instead,
		// then the netpoller sees the deadline passed.
		tv := syscall.NsecToTimeval(d.Nanoseconds())
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = syscall.SetsockoptTimeval(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
		}); err != nil || serr != nil {
			return // no blocking mode without the bound
		}
	}
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.stopping.Load() {
		c.raw = raw
	}
}

// setBlocking switches the socket between blocking reads, where the reader
// sleeps in read(2) until the client sends more (cheapest for a stream of
// small requests), and the netpoller (cheapest while a large payload
// arrives in pieces). Writes block too in blocking mode; SO_SNDTIMEO (set
// by useRaw) keeps the write timeout working there. Only the reader calls
// it.
func (c *conn) setBlocking(b bool) {
	if c.raw == nil || c.blocking == b {
		return
	}
	var serr error
	if err := c.raw.Control(func(fd uintptr) { serr = syscall.SetNonblock(int(fd), !b) }); err != nil || serr != nil {
		return
	}
	c.blocking = b
}

// sockReader is what the connection's bufio.Reader reads from. A read that
// would sleep in read(2) (blocking mode: the client pipelines small
// requests, so the next one is usually on its way) first tries a few
// non-blocking receives, letting the other goroutines run between them. A
// reader that sleeps must be woken by the client's next send, which costs
// the client a wake-up (on a VM, an inter-processor interrupt) and the
// reader a context switch.
type sockReader struct{ c *conn }

// receiveTries bounds the non-blocking receives of one read.
const receiveTries = 4

func (s sockReader) Read(p []byte) (int, error) {
	c := s.c
	if c.blocking && len(p) > 0 {
	tries:
		for i := range receiveTries {
			if i > 0 {
				runtime.Gosched()
			}
			n, errno, ok := c.receive(p)
			switch {
			case ok && errno == 0 && n > 0:
				return n, nil
			case ok && errno == syscall.EAGAIN:
				continue
			}
			// Closed, failed or at EOF: the ordinary read reports it.
			break tries
		}
	}
	return c.nc.Read(p)
}

// sendNow writes what the socket takes of p at once, without blocking
// (send(2) with MSG_DONTWAIT, whatever the socket's mode): the bytes taken,
// and an error only if the connection failed.
func (c *conn) sendNow(p []byte) (int, error) {
	c.rw.sends.Add(1)
	for {
		var n int
		var errno syscall.Errno
		err := c.raw.Write(func(fd uintptr) bool {
			r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)),
				syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
			n, errno = int(r), e
			return true // never wait for the socket here
		})
		switch {
		case err != nil:
			return 0, err
		case errno == 0:
			return n, nil
		case errno == syscall.EAGAIN:
			return 0, nil
		case errno == syscall.EINTR:
			continue
		}
		return 0, fmt.Errorf("send reply: %w", errno)
	}
}

// receive is one non-blocking recv(2) into p; ok is false if the socket is
// closed.
func (c *conn) receive(p []byte) (n int, errno syscall.Errno, ok bool) {
	err := c.raw.Control(func(fd uintptr) {
		// MSG_DONTWAIT: it never blocks, so the scheduler need not know.
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), syscall.MSG_DONTWAIT, 0, 0)
		n, errno = int(r), e
	})
	return n, errno, err == nil
}

// kill ends the connection at once: it closes the socket, then cancels the
// Devices' context. Goroutines still exit through their usual paths. The
// socket goes first: a request that ends because its context was cancelled
// must not be answered (with EIO) on a connection that was killed, which
// happened when the reply writer won the race with the close.
func (c *conn) kill() {
	c.stop()
	c.abort()
	c.cancel()
	c.gate.close()
}

// abort closes the socket. A read or write blocked in the kernel keeps a
// socket open past Close, so it is shut down first.
func (c *conn) abort() {
	c.dmu.Lock()
	if c.raw != nil {
		c.shutdown(syscall.SHUT_RDWR)
	}
	c.dmu.Unlock()
	c.sock.Close()
}

// close closes the connection at its end. After a clean end of a TLS
// session the client gets a close_notify alert first, as the spec asks; a
// connection that failed is only closed (an alert to a client that does
// not read would wait).
func (c *conn) close(err error) {
	if c.tls && err == nil && !c.werrOnce.Load() {
		c.nc.Close() // sends close_notify (bounded by crypto/tls: 5s), then closes sock
		return
	}
	c.sock.Close()
}

// setReadDeadline sets the read deadline unless the connection is stopping.
func (c *conn) setReadDeadline(t time.Time) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.stopping.Load() {
		return
	}
	c.sock.SetReadDeadline(t)
}

// gate bounds the requests and payload bytes in flight on a connection, and
// the reply bytes queued for its socket. A request is in flight from the
// reader's acquire until its reply is written to the socket (or the
// connection failed): a client that does not read its replies stops the
// reader instead of growing the queue.
type gate struct {
	mu         sync.Mutex
	cond       sync.Cond
	n          atomic.Int32 // requests in flight; changed under mu, read without it
	backlog    atomic.Int64 // reply bytes queued or being written; see replies
	bytes      int64
	maxN       int
	maxBytes   int64
	maxBacklog int64
	closed     bool
	waiting    atomic.Bool // the reader waits in cond for backlog room; set under mu
}

func (g *gate) init(maxN int, maxBytes, maxBacklog int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cond.L = &g.mu
	g.maxN = maxN
	g.maxBytes = maxBytes
	g.maxBacklog = maxBacklog
}

// acquire waits for room for one request of size bytes; false once closed.
// A request larger than maxBytes is admitted when nothing else is in flight.
func (g *gate) acquire(size int64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for !g.closed && (int(g.n.Load()) >= g.maxN || (g.n.Load() > 0 && g.bytes+size > g.maxBytes)) {
		g.cond.Wait()
	}
	if g.closed {
		return false
	}
	g.n.Add(1)
	g.bytes += size
	return true
}

// tryAcquire is acquire without waiting: false if it would wait.
func (g *gate) tryAcquire(size int64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || int(g.n.Load()) >= g.maxN || (g.n.Load() > 0 && g.bytes+size > g.maxBytes) {
		return false
	}
	g.n.Add(1)
	g.bytes += size
	return true
}

// roomToReply waits while the reply backlog is at its bound; false once
// closed. Only the reader calls it, before it takes the next request: the
// replies it would add are drained by the writer at work (a backlog means
// one is writing) or end with the connection.
func (g *gate) roomToReply() bool {
	if g.backlog.Load() < g.maxBacklog {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.waiting.Store(true)
	for !g.closed && g.backlog.Load() >= g.maxBacklog {
		g.cond.Wait()
	}
	g.waiting.Store(false)
	return !g.closed
}

func (g *gate) release(size int64) {
	g.releaseN(1, size)
}

// releaseN gives back n requests and size bytes, at once for a batch of
// replies written together.
func (g *gate) releaseN(n int, size int64) {
	if n == 0 && size == 0 {
		return
	}
	g.mu.Lock()
	g.n.Add(int32(-n))
	g.bytes -= size
	g.mu.Unlock()
	g.cond.Signal()
}

// sent takes n written (or dropped) bytes off the backlog and wakes the
// reader if it waits for room.
func (g *gate) sent(n int64) {
	// The reader sets waiting before it checks the backlog, under mu: if
	// it missed this decrement, this sees waiting and signals after its Wait.
	if g.backlog.Add(-n) < g.maxBacklog && g.waiting.Load() {
		// Taking mu orders the signal after the reader's Wait.
		g.mu.Lock()
		g.cond.Signal()
		g.mu.Unlock()
	}
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	if g.cond.L == nil {
		g.cond.L = &g.mu
	}
	g.mu.Unlock()
	g.cond.Broadcast()
}
