package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// asyncDevice is a memDevice that completes small writes later
// (nbd.AsyncWriter), as a replicated device completes them on its peers'
// acks: StartWrite writes the data and queues the completion; Kick hands
// the queue to a completer goroutine, which reports each write and then
// calls the flushes the reports returned. It is never Quick.
type asyncDevice struct {
	*memDevice
	fail    map[int64]error // StartWrite at these offsets completes with the error
	decline atomic.Bool     // StartWrite declines: the server uses WriteAt

	mu      sync.Mutex
	pending []asyncDone
	hold    chan struct{} // if non-nil, the completer waits for it to close

	work                  chan []asyncDone
	starts, kicks, writes atomic.Int64
	completed             atomic.Int64
}

type asyncDone struct {
	done func(error) func()
	err  error
}

func newAsync(size int) *asyncDevice {
	return &asyncDevice{memDevice: newMem(size), fail: map[int64]error{}, work: make(chan []asyncDone, 1024)}
}

// run completes the kicked writes until the test ends.
func (d *asyncDevice) run(t *testing.T) {
	stop := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(stop); <-stopped })
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case ws := <-d.work:
				d.mu.Lock()
				hold := d.hold
				d.mu.Unlock()
				if hold != nil {
					<-hold
				}
				var flushes []func()
				for _, w := range ws {
					if f := w.done(w.err); f != nil {
						flushes = append(flushes, f)
					}
					d.completed.Add(1)
				}
				for _, f := range flushes {
					f()
				}
			}
		}
	}()
}

func (d *asyncDevice) Quick(write bool, n int64) bool { return false }

func (d *asyncDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.writes.Add(1)
	return d.memDevice.WriteAt(ctx, p, off, fua)
}

func (d *asyncDevice) StartWrite(ctx context.Context, p []byte, off int64, fua, last bool, done func(error) func()) bool {
	if d.decline.Load() || fua {
		return false
	}
	d.starts.Add(1)
	err := d.fail[off]
	if err == nil {
		d.memDevice.WriteAt(ctx, p, off, false)
	}
	d.mu.Lock()
	d.pending = append(d.pending, asyncDone{done, err})
	d.mu.Unlock()
	if last {
		d.Kick()
	}
	return true
}

func (d *asyncDevice) Kick() {
	d.kicks.Add(1)
	d.mu.Lock()
	ws := d.pending
	d.pending = nil
	d.mu.Unlock()
	if len(ws) > 0 {
		d.work <- ws
	}
}

// Pipelined writes (some FUA, which the device declines, and some larger
// than the reader starts itself) and reads on several connections: every
// write is answered once, with the right cookie, and reads back; the small
// ones went through StartWrite, kicked in runs, not one by one.
func TestAsyncWrites(t *testing.T) {
	const size = 32 << 20
	dev := newAsync(size)
	dev.run(t)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	model := make([]byte, size)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for conn := range 4 {
		c := dial(t, addr, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(conn), 9))
			// Each connection writes its own quarter, and the writes of a
			// round do not overlap (pipelined writes may be applied in
			// any order): the model is exact.
			base := conn * size / 4
			const slot = 128 << 10
			for round := range 20 {
				var reqs []nbdtest.Request
				var writes [][2]int
				for _, s := range rng.Perm(size / 4 / slot)[:32] {
					n, off := slot, base+s*slot // beyond what the reader starts itself
					if rng.IntN(8) != 0 {
						n = 4096
						off += rng.IntN(slot/4096) * 4096
					}
					var flags uint16
					if rng.IntN(16) == 0 {
						flags = nbd.CmdFlagFUA
					}
					p := pattern(n, byte(round*32+len(reqs)))
					reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Flags: flags, Offset: uint64(off), Length: uint32(n), Payload: p})
					writes = append(writes, [2]int{off, n})
				}
				t0 := time.Now()
				calls, err := c.StartBatch(reqs)
				if err != nil {
					errs <- err
					return
				}
				for i, call := range calls {
					r, err := call.Wait()
					if err != nil || r.Error != 0 {
						errs <- fmt.Errorf("write %d of round %d: %v, error %d", i, round, err, r.Error)
						return
					}
				}
				if d := time.Since(t0); d > 100*time.Millisecond {
					t.Logf("conn %d round %d: %v", conn, round, d)
				}
				mu.Lock()
				for i, w := range writes {
					copy(model[w[0]:w[0]+w[1]], reqs[i].Payload)
				}
				mu.Unlock()
			}
			back := make([]byte, size/4)
			if err := c.Read(back, int64(base)); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if !bytes.Equal(back, model[base:base+size/4]) {
				errs <- fmt.Errorf("connection %d: its quarter does not read back as written", conn)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	starts, kicks, completed := dev.starts.Load(), dev.kicks.Load(), dev.completed.Load()
	if starts == 0 || dev.writes.Load() == 0 {
		t.Fatalf("StartWrite %d times, WriteAt %d: want both used", starts, dev.writes.Load())
	}
	if completed != starts {
		t.Fatalf("%d writes started, %d completed", starts, completed)
	}
	if kicks == 0 || kicks > starts {
		t.Fatalf("%d kicks for %d writes started", kicks, starts)
	}
	t.Logf("%d writes started, %d kicks, %d through WriteAt", starts, kicks, dev.writes.Load())
}

