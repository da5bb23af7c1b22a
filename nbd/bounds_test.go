package nbd_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/internal/loglimit"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// countDevice counts reads.
type countDevice struct {
	*memDevice
	reads atomic.Int64
}

func (d *countDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.reads.Add(1)
	return d.memDevice.ReadAt(ctx, p, off)
}

// logBuffer collects log output for tests that check a log line.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// pipeGo serves srv on one end of a net.Pipe (no buffering at all: what
// the server writes waits until the test reads it) and negotiates the
// default export on the other. ServeConn's result is in *err once done is
// closed.
func pipeGo(t *testing.T, srv *nbd.Server) (nc net.Conn, br *bufio.Reader, done <-chan struct{}, err *error) {
	t.Helper()
	a, b := net.Pipe()
	ch := make(chan struct{})
	var serr error
	go func() {
		defer close(ch)
		serr = srv.ServeConn(context.Background(), a)
	}()
	t.Cleanup(func() {
		b.Close()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Error("ServeConn did not return after the client closed")
		}
	})
	n, nerr := nbdtest.Negotiate(b, fixedNoZeroes)
	if nerr != nil {
		t.Fatal(nerr)
	}
	if _, err := n.Info(nbd.OptGo, ""); err != nil {
		t.Fatal(err)
	}
	return b, n.Reader(), ch, &serr
}

func request(typ, flags uint16, cookie, off uint64, n uint32) []byte {
	var h [nbd.RequestSize]byte
	binary.BigEndian.PutUint32(h[0:], nbd.MagicRequest)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint64(h[16:], off)
	binary.BigEndian.PutUint32(h[24:], n)
	return h[:]
}

// sendAll writes the requests from a goroutine (the writes block once the
// server stops reading) and returns a channel closed when all are sent or
// the connection failed.
func sendAll(nc net.Conn, reqs [][]byte) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, r := range reqs {
			if _, err := nc.Write(r); err != nil {
				return
			}
		}
	}()
	return done
}

// settle waits until v stops changing for 200ms and returns it.
func settle(v func() int64) int64 {
	last := v()
	for stable := time.Now(); time.Since(stable) < 200*time.Millisecond; {
		time.Sleep(20 * time.Millisecond)
		if x := v(); x != last {
			last, stable = x, time.Now()
		}
	}
	return last
}

