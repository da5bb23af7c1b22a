package nbd_test

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// memDevice is an in-memory Device with Trim and WriteZeroes.
type memDevice struct {
	mu      sync.RWMutex
	data    []byte
	flushes atomic.Int64
	fuas    atomic.Int64
	trims   atomic.Int64
	zeroes  atomic.Int64
}

func newMem(size int) *memDevice { return &memDevice{data: make([]byte, size)} }

func (m *memDevice) Size() int64 { return int64(len(m.data)) }

func (m *memDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	copy(p, m.data[off:])
	return nil
}

func (m *memDevice) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	if fua {
		m.fuas.Add(1)
	}
	return nil
}

func (m *memDevice) Flush(context.Context) error {
	m.flushes.Add(1)
	return nil
}

func (m *memDevice) Trim(_ context.Context, off, n int64, fua bool) error {
	m.trims.Add(1)
	return m.zero(off, n)
}

func (m *memDevice) WriteZeroes(_ context.Context, off, n int64, noHole, fua bool) error {
	m.zeroes.Add(1)
	return m.zero(off, n)
}

func (m *memDevice) zero(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

// plainDevice has only the required methods: no Trim, no WriteZeroes.
type plainDevice struct{ m *memDevice }

func (p plainDevice) Size() int64 { return p.m.Size() }
func (p plainDevice) ReadAt(ctx context.Context, b []byte, off int64) error {
	return p.m.ReadAt(ctx, b, off)
}
func (p plainDevice) WriteAt(ctx context.Context, b []byte, off int64, fua bool) error {
	return p.m.WriteAt(ctx, b, off, fua)
}
func (p plainDevice) Flush(ctx context.Context) error { return p.m.Flush(ctx) }

// faultyDevice fails the operations named in fail ("read", "write", "flush",
// "trim", "zero") with err.
type faultyDevice struct {
	*memDevice
	fail map[string]bool
	err  error
}

func (f *faultyDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if f.fail["read"] {
		return f.err
	}
	return f.memDevice.ReadAt(ctx, p, off)
}

func (f *faultyDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if f.fail["write"] {
		return f.err
	}
	return f.memDevice.WriteAt(ctx, p, off, fua)
}

func (f *faultyDevice) Flush(ctx context.Context) error {
	if f.fail["flush"] {
		return f.err
	}
	return f.memDevice.Flush(ctx)
}

func (f *faultyDevice) Trim(ctx context.Context, off, n int64, fua bool) error {
	if f.fail["trim"] {
		return f.err
	}
	return f.memDevice.Trim(ctx, off, n, fua)
}

func (f *faultyDevice) WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error {
	if f.fail["zero"] {
		return f.err
	}
	return f.memDevice.WriteZeroes(ctx, off, n, noHole, fua)
}

// holdDevice blocks reads and writes whose offset is in hold until release
// is closed (or the request's context ends), and counts concurrency.
type holdDevice struct {
	*memDevice
	hold    map[int64]bool
	release chan struct{}
	entered chan int64 // receives the offset of each held request, if non-nil

	cur, peak atomic.Int64
}

func (h *holdDevice) wait(ctx context.Context, off int64) error {
	n := h.cur.Add(1)
	defer h.cur.Add(-1)
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if !h.hold[off] {
		return nil
	}
	if h.entered != nil {
		h.entered <- off
	}
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *holdDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := h.wait(ctx, off); err != nil {
		return err
	}
	return h.memDevice.ReadAt(ctx, p, off)
}

func (h *holdDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := h.wait(ctx, off); err != nil {
		return err
	}
	return h.memDevice.WriteAt(ctx, p, off, fua)
}

// panicDevice panics on reads at offset 0.
type panicDevice struct{ *memDevice }

func (p panicDevice) ReadAt(ctx context.Context, b []byte, off int64) error {
	if off == 0 {
		panic("panicDevice: read at 0")
	}
	return p.memDevice.ReadAt(ctx, b, off)
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NBD_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// serve runs srv on a loopback TCP listener until the test ends, then shuts it
// down and checks that Serve returned ErrServerClosed.
func serve(t testing.TB, srv *nbd.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, srv, l)
}

// serveOn is serve on the listener l.
func serveOn(t testing.TB, srv *nbd.Server, l net.Listener) string {
	t.Helper()
	if srv.Logger == nil {
		srv.Logger = testLogger(t)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if !errors.Is(err, nbd.ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return l.Addr().String()
}

func dial(t testing.TB, addr, export string) *nbdtest.Client {
	t.Helper()
	c, err := nbdtest.Dial("tcp", addr, export)
	if err != nil {
		t.Fatalf("dial %s %q: %v", addr, export, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rawDial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// rawGo dials addr, negotiates the default export with OPT_GO and returns
// the raw connection and the reader of its replies, for tests that write
// requests themselves.
func rawGo(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc := rawDial(t, addr)
	n, err := nbdtest.Negotiate(nc, nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Info(nbd.OptGo, ""); err != nil {
		t.Fatal(err)
	}
	return nc, n.Reader()
}

// waitClosed fails unless the client's connection ends within d.
func waitClosed(t testing.TB, c *nbdtest.Client, d time.Duration) {
	t.Helper()
	select {
	case <-c.Closed():
	case <-time.After(d):
		t.Fatalf("connection still open after %v", d)
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}