// A write that completes with an error is answered with its NBD error, in
// a simple reply and in a structured one (with a message), and the
// connection goes on; a device that declines serves writes with WriteAt.
func TestAsyncWriteErrors(t *testing.T) {
	dev := newAsync(testSize)
	dev.fail[4096] = syscall.EIO
	dev.fail[8192] = syscall.ENOSPC
	dev.run(t)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	for _, structured := range []bool{false, true} {
		nc := rawDial(t, addr)
		n, err := nbdtest.Negotiate(nc, nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes)
		if err != nil {
			t.Fatal(err)
		}
		if structured {
			if err := n.StructuredReply(); err != nil {
				t.Fatal(err)
			}
		}
		c, err := n.Go("")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			off  uint64
			want uint32
		}{{0, 0}, {4096, nbd.EIO}, {8192, nbd.ENOSPC}, {12288, 0}} {
			r, err := c.Do(nbdtest.Request{Type: nbd.CmdWrite, Offset: tc.off, Length: 4096, Payload: pattern(4096, 5)})
			if err != nil {
				t.Fatal(err)
			}
			if r.Error != tc.want {
				t.Fatalf("structured %v: write at %d: error %d, want %d", structured, tc.off, r.Error, tc.want)
			}
			if structured && tc.want != 0 && r.Message == "" {
				t.Fatalf("write at %d: structured error without a message", tc.off)
			}
		}
		c.Close()
	}
	dev.decline.Store(true)
	c := dial(t, addr, "")
	before := dev.starts.Load()
	if err := c.Write(pattern(4096, 6), 4096, false); err != nil {
		t.Fatalf("declined write: %v", err)
	}
	if dev.starts.Load() != before || dev.writes.Load() == 0 {
		t.Fatal("a declined write was not made with WriteAt")
	}
}

