package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/internal/loglimit"
)

// The metrics/health server closes a keep-alive connection left idle, and
// one that sends its headers too slowly: a client cannot hold connections
// open for free.
func TestMetricsServerTimeouts(t *testing.T) {
	for name, v := range map[string]time.Duration{"read header": metricsLimits.readHeader, "read": metricsLimits.read,
		"write": metricsLimits.write, "idle": metricsLimits.idle} {
		if v <= 0 {
			t.Errorf("metrics server %s timeout is %v: unbounded", name, v)
		}
	}
	// read is long: without IdleTimeout, net/http would use it for idle
	// connections, and the test would not tell.
	lim := httpLimits{readHeader: 300 * time.Millisecond, read: 5 * time.Second, write: 5 * time.Second, idle: 300 * time.Millisecond, maxHeaderBytes: 4 << 10}
	srv := metricsServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), lim)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()

	// closedWithin fails unless the server closes c within d (plus slack).
	closedWithin := func(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) {
		t.Helper()
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := io.Copy(io.Discard, br); err != nil {
			t.Fatalf("connection not closed by the server: %v after %v (%d bytes)", err, time.Since(start), n)
		}
		if el := time.Since(start); el > d+2*time.Second {
			t.Fatalf("closed after %v, want about %v", el, d)
		}
	}
	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for range 2 { // the connection is kept alive between requests
			io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Close {
				t.Fatal("server closed after one request: keep-alive not exercised")
			}
		}
		closedWithin(t, c, br, lim.idle)
	})
	t.Run("slow headers", func(t *testing.T) {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n") // never finished
		closedWithin(t, c, bufio.NewReader(c), lim.readHeader)
	})
	t.Run("huge headers", func(t *testing.T) {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\nX: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("64 KiB of headers: status %d, want 431", resp.StatusCode)
		}
	})
}

