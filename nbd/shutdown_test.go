package nbd_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// startServer runs srv on a listener without the cleanup of serve, for tests
// that drive Shutdown themselves.
func startServer(t *testing.T, srv *nbd.Server) (string, <-chan error) {
	t.Helper()
	srv.Logger = testLogger(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	return l.Addr().String(), served
}

func TestShutdownFinishesInFlight(t *testing.T) {
	dev := &holdDevice{memDevice: newMem(testSize), release: make(chan struct{}),
		hold: map[int64]bool{0: true, 4096: true}, entered: make(chan int64, 2)}
	srv := &nbd.Server{MaxInFlight: 2, Exports: []nbd.Export{{Device: dev}}}
	addr, served := startServer(t, srv)
	c := dial(t, addr, "")
	idle := dial(t, addr, "")

	// Two held writes fill MaxInFlight; the third is parsed and waits for
	// room; the last two stay in the server's read buffer.
	var reqs []nbdtest.Request
	for i := range 5 {
		reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: uint64(i * 4096), Length: 4096, Payload: pattern(4096, byte(i))})
	}
	calls, err := c.StartBatch(reqs)
	if err != nil {
		t.Fatal(err)
	}
	<-dev.entered
	<-dev.entered
	time.Sleep(50 * time.Millisecond)

	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with requests in flight", err)
	default:
	}
	waitClosed(t, idle, 5*time.Second)
	if _, err := nbdtest.Dial("tcp", addr, ""); err == nil {
		t.Fatal("dial succeeded after Shutdown began")
	}

	close(dev.release)
	for i, call := range calls {
		r, err := call.Wait()
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		want := uint32(0)
		if i >= 3 {
			want = nbd.ESHUTDOWN
		}
		if r.Error != want {
			t.Errorf("write %d: error %d, want %d", i, r.Error, want)
		}
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitClosed(t, c, 5*time.Second)
	if err := <-served; !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
}

func TestShutdownDeadline(t *testing.T) {
	dev := &holdDevice{memDevice: newMem(testSize), release: make(chan struct{}),
		hold: map[int64]bool{0: true}, entered: make(chan int64, 1)}
	srv := &nbd.Server{Exports: []nbd.Export{{Device: dev}}}
	addr, served := startServer(t, srv)
	c := dial(t, addr, "")
	call, err := c.Start(nbdtest.Request{Type: nbd.CmdRead, Length: 4096})
	if err != nil {
		t.Fatal(err)
	}
	<-dev.entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	// The held read only ends when its context is cancelled.
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want deadline exceeded", err)
	}
	if _, err := call.Wait(); err == nil {
		t.Fatal("read answered after a forced close")
	}
	if err := <-served; !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}

func TestServeContextCancel(t *testing.T) {
	srv := &nbd.Server{Exports: []nbd.Export{{Device: newMem(testSize)}}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	c := dial(t, l.Addr().String(), "")
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-served:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	waitClosed(t, c, time.Second)
}

func TestServeConnPipe(t *testing.T) {
	srv := &nbd.Server{Exports: []nbd.Export{{Device: newMem(testSize)}}}
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(context.Background(), a) }()
	c, err := nbdtest.NewClient(b, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write([]byte("pipe"), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Disc(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	// After Shutdown, ServeConn refuses.
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	a, b = net.Pipe()
	defer b.Close()
	if err := srv.ServeConn(context.Background(), a); !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("ServeConn after Shutdown: %v", err)
	}
}

// A client that sends reads and never reads the replies leaves workers
// blocked writing to a full socket. Shutdown must still end the connection
// when its context ends (the socket is shut down, not only closed: a write
// or read blocked in the kernel keeps a closed descriptor alive).
func TestShutdownDeadlineUnreadReplies(t *testing.T) {
	dev := newMem(64 << 20)
	srv := &nbd.Server{Exports: []nbd.Export{{Device: dev}}}
	addr, served := startServer(t, srv)
	nc, _ := rawGo(t, addr)
	// 8 reads of 8 MiB: far more reply bytes than the socket buffers hold.
	for i := range 8 {
		var h [nbd.RequestSize]byte
		binary.BigEndian.PutUint32(h[0:], nbd.MagicRequest)
		binary.BigEndian.PutUint16(h[6:], nbd.CmdRead)
		binary.BigEndian.PutUint64(h[8:], uint64(i))
		binary.BigEndian.PutUint64(h[16:], uint64(i)<<23)
		binary.BigEndian.PutUint32(h[24:], 8<<20)
		if _, err := nc.Write(h[:]); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the replies fill the socket

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v, want deadline exceeded (replies were never read)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown hung on a connection whose replies are not read")
	}
	if err := <-served; !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
}