// Shutdown waits for writes started but not yet completed, and their
// replies reach the client.
func TestAsyncShutdownWaits(t *testing.T) {
	dev := newAsync(testSize)
	dev.hold = make(chan struct{})
	dev.run(t)
	srv := &nbd.Server{Exports: []nbd.Export{{Device: dev}}}
	addr := serve(t, srv)
	c := dial(t, addr, "")
	var calls []*nbdtest.Call
	for i := range 8 {
		call, err := c.Start(nbdtest.Request{Type: nbd.CmdWrite, Offset: uint64(i) * 4096, Length: 4096, Payload: pattern(4096, byte(i))})
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, call)
	}
	for dev.starts.Load() < 8 {
		time.Sleep(time.Millisecond)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with writes in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(dev.hold)
	for i, call := range calls {
		if r, err := call.Wait(); err != nil || r.Error != 0 {
			t.Fatalf("write %d: %v, error %d", i, err, r.Error)
		}
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A client that sends many writes before it reads any reply: the replies
// that complete while its socket is full are left to a goroutine that
// waits for the socket (the completer does not block), the reader stops
// at its bounds, and once the client reads, every reply arrives, in full.
func TestAsyncRepliesToAClientThatDoesNotRead(t *testing.T) {
	dev := newAsync(testSize)
	dev.run(t)
	// Small socket buffers (the accepted socket inherits the listener's):
	// the server's replies fill them soon.
	small := func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
		})
	}
	l, err := (&net.ListenConfig{Control: small}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := serveOn(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}}, l)
	d := net.Dialer{Control: small}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	n, err := nbdtest.Negotiate(nc, nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Info(nbd.OptGo, ""); err != nil {
		t.Fatal(err)
	}
	br := n.Reader()
	const writes = 30000 // 480 KB of replies
	sent := make(chan error, 1)
	go func() {
		req := make([]byte, nbd.RequestSize+512)
		for i := range writes {
			binary.BigEndian.PutUint32(req[0:], nbd.MagicRequest)
			binary.BigEndian.PutUint16(req[6:], nbd.CmdWrite)
			binary.BigEndian.PutUint64(req[8:], uint64(i))
			binary.BigEndian.PutUint64(req[16:], uint64(i%64)*512)
			binary.BigEndian.PutUint32(req[24:], 512)
			if _, err := nc.Write(req); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	// Let the replies pile up against the window before reading.
	deadline := time.Now().Add(5 * time.Second)
	for last := int64(-1); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		k := dev.completed.Load()
		if k == last {
			break // the server stopped: its bounds hold it
		}
		last = k
	}
	if k := dev.completed.Load(); k >= writes {
		t.Fatalf("all %d writes completed before the client read a reply: the replies did not fill the socket", k)
	}
	seen := make([]bool, writes)
	var h [nbd.SimpleReplySize]byte
	for range writes {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("read reply: %v", err)
		}
		cookie := binary.BigEndian.Uint64(h[8:])
		if binary.BigEndian.Uint32(h[0:]) != nbd.MagicSimpleReply || binary.BigEndian.Uint32(h[4:]) != 0 || cookie >= writes || seen[cookie] {
			t.Fatalf("bad reply %x", h)
		}
		seen[cookie] = true
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if got := dev.starts.Load(); got != writes {
		t.Fatalf("%d writes started, want %d", got, writes)
	}
}

// syncDevice is an AsyncWriter that completes every write inside
// StartWrite, after writing it, and calls the flush the report returns
// there, as a replicated device under protocol A does.
type syncDevice struct {
	*memDevice
	starts atomic.Int64
}

func (d *syncDevice) Quick(write bool, n int64) bool { return false }

func (d *syncDevice) StartWrite(ctx context.Context, p []byte, off int64, fua, last bool, done func(error) func()) bool {
	if fua {
		return false
	}
	d.starts.Add(1)
	err := d.memDevice.WriteAt(ctx, p, off, false)
	if f := done(err); f != nil {
		f()
	}
	return true
}

func (d *syncDevice) Kick() {}

// Writes completed inside StartWrite leave their replies to the reader,
// which sends a run's replies in one system call when it has no further
// request buffered (or the run reaches kickEvery): a batch of 32 pipelined
// writes is answered in a few writes to the socket, not 32. Every write is
// answered, and reads back.
func TestAsyncSyncCompletionsBatchReplies(t *testing.T) {
	const size = 8 << 20
	dev := &syncDevice{memDevice: newMem(size)}
	srv := &nbd.Server{Exports: []nbd.Export{{Device: dev}}}
	addr := serve(t, srv)
	c := dial(t, addr, "")
	model := make([]byte, size)
	const batches, perBatch = 20, 32
	var sends int64
	for b := range batches {
		var reqs []nbdtest.Request
		for i := range perBatch {
			off := ((b*perBatch + i) * 4096 * 7) % (size - 4096)
			off -= off % 4096
			p := pattern(4096, byte(b*perBatch+i))
			reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: uint64(off), Length: 4096, Payload: p})
		}
		before := srv.ReplySends()
		calls, err := c.StartBatch(reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i, call := range calls {
			if r, err := call.Wait(); err != nil || r.Error != 0 {
				t.Fatalf("batch %d write %d: %v, error %d", b, i, err, r.Error)
			}
		}
		sends += srv.ReplySends() - before
		for _, r := range reqs {
			copy(model[r.Offset:], r.Payload)
		}
	}
	if got := dev.starts.Load(); got != batches*perBatch {
		t.Fatalf("%d writes went through StartWrite, want %d", got, batches*perBatch)
	}
	back := make([]byte, size)
	if err := c.Read(back, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, model) {
		t.Fatal("the device does not read back as written")
	}
	// At least two runs per batch (kickEvery is 16), more where the batch
	// arrived in pieces; one reply per write would be 32.
	if per := float64(sends) / batches; per > 8 {
		t.Fatalf("%.1f sends per batch of %d replies: want a few", per, perBatch)
	} else {
		t.Logf("%.1f sends per batch of %d replies", per, perBatch)
	}
}