// The NBD unix socket is placed like the admin socket: a stale socket is
// replaced, a live one or anything else is refused and left alone.
func TestListenNBDUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r0.nbd")
	os.WriteFile(path, []byte("data"), 0o644)
	if _, err := listenNBD("unix:" + path); err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Fatalf("regular file at the socket path: %v", err)
	}
	os.Remove(path)
	l, err := listenNBD("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("NBD socket mode: %v %v", fi.Mode(), err)
	}
	if _, err := listenNBD("unix:" + path); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("live socket: %v", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a stale socket, as after SIGKILL
	l, err = listenNBD("unix:" + path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()

	for addr, want := range map[string]bool{"unix:" + path: true, "127.0.0.1:10809": true, "[::1]:1": true, "localhost:1": true,
		"0.0.0.0:10809": false, "10.0.0.1:10809": false, "[::]:1": false} {
		if got := privateNBD(addr); got != want {
			t.Errorf("privateNBD(%q) = %v, want %v", addr, got, want)
		}
	}
}

// The metrics/health listener serves at most maxConns connections at once:
// with every slot serving a request, one beyond is closed before anything
// is read (not after the header timeout), the refusals are logged at most
// once a second, and a slot given back serves again.
func TestMetricsConnsBounded(t *testing.T) {
	if metricsLimits.maxConns <= 0 {
		t.Fatalf("metrics server connection bound %d: unbounded", metricsLimits.maxConns)
	}
	release := make(chan struct{})
	ms := newMetricsTestServer(t, 4, time.Minute, release)
	// The slots, each serving a request that waits for release.
	for range ms.lim.maxConns {
		c := ms.dial()
		io.WriteString(c, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	waitFor(t, "every slot serving a request", func() bool { return ms.serving.Load() == int64(ms.lim.maxConns) })
	const extra = 20
	start := time.Now()
	for range extra {
		c := ms.dial()
		resp, err := ms.get(c)
		c.Close()
		if err == nil {
			t.Fatalf("a connection beyond the bound of %d was served: %s", ms.lim.maxConns, resp.Status)
		}
		if h := ms.ll.held(); h > ms.lim.maxConns {
			t.Fatalf("%d connections held, bound %d", h, ms.lim.maxConns)
		}
	}
	el := time.Since(start)
	if el > ms.lim.readHeader {
		t.Fatalf("%d refusals took %v: connections beyond the bound must be closed at once", extra, el)
	}
	lines := strings.Count(ms.logs(), "connection refused")
	// A line a second: the first, then one per second that passed.
	if most := int(el/loglimit.Every) + 1; lines < 1 || lines > most {
		t.Fatalf("%d log lines for %d refusals in %v, want 1 to %d:\n%s", lines, extra, el, most, ms.logs())
	}
	close(release)
	// The answered requests' slots are idle once their handlers have
	// returned (until then a new connection is refused, as above).
	waitFor(t, "no slot serving a request", func() bool { return ms.ll.busy() == 0 })
	c := ms.dial()
	if resp, err := ms.get(c); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("once the requests are answered, a new connection is not served: %v", err)
	}
}

// TestMetricsFloodKeepsHealthProbe attacks the bound: connections that
// send half a request and nothing more, connections idle between
// requests, and requests whose client does not read, each enough to take
// every slot, then a flood of new half-request connections from another
// address; a health probe is served through each (it takes the slot of the
// oldest of them, or of the flood's), and no more than the bound is ever
// held.
func TestMetricsFloodKeepsHealthProbe(t *testing.T) {
	ms := newMetricsTestServer(t, 4, 200*time.Millisecond, make(chan struct{}))
	probe := func(what string) {
		t.Helper()
		c := ms.dial()
		resp, err := ms.get(c)
		c.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: the health probe was not served: %v", what, err)
		}
	}
	// Half requests in every slot (the server waits 5 s for the rest).
	var half []net.Conn
	for range ms.lim.maxConns {
		c := ms.dial()
		io.WriteString(c, "GET /health HTTP/1.1\r\nHo")
		half = append(half, c)
	}
	waitFor(t, "every slot held", func() bool { return ms.ll.held() == ms.lim.maxConns })
	probe("slots held by half requests")
	// The oldest half request lost its slot: the server closed it.
	half[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := half[0].Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the oldest half request still holds its connection: %v", err)
	}
	// Idle keep-alive connections in every slot.
	for range ms.lim.maxConns {
		c := ms.dial()
		if _, err := ms.get(c); err != nil {
			t.Fatalf("a keep-alive client's request: %v", err)
		}
	}
	probe("slots held by idle keep-alive connections")
	// Requests in every slot whose handlers stall (a client that does not
	// read its answer), past busyFor.
	for range ms.lim.maxConns {
		c := ms.dial()
		io.WriteString(c, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	waitFor(t, "every slot serving a request", func() bool { return ms.serving.Load() >= int64(ms.lim.maxConns) })
	time.Sleep(ms.ll.busyFor + 50*time.Millisecond)
	probe("slots held by stalled requests")
	// A flood of new half requests from another address (127.0.0.2)
	// while probing from 127.0.0.1.
	flood := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	// The flood keeps its last few connections open (the server has closed
	// the older ones, evicted): holding them all would run the test out of
	// file descriptors. It stops however the test ends.
	stop := make(chan struct{})
	flooded := make(chan int, 1)
	go func() {
		n := 0
		var open [16]net.Conn
		defer func() {
			for _, c := range open {
				if c != nil {
					c.Close()
				}
			}
			flooded <- n
		}()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := flood.Dial("tcp", ms.addr)
			if err != nil {
				continue
			}
			io.WriteString(c, "GET /health HTTP/1.1\r\nHo")
			if old := open[n%len(open)]; old != nil {
				old.Close()
			}
			open[n%len(open)] = c
			n++
		}
	}()
	halt := sync.OnceValue(func() int { close(stop); return <-flooded })
	defer halt()
	for i := range 20 {
		probe(fmt.Sprintf("probe %d during a flood of half requests", i))
		if h := ms.ll.held(); h > ms.lim.maxConns {
			t.Fatalf("%d connections held, bound %d", h, ms.lim.maxConns)
		}
	}
	n := halt()
	t.Logf("the flood opened %d connections", n)
	if n < 20 {
		t.Fatalf("the flood opened only %d connections", n)
	}
	if !strings.Contains(ms.logs(), "closed the oldest idle or stuck connection") {
		t.Fatalf("no eviction logged:\n%s", ms.logs())
	}
}

// metricsTestServer is the metrics server with its connection bound, on
// loopback: /health answers ok, /wait waits for release (counted in
// serving while it does).
type metricsTestServer struct {
	t       *testing.T
	lim     httpLimits
	ll      *limitListener
	addr    string
	serving atomic.Int64
	mu      sync.Mutex
	log     strings.Builder
}

func newMetricsTestServer(t *testing.T, maxConns int, busyFor time.Duration, release chan struct{}) *metricsTestServer {
	ms := &metricsTestServer{t: t, lim: metricsLimits}
	ms.lim.maxConns = maxConns
	srv := metricsServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			ms.serving.Add(1)
			defer ms.serving.Add(-1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	}), ms.lim)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		ms.mu.Lock()
		defer ms.mu.Unlock()
		return ms.log.Write(p)
	}), nil))
	ms.ll = newLimitListener(l, ms.lim.maxConns, logger)
	ms.ll.busyFor = busyFor
	ms.addr = l.Addr().String()
	go ms.ll.serve(srv)
	t.Cleanup(func() { srv.Close() })
	return ms
}

func (ms *metricsTestServer) dial() net.Conn {
	c, err := net.Dial("tcp", ms.addr)
	if err != nil {
		ms.t.Fatal(err)
	}
	ms.t.Cleanup(func() { c.Close() })
	return c
}

// get asks c for /health and reads the answer.
func (ms *metricsTestServer) get(c net.Conn) (*http.Response, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

func (ms *metricsTestServer) logs() string {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.log.String()
}

// held is how many connections hold a slot of l.
func (l *limitListener) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// busy is the number of held connections serving a request.
func (l *limitListener) busy() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.conns {
		if c.busy {
			n++
		}
	}
	return n
}

// waitFor fails t unless cond holds within 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 5 s for %s", what)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