// readReplies reads n simple replies carrying dataLen bytes each on
// success, and checks each cookie arrives once.
func readReplies(t *testing.T, nc net.Conn, br *bufio.Reader, n int, dataLen func(cookie uint64) int) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	seen := make(map[uint64]bool)
	for range n {
		var h [nbd.SimpleReplySize]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("after %d replies: %v", len(seen), err)
		}
		cookie := binary.BigEndian.Uint64(h[8:])
		if seen[cookie] {
			t.Fatalf("cookie %d twice", cookie)
		}
		seen[cookie] = true
		if binary.BigEndian.Uint32(h[4:]) == 0 {
			if _, err := br.Discard(dataLen(cookie)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A reply keeps its request in the in-flight budget until it is written:
// a client that pipelines reads and reads no reply gets MaxInFlight of
// them served, not all (the probe that took a Primary to 1.5 GiB).
func TestRepliesHoldInFlightBudget(t *testing.T) {
	dev := &countDevice{memDevice: newMem(testSize)}
	srv := &nbd.Server{MaxInFlight: 4, WriteTimeout: -1, Exports: []nbd.Export{{Device: dev}}}
	nc, br, _, _ := pipeGo(t, srv)
	const n = 200
	var reqs [][]byte
	for i := range n {
		reqs = append(reqs, request(nbd.CmdRead, 0, uint64(i), uint64(i%64)*4096, 4096))
	}
	sendAll(nc, reqs)
	if got := settle(dev.reads.Load); got > 4 {
		t.Fatalf("%d reads served while no reply was read, want at most MaxInFlight (4)", got)
	}
	// Once the client reads, everything is answered.
	readReplies(t, nc, br, n, func(uint64) int { return 4096 })
	if got := dev.reads.Load(); got != n {
		t.Fatalf("%d reads served, want %d", got, n)
	}
}

// Replies the reader answers itself (refused requests: no in-flight
// budget) are bounded by MaxReplyBacklog.
func TestReplyBacklogBound(t *testing.T) {
	var handled atomic.Int64
	srv := &nbd.Server{MaxReplyBacklog: 16 << 10, WriteTimeout: -1,
		Exports:   []nbd.Export{{Device: newMem(testSize)}},
		OnRequest: func(string, int64, time.Duration, error) { handled.Add(1) }}
	nc, br, _, _ := pipeGo(t, srv)
	// A read whose reply (8 KiB + header) the client does not take: its
	// writer waits on the socket, the backlog starts at 8208 bytes.
	if _, err := nc.Write(request(nbd.CmdRead, 0, 0, 0, 8192)); err != nil {
		t.Fatal(err)
	}
	// Wait until its writer is at work (the first bytes arrive; the rest
	// waits in the pipe): otherwise the reader could become the writer of
	// its first refusal and wait on the pipe itself.
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.Peek(1); err != nil {
		t.Fatal(err)
	}
	// Refused requests (an unknown flag): 16-byte replies each.
	const n = 5000
	var reqs [][]byte
	for i := 1; i <= n; i++ {
		reqs = append(reqs, request(nbd.CmdRead, 1<<9, uint64(i), 0, 512))
	}
	sendAll(nc, reqs)
	const room = (16<<10 - (8192 + 16)) / 16 // refused replies that fit: 511
	if got := settle(handled.Load); got > room+1 {
		t.Fatalf("%d requests answered into the backlog, want at most %d (16 KiB of replies)", got, room+1)
	} else if got < room/2 {
		t.Fatalf("only %d requests answered before the backlog bound", got)
	}
	readReplies(t, nc, br, n+1, func(c uint64) int {
		if c == 0 {
			return 8192
		}
		return 0
	})
	// The last reply's OnRequest runs after its bytes are written.
	waitFor(t, "every request answered", 5*time.Second, func() bool { return handled.Load() == n+1 })
}

// A client that takes no reply bytes for WriteTimeout is disconnected and
// its requests freed; ServeConn reports why.
func TestWriteTimeout(t *testing.T) {
	var logs logBuffer
	dev := &countDevice{memDevice: newMem(testSize)}
	srv := &nbd.Server{MaxInFlight: 8, WriteTimeout: 200 * time.Millisecond, Logger: logs.logger(),
		Exports: []nbd.Export{{Device: dev}}}
	nc, _, done, serr := pipeGo(t, srv)
	var reqs [][]byte
	for i := range 100 {
		reqs = append(reqs, request(nbd.CmdRead, 0, uint64(i), 0, 64<<10))
	}
	start := time.Now()
	sent := sendAll(nc, reqs)
	select {
	case <-done:
		if !errors.Is(*serr, nbd.ErrWriteTimeout) {
			t.Fatalf("ServeConn: %v, want ErrWriteTimeout", *serr)
		}
		if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
			t.Fatalf("disconnected after %v, want about the write timeout (200ms)", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a client that reads no reply was not disconnected")
	}
	if got := dev.reads.Load(); got > 8 {
		t.Fatalf("%d reads served, want at most MaxInFlight (8)", got)
	}
	<-sent // the sender sees the connection closed
	if !bytes.Contains([]byte(logs.String()), []byte("does not read its replies")) {
		t.Fatalf("no log line for the disconnect:\n%s", logs.String())
	}
}

// The write timeout is about progress: a client that reads slowly, but
// reads, is not cut even when one reply takes longer than the timeout.
func TestWriteTimeoutSlowReader(t *testing.T) {
	dev := newMem(4 << 20)
	copy(dev.data, pattern(1<<20, 7))
	srv := &nbd.Server{WriteTimeout: 400 * time.Millisecond, Exports: []nbd.Export{{Device: dev}}}
	nc, br, _, _ := pipeGo(t, srv)
	if _, err := nc.Write(request(nbd.CmdRead, 0, 1, 0, 1<<20)); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	var h [nbd.SimpleReplySize]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	start := time.Now()
	for off := 0; off < len(got); off += 32 << 10 {
		// 32 pieces: about 800ms, twice the timeout; a 256 KiB piece of
		// the reply takes about 200ms.
		time.Sleep(25 * time.Millisecond)
		if _, err := io.ReadFull(br, got[off:off+32<<10]); err != nil {
			t.Fatalf("after %d bytes (%v): %v", off, time.Since(start), err)
		}
	}
	if !bytes.Equal(got, pattern(1<<20, 7)) {
		t.Fatal("slow read returned wrong data")
	}
}

// The same over TLS and TCP: the stuck client is cut, the daemon's log
// says why, and the client gets far fewer bytes than it asked for.
func TestWriteTimeoutTLS(t *testing.T) {
	p := getPKI(t)
	var logs logBuffer
	srv := &nbd.Server{TLS: p.serverNoMutual, TLSMode: nbd.TLSRequire, WriteTimeout: 300 * time.Millisecond,
		Logger: logs.logger(), Exports: []nbd.Export{{Device: newMem(16 << 20)}}}
	addr := serve(t, srv)
	n := negotiate(t, addr, fixedNoZeroes)
	if err := n.StartTLS(p.clientTLS(nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Info(nbd.OptGo, ""); err != nil {
		t.Fatal(err)
	}
	const reqs, size = 2000, 64 << 10
	var b []byte
	for i := range reqs {
		b = append(b, request(nbd.CmdRead, 0, uint64(i), uint64(i%256)*size, size)...)
	}
	go n.Conn.Write(b) // blocks once the server stops reading
	waitFor(t, "the disconnect log line", 10*time.Second, func() bool {
		return bytes.Contains([]byte(logs.String()), []byte("does not read its replies"))
	})
	n.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.Copy(io.Discard, n.Reader())
	if got >= reqs*size {
		t.Fatalf("client received %d bytes, all of its replies: not disconnected", got)
	}
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// greeted reports whether the server greets a new connection to addr
// (false: closed at once).
func greeted(t *testing.T, addr string) (net.Conn, bool) {
	t.Helper()
	c := rawDial(t, addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var g [18]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		c.Close()
		return nil, false
	}
	return c, true
}

// Negotiations that fail (here: a client sending flags the server does
// not know) are logged once a second at most, with how many ended since
// the last line: a client that connects and fails at will costs the log a
// line a second (it was a line per connection).
func TestFailedNegotiationsLogLimited(t *testing.T) {
	var logs logBuffer
	srv := &nbd.Server{Logger: logs.logger(), Exports: []nbd.Export{{Device: newMem(testSize)}}}
	addr := serve(t, srv)
	const tries = 50
	start := time.Now()
	for range tries {
		c, ok := greeted(t, addr)
		if !ok {
			t.Fatal("connection refused")
		}
		if _, err := c.Write([]byte{0xff, 0xff, 0xff, 0xff}); err != nil {
			t.Fatal(err)
		}
		// The server closes the connection when it ends the negotiation.
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatal(err)
		}
		c.Close()
	}
	took := time.Since(start)
	waitFor(t, "the first line", 5*time.Second, func() bool {
		return strings.Contains(logs.String(), "negotiation ended")
	})
	n := strings.Count(logs.String(), "negotiation ended")
	t.Logf("%d failed negotiations in %v: %d log lines", tries, took.Round(time.Millisecond), n)
	if most := int(took/loglimit.Every) + 2; n > most {
		t.Fatalf("%d log lines for %d failed negotiations in %v, want at most %d:\n%s", n, tries, took, most, logs.String())
	}
	if !strings.Contains(logs.String(), "unknown") && !strings.Contains(logs.String(), "flags") {
		t.Fatalf("the line does not say why:\n%s", logs.String())
	}
	// A second later the next failure is logged with the count since.
	time.Sleep(loglimit.Every)
	c, ok := greeted(t, addr)
	if !ok {
		t.Fatal("connection refused")
	}
	c.Write([]byte{0xff, 0xff, 0xff, 0xff})
	io.Copy(io.Discard, c)
	c.Close()
	waitFor(t, "the line after a second", 5*time.Second, func() bool {
		return strings.Count(logs.String(), "negotiation ended") == n+1
	})
	if want := fmt.Sprintf("ended_since_last_log=%d", tries); n == 1 && !strings.Contains(logs.String(), want) {
		t.Fatalf("the line after the flood does not carry %s:\n%s", want, logs.String())
	}
}

// Connections beyond MaxConns are closed at once, logged once a second at
// most; a slot freed is taken again.
func TestMaxConns(t *testing.T) {
	var logs logBuffer
	srv := &nbd.Server{MaxConns: 3, Logger: logs.logger(), Exports: []nbd.Export{{Device: newMem(testSize)}}}
	addr := serve(t, srv)
	served := dial(t, addr, "") // one in transmission
	var open []net.Conn
	for range 2 {
		c, ok := greeted(t, addr)
		if !ok {
			t.Fatal("connection under the limit was refused")
		}
		open = append(open, c)
	}
	for range 20 {
		if c, ok := greeted(t, addr); ok {
			c.Close()
			t.Fatal("connection beyond MaxConns was greeted")
		}
	}
	if err := served.Write(pattern(4096, 2), 0, true); err != nil {
		t.Fatalf("the served client during the flood: %v", err)
	}
	if n := bytes.Count([]byte(logs.String()), []byte("connection refused")); n < 1 || n > 2 {
		t.Fatalf("%d log lines for 20 refusals in well under 2s, want 1 or 2:\n%s", n, logs.String())
	}
	open[0].Close()
	waitFor(t, "a freed slot", 5*time.Second, func() bool {
		c, ok := greeted(t, addr)
		if ok {
			c.Close()
		}
		return ok
	})

	// ServeConn applies the same limit.
	a, b := net.Pipe()
	defer b.Close()
	srv2 := &nbd.Server{MaxConns: 1, Exports: []nbd.Export{{Device: newMem(testSize)}}}
	go srv2.ServeConn(context.Background(), a)
	if _, err := nbdtest.Negotiate(b, fixedNoZeroes); err != nil {
		t.Fatal(err)
	}
	x, y := net.Pipe()
	defer y.Close()
	if err := srv2.ServeConn(context.Background(), x); !errors.Is(err, nbd.ErrTooManyConns) {
		t.Fatalf("second ServeConn over MaxConns 1: %v, want ErrTooManyConns", err)
	}
}

// Connections still negotiating are bounded by MaxHandshakes; one that has
// entered transmission no longer counts.
func TestMaxHandshakes(t *testing.T) {
	srv := &nbd.Server{MaxHandshakes: 2, Exports: []nbd.Export{{Device: newMem(testSize)}}}
	addr := serve(t, srv)
	idle, ok := greeted(t, addr)
	if !ok {
		t.Fatal("first connection refused")
	}
	done := dial(t, addr, "")            // negotiates and leaves the handshake
	if err := done.Flush(); err != nil { // the server is in transmission now
		t.Fatal(err)
	}
	if _, ok := greeted(t, addr); !ok {
		t.Fatal("second negotiating connection refused (the first one in transmission must not count)")
	}
	if c, ok := greeted(t, addr); ok {
		c.Close()
		t.Fatal("third negotiating connection greeted, MaxHandshakes is 2")
	}
	if err := done.Flush(); err != nil {
		t.Fatal(err)
	}
	idle.Close()
	waitFor(t, "a freed handshake slot", 5*time.Second, func() bool {
		c, ok := greeted(t, addr)
		if ok {
			c.Close()
		}
		return ok
	})
}

// A client that pipelines small quick requests puts the reader in blocking
// mode (it sleeps in read(2)); the socket is then blocking for writes as
// well, where a deadline does not reach a write stuck in the kernel. The
// write timeout must still cut a client that stops reading.
func TestWriteTimeoutBlockingMode(t *testing.T) {
	var logs logBuffer
	dev := newQuick(1<<20, true)
	srv := &nbd.Server{WriteTimeout: 300 * time.Millisecond, Logger: logs.logger(), Exports: []nbd.Export{{Device: dev}}}
	addr := serve(t, srv)
	nc, _ := rawGo(t, addr)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// Bursts of 32 small reads, one write each: every read(2) of the
		// server returns many requests, the reader runs the last of each
		// burst itself and switches to blocking reads.
		for i := uint64(0); ; i++ {
			var b []byte
			for j := range uint64(32) {
				b = append(b, request(nbd.CmdRead, 0, i*32+j, (j%256)*4096, 4096)...)
			}
			nc.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := nc.Write(b); err != nil {
				select {
				case <-stop:
					return
				default:
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue // the server stopped reading: keep trying
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	waitFor(t, "the disconnect of a client that reads nothing", 15*time.Second, func() bool {
		return strings.Contains(logs.String(), "does not read its replies")
	})
}

// MaxInFlightBytes counts the buffer each request's payload takes, not
// only its length: requests just over a power of two (4 MiB + 512 bytes,
// each in an 8 MiB buffer) under a 16 MiB bound reach the device two at
// a time, not three (24 MiB of buffers).
func TestInFlightBytesCountBuffers(t *testing.T) {
	const n, size = 6, 4<<20 + 512
	dev := &holdDevice{memDevice: newMem(n * 8 << 20), release: make(chan struct{}),
		hold: map[int64]bool{}, entered: make(chan int64, n)}
	var reqs []nbdtest.Request
	for i := range n {
		off := int64(i) * 8 << 20
		dev.hold[off] = true
		reqs = append(reqs, nbdtest.Request{Type: nbd.CmdRead, Offset: uint64(off), Length: size})
	}
	addr := serve(t, &nbd.Server{MaxInFlightBytes: 16 << 20, Exports: []nbd.Export{{Device: dev}}})
	var once sync.Once
	release := func() { once.Do(func() { close(dev.release) }) }
	t.Cleanup(release) // before the server's shutdown, which waits for them
	c := dial(t, addr, "")
	calls, err := c.StartBatch(reqs)
	if err != nil {
		t.Fatal(err)
	}
	<-dev.entered
	if got := settle(dev.cur.Load); got != 2 {
		t.Fatalf("%d reads of %d bytes at the device under a 16 MiB bound, want 2", got, size)
	}
	release()
	for i, call := range calls {
		if r, err := call.Wait(); err != nil || r.Error != 0 || len(r.Data) != size {
			t.Fatalf("read %d: %v, error %d, %d bytes", i, err, r.Error, len(r.Data))
		}
	}
	if p := dev.peak.Load(); p != 2 {
		t.Fatalf("peak %d reads at the device, want 2", p)
	}
}

// heapInUse is the live heap after two collections (the second frees what
// the first left to the pools' victim caches).
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// A BLOCK_STATUS request counts the memory it holds against
// MaxInFlightBytes, not only its reply's length: 16 contexts of more than
// MaxExtents alternating extents make replies of 16 × (24 + 8 × 16384) =
// 2 MiB + 512 bytes, each in a 4 MiB buffer until written. A client that
// pipelines status requests and reads no reply gets at most
// MaxInFlightBytes (16 MiB) of them held (the audit's probe: 124 MiB under
// the default 64 MiB).
func TestBlockStatusBudgetCountsBuffers(t *testing.T) {
	const size, contexts, budget = 16<<10 + 16, 16, 16 << 20
	var data []span
	for off := int64(0); off < size; off += 2 {
		data = append(data, span{off, 1}) // 16400 alternating extents
	}
	queries := []string{nbd.ContextBaseAllocation}
	dirty := map[string][]span{}
	for i := range contexts - 1 {
		name := fmt.Sprintf("%ss%d", nbd.DirtyBitmapPrefix, i)
		dirty[name] = data
		queries = append(queries, name)
	}
	dev := newSparse(size, data, dirty)
	srv := &nbd.Server{MaxInFlightBytes: budget, WriteTimeout: -1,
		Exports: []nbd.Export{{Name: "d", Device: dev, ReadOnly: true}}}
	nc, br := pipeMeta(t, srv, "d", queries...)
	const count = 20
	var reqs [][]byte
	for i := range count {
		reqs = append(reqs, request(nbd.CmdBlockStatus, 0, uint64(i), 0, size))
	}
	before := heapInUse()
	sendAll(nc, reqs)
	admitted := settle(dev.statusCalls.Load) / contexts
	grown := heapInUse() - before
	const buf = 4 << 20 // the buffer of a 2 MiB + 512 byte reply
	t.Logf("%d status requests admitted (%d MiB of reply buffers), heap +%.1f MiB, budget %d MiB",
		admitted, admitted*buf>>20, float64(grown)/(1<<20), budget>>20)
	if admitted*buf > budget {
		t.Errorf("%d status requests admitted: %d MiB of reply buffers under a %d MiB budget",
			admitted, admitted*buf>>20, budget>>20)
	}
	if grown > budget+4<<20 {
		t.Errorf("heap grew by %.1f MiB while no reply was read, want at most the budget (%d MiB) + 4 MiB",
			float64(grown)/(1<<20), budget>>20)
	}
	// Once the client reads, everything is answered.
	readStatusReplies(t, nc, br, count)
	if got := dev.statusCalls.Load(); got != contexts*count {
		t.Fatalf("%d status calls, want %d", got, contexts*count)
	}
}
