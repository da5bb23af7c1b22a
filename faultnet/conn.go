package faultnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// conn is one proxied connection: the accepted client side, the dialed
// server side, and a pipe for each direction.
type conn struct {
	p      *Proxy
	id     uint64
	client net.Conn
	server net.Conn // set under p.mu once dialed
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

func newConn(p *Proxy, id uint64, client net.Conn) *conn {
	ctx, cancel := context.WithCancel(p.ctx)
	return &conn{p: p, id: id, client: client, ctx: ctx, cancel: cancel}
}

// serve waits out any partition, dials the target and runs both pipes.
func (c *conn) serve() {
	p := c.p
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	log := p.Logger.With("conn", c.id, "client", c.client.RemoteAddr().String())
	log.Debug("faultnet accepted")

	if !p.waitHealed(c.ctx) {
		c.shutdown(true)
		return
	}
	d := net.Dialer{Timeout: p.DialTimeout}
	server, err := d.DialContext(c.ctx, "tcp", p.target)
	if err != nil {
		p.stats.dialErrors.Add(1)
		log.Debug("faultnet dial", "target", p.target, "err", err)
		c.shutdown(true)
		return
	}
	p.mu.Lock()
	if c.ctx.Err() != nil { // cut or closed while dialing
		p.mu.Unlock()
		server.Close()
		c.shutdown(true)
		return
	}
	c.server = server
	p.mu.Unlock()

	var wg sync.WaitGroup
	for _, pp := range []*pipe{newPipe(c, up, c.client, server), newPipe(c, down, server, c.client)} {
		wg.Add(2)
		go func() { defer wg.Done(); pp.read() }()
		go func() { defer wg.Done(); pp.write() }()
	}
	wg.Wait()
	if c.shutdown(false) {
		log.Debug("faultnet closed")
	}
}

// shutdown closes both sides, with a reset if rst, and stops the pipes. It
// reports whether this call did it.
func (c *conn) shutdown(rst bool) bool {
	did := false
	c.once.Do(func() {
		did = true
		c.cancel()
		c.p.mu.Lock()
		server := c.server
		c.p.mu.Unlock()
		for _, nc := range []net.Conn{c.client, server} {
			if nc == nil {
				continue
			}
			if tc, ok := nc.(*net.TCPConn); ok && rst {
				tc.SetLinger(0)
			}
			nc.Close()
		}
	})
	return did
}

// chunk is a piece of the stream waiting in a pipe. The pipe owns buf from
// the read until the write returns, then gives it back to the pool.
type chunk struct {
	buf     *[]byte
	n       int
	release time.Time
	eof     bool
}

// pipe moves one direction of a conn: read() from src into the queue,
// write() from the queue to dst.
type pipe struct {
	c        *conn
	p        *Proxy
	dir      direction
	src, dst net.Conn
	sh       *shaper
	stats    *dirCounters

	mu     sync.Mutex
	q      []chunk
	queued int64
	wake   chan struct{} // the queue gained a chunk
	space  chan struct{} // the queue lost a chunk
}

func newPipe(c *conn, dir direction, src, dst net.Conn) *pipe {
	return &pipe{
		c:     c,
		p:     c.p,
		dir:   dir,
		src:   src,
		dst:   dst,
		sh:    newShaper(c.p.seed, c.id<<1|uint64(dir)),
		stats: &c.p.stats.dir[dir],
		wake:  make(chan struct{}, 1),
		space: make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (pp *pipe) read() {
	interrupted := false
	for {
		if !pp.p.gateRead(pp.c.ctx, pp.src, &interrupted) || !pp.waitRoom() {
			return
		}
		bp := pp.p.getBuf()
		n, err := pp.src.Read((*bp)[:readSize(pp.p.link(pp.dir), len(*bp))])
		if n > 0 {
			// A read that returned data as a stall or partition began
			// holds it until the gate opens again: nothing read may pass
			// once Stall or Partition has returned.
			open := false
			if !pp.p.gateRead(pp.c.ctx, pp.src, &open) {
				pp.p.putBuf(bp)
				return
			}
			if !pp.ship(pp.p.link(pp.dir), bp, n) {
				return
			}
		} else {
			pp.p.putBuf(bp)
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded): // stalled or partitioned
			interrupted = true
		case errors.Is(err, io.EOF):
			pp.push(chunk{eof: true})
			return
		default:
			pp.c.shutdown(true) // pass a reset on
			return
		}
	}
}

// waitRoom waits until the queue holds less than MaxInFlight bytes.
func (pp *pipe) waitRoom() bool {
	for {
		pp.mu.Lock()
		room := pp.queued < pp.p.MaxInFlight
		pp.mu.Unlock()
		if room {
			return true
		}
		select {
		case <-pp.space:
		case <-pp.c.ctx.Done():
			return false
		}
	}
}

// ship shapes a chunk just read and queues it, after pacing it to the
// bandwidth cap.
func (pp *pipe) ship(l Link, bp *[]byte, n int) bool {
	now := time.Now()
	v := pp.sh.plan(l, now, n)
	if v.flip >= 0 {
		(*bp)[v.flip/8] ^= 1 << (v.flip % 8)
		pp.stats.corrupted.Add(1)
	}
	if v.lost {
		pp.stats.lost.Add(1)
	}
	if d := v.pace.Sub(now); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-pp.c.ctx.Done():
			t.Stop()
			pp.p.putBuf(bp)
			return false
		}
	}
	pp.push(chunk{buf: bp, n: n, release: v.release})
	return true
}