// A reader that starts writes an AsyncWriter completes elsewhere waits for
// the next request in the netpoller, never asleep in read(2), however the
// client pipelines: its thread then runs the goroutine that completes them
// instead of another thread waking for it. A reader that runs Quick writes
// itself still switches its socket to blocking reads (the control: the
// observation sees the mode).
func TestAsyncWritesReaderWaitsInNetpoller(t *testing.T) {
	for _, tc := range []struct {
		name     string
		dev      func(t *testing.T) nbd.Device
		blocking bool
	}{
		{"async", func(t *testing.T) nbd.Device { d := newAsync(8 << 20); d.run(t); return d }, false},
		{"quick", func(t *testing.T) nbd.Device { return newQuick(8<<20, true) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: tc.dev(t)}}})
			nc, br := rawGo(t, addr)
			go io.Copy(io.Discard, br) // the replies
			data := bytes.Repeat([]byte{7}, 4096)
			saw := false
			// Bursts of 32 small writes: every read(2) of the server
			// returns many requests, as from a client at QD32.
			for i, end := uint64(0), time.Now().Add(time.Second); time.Now().Before(end) && !(saw && tc.blocking); i++ {
				var b []byte
				for j := range uint64(32) {
					b = append(b, request(nbd.CmdWrite, 0, i*32+j, (j%256)*4096, 4096)...)
					b = append(b, data...)
				}
				if _, err := nc.Write(b); err != nil {
					t.Fatal(err)
				}
				saw = saw || serverSocketBlocking(t, nc)
			}
			if saw != tc.blocking {
				t.Errorf("the server's socket in blocking mode at some point: %v, want %v", saw, tc.blocking)
			}
		})
	}
}

// serverSocketBlocking reports whether the server's end of the TCP
// connection nc, a socket of this process, is in blocking mode (O_NONBLOCK
// clear): the descriptor whose peer is nc's local address.
func serverSocketBlocking(t *testing.T, nc net.Conn) bool {
	t.Helper()
	local := nc.LocalAddr().(*net.TCPAddr)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := syscall.Getpeername(fd)
		in4, ok := sa.(*syscall.SockaddrInet4)
		if err != nil || !ok || in4.Port != local.Port || !net.IP(in4.Addr[:]).Equal(local.IP) {
			continue
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			continue // closed meanwhile
		}
		return fl&unix.O_NONBLOCK == 0
	}
	t.Fatalf("no socket of this process has %s as its peer", local)
	return false
}
