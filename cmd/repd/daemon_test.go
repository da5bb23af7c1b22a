package main

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
// one beyond is closed before anything is read (not after the header
// timeout), the refusals are logged at most once a second, and a slot
// given back serves again.
func TestMetricsConnsBounded(t *testing.T) {
	if metricsLimits.maxConns <= 0 {
		t.Fatalf("metrics server connection bound %d: unbounded", metricsLimits.maxConns)
	}
	lim := metricsLimits
	lim.maxConns = 4
	srv := metricsServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), lim)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	go srv.Serve(newLimitListener(l, lim.maxConns, logger))
	defer srv.Close()
	addr := l.Addr().String()
	get := func(c net.Conn) (*http.Response, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	// The slots, each held by a client that answered one request and
	// keeps its connection alive.
	var held []net.Conn
	for range lim.maxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := get(c); err != nil {
			t.Fatalf("a connection under the bound: %v", err)
		}
		held = append(held, c)
	}
	const extra = 20
	start := time.Now()
	for range extra {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := get(c)
		c.Close()
		if err == nil {
			t.Fatalf("a connection beyond the bound of %d was served: %s", lim.maxConns, resp.Status)
		}
	}
	el := time.Since(start)
	if el > lim.readHeader {
		t.Fatalf("%d refusals took %v: connections beyond the bound must be closed at once", extra, el)
	}
	mu.Lock()
	lines := strings.Count(logs.String(), "connection refused")
	mu.Unlock()
	// A line a second: the first, then one per second that passed.
	if most := int(el/loglimit.Every) + 1; lines < 1 || lines > most {
		t.Fatalf("%d log lines for %d refusals in %v, want 1 to %d:\n%s", lines, extra, el, most, logs.String())
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := get(c)
		c.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a slot given back does not serve again: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