func (pp *pipe) push(ch chunk) {
	pp.mu.Lock()
	if ch.eof {
		ch.release = pp.sh.lastRelease
	}
	pp.q = append(pp.q, ch)
	pp.queued += int64(ch.n)
	pp.mu.Unlock()
	signal(pp.wake)
}

func (pp *pipe) write() {
	defer pp.drain()
	for {
		ch, ok := pp.next()
		if !ok {
			return
		}
		if ch.eof {
			if cw, ok := pp.dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return
		}
		n, err := pp.dst.Write((*ch.buf)[:ch.n])
		pp.stats.bytes.Add(int64(n))
		pp.stats.chunks.Add(1)
		pp.p.putBuf(ch.buf)
		pp.mu.Lock()
		pp.queued -= int64(ch.n)
		pp.mu.Unlock()
		signal(pp.space)
		if err != nil {
			pp.c.shutdown(true)
			return
		}
	}
}

// next waits for the head of the queue to be due, and not partitioned, and
// takes it.
func (pp *pipe) next() (chunk, bool) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		pp.mu.Lock()
		if len(pp.q) == 0 {
			pp.mu.Unlock()
			select {
			case <-pp.wake:
				continue
			case <-pp.c.ctx.Done():
				return chunk{}, false
			}
		}
		head := pp.q[0]
		pp.mu.Unlock()
		if healed := pp.p.partitionWait(); healed != nil {
			select {
			case <-healed:
				continue
			case <-pp.c.ctx.Done():
				return chunk{}, false
			}
		}
		if d := time.Until(head.release); d > 0 && d <= preciseSleepMax {
			// The runtime's timers wake at millisecond granularity on an
			// idle machine, which would turn a 0.25 ms link into a 1 ms
			// one: sleep the thread itself for short waits.
			preciseSleep(d)
			continue
		} else if d > 0 {
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			select {
			case <-timer.C:
				continue
			case <-pp.c.ctx.Done():
				return chunk{}, false
			}
		}
		pp.mu.Lock()
		pp.q[0] = chunk{}
		pp.q = pp.q[1:]
		pp.mu.Unlock()
		return head, true
	}
}

// drain returns the buffers of chunks that will never be written.
func (pp *pipe) drain() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for _, ch := range pp.q {
		if ch.buf != nil {
			pp.p.putBuf(ch.buf)
		}
	}
	pp.q = nil
	pp.queued = 0
}

// preciseSleepMax is the longest wait slept in the thread (see pop); longer
// waits use a runtime timer, whose rounding matters less there.
const preciseSleepMax = 3 * time.Millisecond

// preciseSleep blocks the calling thread for d with nanosleep (the runtime
// hands the P to another thread meanwhile).
func preciseSleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for {
		var rem unix.Timespec
		err := unix.Nanosleep(&ts, &rem)
		if err != unix.EINTR {
			return
		}
		ts = rem
	}
}
