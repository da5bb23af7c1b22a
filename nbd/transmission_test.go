package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

const testSize = 1 << 20

// TestBadRequests sends each kind of bad request and checks the error value,
// then checks that the connection still works (the stream stayed in sync).
func TestBadRequests(t *testing.T) {
	full := newMem(testSize)
	plain := newMem(testSize)
	srv := &nbd.Server{
		MaxPayload: 64 << 10,
		Exports: []nbd.Export{
			{Name: "full", Device: full},
			{Name: "plain", Device: plainDevice{plain}},
			{Name: "ro", Device: newMem(testSize), ReadOnly: true},
		},
	}
	addr := serve(t, srv)
	conns := map[string]*nbdtest.Client{}
	for _, e := range srv.Exports {
		conns[e.Name] = dial(t, addr, e.Name)
	}
	const end = testSize
	payload := pattern(4096, 9)

	for _, tc := range []struct {
		name   string
		export string
		req    nbdtest.Request
		want   uint32
	}{
		{"read past end", "full", nbdtest.Request{Type: nbd.CmdRead, Offset: end - 512, Length: 1024}, nbd.EINVAL},
		{"read beyond end", "full", nbdtest.Request{Type: nbd.CmdRead, Offset: end + 4096, Length: 512}, nbd.EINVAL},
		{"read huge offset", "full", nbdtest.Request{Type: nbd.CmdRead, Offset: 1 << 63, Length: 512}, nbd.EINVAL},
		{"read offset wraps", "full", nbdtest.Request{Type: nbd.CmdRead, Offset: ^uint64(0) - 10, Length: 512}, nbd.EINVAL},
		{"read too long", "full", nbdtest.Request{Type: nbd.CmdRead, Offset: 0, Length: 64<<10 + 1}, nbd.EINVAL},
		{"trim past end", "full", nbdtest.Request{Type: nbd.CmdTrim, Offset: end - 512, Length: 1024}, nbd.EINVAL},
		{"cache past end", "full", nbdtest.Request{Type: nbd.CmdCache, Offset: end, Length: 1}, nbd.EINVAL},
		{"write past end", "full", nbdtest.Request{Type: nbd.CmdWrite, Offset: end - 1024, Length: 4096, Payload: payload}, nbd.ENOSPC},
		{"write beyond end", "full", nbdtest.Request{Type: nbd.CmdWrite, Offset: 1 << 62, Length: 4096, Payload: payload}, nbd.ENOSPC},
		{"zeroes past end", "full", nbdtest.Request{Type: nbd.CmdWriteZeroes, Offset: end - 512, Length: 1024}, nbd.ENOSPC},
		{"zeroes past end plain", "plain", nbdtest.Request{Type: nbd.CmdWriteZeroes, Offset: end, Length: 1}, nbd.ENOSPC},
		{"write read-only", "ro", nbdtest.Request{Type: nbd.CmdWrite, Offset: 0, Length: 4096, Payload: payload}, nbd.EPERM},
		{"write read-only fua", "ro", nbdtest.Request{Type: nbd.CmdWrite, Flags: nbd.CmdFlagFUA, Offset: 0, Length: 4096, Payload: payload}, nbd.EPERM},
		{"trim read-only", "ro", nbdtest.Request{Type: nbd.CmdTrim, Offset: 0, Length: 4096}, nbd.EPERM},
		{"zeroes read-only", "ro", nbdtest.Request{Type: nbd.CmdWriteZeroes, Offset: 0, Length: 4096}, nbd.EPERM},
		{"unknown command", "full", nbdtest.Request{Type: 99, Offset: 0, Length: 4096}, nbd.EINVAL},
		{"block status", "full", nbdtest.Request{Type: nbd.CmdBlockStatus, Offset: 0, Length: 4096}, nbd.EINVAL},
		{"resize", "full", nbdtest.Request{Type: nbd.CmdResize, Offset: 0, Length: 0}, nbd.EINVAL},
		{"trim unsupported", "plain", nbdtest.Request{Type: nbd.CmdTrim, Offset: 0, Length: 4096}, nbd.EINVAL},
		{"read unknown flag", "full", nbdtest.Request{Type: nbd.CmdRead, Flags: 1 << 9, Length: 512}, nbd.EINVAL},
		{"read DF not negotiated", "full", nbdtest.Request{Type: nbd.CmdRead, Flags: nbd.CmdFlagDF, Length: 512}, nbd.EINVAL},
		{"write unknown flag", "full", nbdtest.Request{Type: nbd.CmdWrite, Flags: 1 << 12, Length: 4096, Payload: payload}, nbd.EINVAL},
		{"write NO_HOLE", "full", nbdtest.Request{Type: nbd.CmdWrite, Flags: nbd.CmdFlagNoHole, Length: 4096, Payload: payload}, nbd.EINVAL},
		{"write PAYLOAD_LEN", "full", nbdtest.Request{Type: nbd.CmdWrite, Flags: nbd.CmdFlagPayloadLen, Length: 4096, Payload: payload}, nbd.EINVAL},
		{"flush unknown flag", "full", nbdtest.Request{Type: nbd.CmdFlush, Flags: nbd.CmdFlagNoHole}, nbd.EINVAL},
		{"trim unknown flag", "full", nbdtest.Request{Type: nbd.CmdTrim, Flags: nbd.CmdFlagReqOne, Length: 512}, nbd.EINVAL},
		{"cache unknown flag", "full", nbdtest.Request{Type: nbd.CmdCache, Flags: nbd.CmdFlagNoHole, Length: 512}, nbd.EINVAL},
		{"zeroes unknown flag", "full", nbdtest.Request{Type: nbd.CmdWriteZeroes, Flags: nbd.CmdFlagDF, Length: 512}, nbd.EINVAL},
		{"fast zero unsupported", "plain", nbdtest.Request{Type: nbd.CmdWriteZeroes, Flags: nbd.CmdFlagFastZero, Length: 512}, nbd.ENOTSUP},

		// Accepted edge cases.
		{"fast zero", "full", nbdtest.Request{Type: nbd.CmdWriteZeroes, Flags: nbd.CmdFlagFastZero | nbd.CmdFlagNoHole | nbd.CmdFlagFUA, Length: 512}, 0},
		{"zero-length read at end", "full", nbdtest.Request{Type: nbd.CmdRead, Offset: end}, 0},
		{"zero-length write at end", "full", nbdtest.Request{Type: nbd.CmdWrite, Offset: end}, 0},
		{"zero-length trim", "full", nbdtest.Request{Type: nbd.CmdTrim, Offset: 4096}, 0},
		{"zero-length zeroes", "plain", nbdtest.Request{Type: nbd.CmdWriteZeroes, Offset: 4096}, 0},
		{"read whole export edge", "full", nbdtest.Request{Type: nbd.CmdRead, Offset: end - 4096, Length: 4096}, 0},
		{"read fua", "full", nbdtest.Request{Type: nbd.CmdRead, Flags: nbd.CmdFlagFUA, Length: 512}, 0},
		{"cache in range", "full", nbdtest.Request{Type: nbd.CmdCache, Offset: 0, Length: end}, 0},
		{"flush fua", "full", nbdtest.Request{Type: nbd.CmdFlush, Flags: nbd.CmdFlagFUA}, 0},
		{"read read-only", "ro", nbdtest.Request{Type: nbd.CmdRead, Length: 4096}, 0},
		{"flush read-only", "ro", nbdtest.Request{Type: nbd.CmdFlush}, 0},
		{"max write", "full", nbdtest.Request{Type: nbd.CmdWrite, Offset: 0, Length: 64 << 10, Payload: make([]byte, 64<<10)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := conns[tc.export]
			r, err := c.Do(tc.req)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			if r.Error != tc.want {
				t.Fatalf("error %d, want %d", r.Error, tc.want)
			}
			if r.Error != 0 && len(r.Data) != 0 {
				t.Fatalf("error reply carried %d data bytes", len(r.Data))
			}
			// The stream is still in sync.
			p := pattern(512, byte(len(tc.name)))
			if tc.export != "ro" {
				if err := c.Write(p, 512, false); err != nil {
					t.Fatalf("write after: %v", err)
				}
			}
			got := make([]byte, 512)
			if err := c.Read(got, 512); err != nil {
				t.Fatalf("read after: %v", err)
			}
			if tc.export != "ro" && !bytes.Equal(got, p) {
				t.Fatal("read after: wrong data")
			}
		})
	}
	if n := full.zeroes.Load(); n != 1 {
		t.Errorf("Zeroer called %d times, want 1 (fast zero)", n)
	}
}

func TestWriteTooLargeCloses(t *testing.T) {
	srv := &nbd.Server{MaxPayload: 64 << 10, Exports: []nbd.Export{{Device: newMem(testSize)}}}
	addr := serve(t, srv)
	c := dial(t, addr, "")
	other := dial(t, addr, "")
	r, err := c.Do(nbdtest.Request{Type: nbd.CmdWrite, Length: 64<<10 + 1})
	if err != nil || r.Error != nbd.EINVAL {
		t.Fatalf("oversized write: %v %d, want EINVAL", err, r.Error)
	}
	waitClosed(t, c, 5*time.Second)
	if err := other.Flush(); err != nil {
		t.Fatalf("other connection: %v", err)
	}
}

func TestFramingErrorsCloseOnlyThatConnection(t *testing.T) {
	srv := &nbd.Server{Exports: []nbd.Export{{Device: newMem(testSize)}}}
	addr := serve(t, srv)
	other := dial(t, addr, "")

	t.Run("bad magic", func(t *testing.T) {
		c := dial(t, addr, "")
		_, err := c.Do(nbdtest.Request{Magic: 0x12345678, Type: nbd.CmdFlush})
		if err == nil {
			t.Fatal("got a reply to a request with bad magic")
		}
		waitClosed(t, c, 5*time.Second)
	})
	t.Run("truncated header", func(t *testing.T) {
		c := dial(t, addr, "")
		c.SendRaw([]byte{0x25, 0x60, 0x95, 0x13, 0, 0})
		c.CloseWrite()
		waitClosed(t, c, 5*time.Second)
	})
	t.Run("truncated payload", func(t *testing.T) {
		c := dial(t, addr, "")
		// A good write in flight first: it must still be answered.
		call, err := c.Start(nbdtest.Request{Type: nbd.CmdWrite, Length: 4, Payload: []byte("abcd")})
		if err != nil {
			t.Fatal(err)
		}
		var h [nbd.RequestSize]byte
		binary.BigEndian.PutUint32(h[0:], nbd.MagicRequest)
		binary.BigEndian.PutUint16(h[6:], nbd.CmdWrite)
		binary.BigEndian.PutUint32(h[24:], 4096)
		c.SendRaw(append(h[:], make([]byte, 100)...))
		c.CloseWrite()
		if r, err := call.Wait(); err != nil || r.Error != 0 {
			t.Fatalf("write before the truncation: %v %d", err, r.Error)
		}
		waitClosed(t, c, 5*time.Second)
	})
	if err := other.Write([]byte("still here"), 0, true); err != nil {
		t.Fatalf("other connection: %v", err)
	}
}

func TestDeviceErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{syscall.ENOSPC, nbd.ENOSPC},
		{syscall.EDQUOT, nbd.ENOSPC},
		{fmt.Errorf("store: %w", syscall.EFBIG), nbd.ENOSPC},
		{syscall.EPERM, nbd.EPERM},
		{syscall.EROFS, nbd.EPERM},
		{fs.ErrPermission, nbd.EPERM},
		{syscall.EINVAL, nbd.EINVAL},
		{syscall.ESHUTDOWN, nbd.ESHUTDOWN},
		{syscall.ENOMEM, nbd.ENOMEM},
		{syscall.EIO, nbd.EIO},
		{errors.New("something else"), nbd.EIO},
		{context.Canceled, nbd.EIO},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			dev := &faultyDevice{memDevice: newMem(testSize), err: tc.err,
				fail: map[string]bool{"read": true, "write": true, "flush": true, "trim": true, "zero": true}}
			plain := &faultyDevice{memDevice: newMem(testSize), err: tc.err, fail: map[string]bool{"write": true}}
			srv := &nbd.Server{Exports: []nbd.Export{
				{Name: "a", Device: dev},
				{Name: "plain", Device: plainFaulty{plain}},
			}}
			addr := serve(t, srv)
			c := dial(t, addr, "a")
			p := make([]byte, 4096)
			check := func(what string, err error) {
				t.Helper()
				if got := nbdtest.ErrorCode(err); got != tc.want {
					t.Errorf("%s: error %v (%d), want %d", what, err, got, tc.want)
				}
			}
			check("read", c.Read(p, 0))
			check("write", c.Write(p, 0, false))
			check("flush", c.Flush())
			check("trim", c.Trim(0, 4096, false))
			check("zeroes", c.WriteZeroes(0, 4096, 0))
			pc := dial(t, addr, "plain")
			check("zeroes by writing", pc.WriteZeroes(0, 768<<10, nbd.CmdFlagFUA))
			// The connection goes on.
			dev.fail = nil
			if err := c.Write(p, 0, false); err != nil {
				t.Fatalf("after errors: %v", err)
			}
		})
	}
}

// plainFaulty is a faultyDevice without Trim and WriteZeroes.
type plainFaulty struct{ f *faultyDevice }

func (p plainFaulty) Size() int64 { return p.f.Size() }
func (p plainFaulty) ReadAt(ctx context.Context, b []byte, off int64) error {
	return p.f.ReadAt(ctx, b, off)
}
func (p plainFaulty) WriteAt(ctx context.Context, b []byte, off int64, fua bool) error {
	return p.f.WriteAt(ctx, b, off, fua)
}
func (p plainFaulty) Flush(ctx context.Context) error { return p.f.Flush(ctx) }

func TestCommands(t *testing.T) {
	full := newMem(testSize)
	plain := newMem(testSize)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{
		{Name: "full", Device: full},
		{Name: "plain", Device: plainDevice{plain}},
	}})
	for _, tc := range []struct {
		name string
		m    *memDevice
	}{{"full", full}, {"plain", plain}} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr, tc.name)
			p := pattern(testSize, 1)
			if err := c.Write(p[:512<<10], 0, false); err != nil {
				t.Fatal(err)
			}
			if err := c.Write(p[512<<10:], 512<<10, true); err != nil {
				t.Fatal(err)
			}
			if tc.m.fuas.Load() != 1 {
				t.Errorf("FUA writes at the device: %d, want 1", tc.m.fuas.Load())
			}
			if err := c.WriteZeroes(4096, 3*4096, nbd.CmdFlagNoHole); err != nil {
				t.Fatal(err)
			}
			clear(p[4096 : 4*4096])
			// Unaligned, over several fallback chunks.
			if err := c.WriteZeroes(100_003, 300_007, 0); err != nil {
				t.Fatal(err)
			}
			clear(p[100_003 : 100_003+300_007])
			if tc.name == "full" {
				if err := c.Trim(800<<10, 4096, true); err != nil {
					t.Fatal(err)
				}
				clear(p[800<<10 : 800<<10+4096])
			}
			if err := c.Cache(0, testSize); err != nil {
				t.Fatal(err)
			}
			before := tc.m.flushes.Load()
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			if tc.m.flushes.Load() != before+1 {
				t.Error("flush did not reach the device")
			}
			got := make([]byte, testSize)
			if err := c.Read(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, p) {
				t.Fatal("export content differs")
			}
			if err := c.Disc(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPipelining(t *testing.T) {
	dev := &holdDevice{memDevice: newMem(testSize), release: make(chan struct{}),
		hold: map[int64]bool{0: true, 4096: true, 8192: true}}
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	c := dial(t, addr, "")

	// Three held requests first, then many fast ones: the fast ones must be
	// answered while the held ones are still pending.
	var reqs []nbdtest.Request
	for i := range 3 {
		reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: uint64(i * 4096), Length: 4096, Payload: pattern(4096, byte(i))})
	}
	for i := 3; i < 200; i++ {
		off := uint64(i%200) * 4096
		if i%2 == 0 {
			reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: off, Length: 4096, Payload: pattern(4096, byte(i))})
		} else {
			reqs = append(reqs, nbdtest.Request{Type: nbd.CmdRead, Offset: off, Length: 4096})
		}
	}
	calls, err := c.StartBatch(reqs)
	if err != nil {
		t.Fatal(err)
	}
	for _, call := range calls[3:] {
		r, err := call.Wait()
		if err != nil || r.Error != 0 {
			t.Fatalf("request %d: %v %d", call.Req.Cookie, err, r.Error)
		}
		if call.Req.Type == nbd.CmdRead && len(r.Data) != 4096 {
			t.Fatalf("read returned %d bytes", len(r.Data))
		}
	}
	for _, call := range calls[:3] {
		select {
		case <-call.Done:
			t.Fatal("held request answered before release")
		default:
		}
	}
	close(dev.release)
	for _, call := range calls[:3] {
		if r, err := call.Wait(); err != nil || r.Error != 0 {
			t.Fatalf("held request: %v %d", err, r.Error)
		}
	}
	got := make([]byte, 4096)
	if err := c.Read(got, 4096); err != nil || !bytes.Equal(got, pattern(4096, 1)) {
		t.Fatalf("held write content: %v", err)
	}
}

func TestInFlightBound(t *testing.T) {
	dev := &holdDevice{memDevice: newMem(testSize), release: make(chan struct{}),
		hold: map[int64]bool{}, entered: make(chan int64, 100)}
	for i := range 10 {
		dev.hold[int64(i*4096)] = true
	}
	addr := serve(t, &nbd.Server{MaxInFlight: 4, Exports: []nbd.Export{{Device: dev}}})
	c := dial(t, addr, "")
	var reqs []nbdtest.Request
	for i := range 10 {
		reqs = append(reqs, nbdtest.Request{Type: nbd.CmdRead, Offset: uint64(i * 4096), Length: 4096})
	}
	calls, err := c.StartBatch(reqs)
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		<-dev.entered
	}
	time.Sleep(50 * time.Millisecond)
	if n := dev.cur.Load(); n != 4 {
		t.Fatalf("%d requests at the device, want 4", n)
	}
	close(dev.release)
	for _, call := range calls {
		if r, err := call.Wait(); err != nil || r.Error != 0 {
			t.Fatal(err, r.Error)
		}
	}
	if p := dev.peak.Load(); p > 4 {
		t.Fatalf("peak concurrency %d > MaxInFlight 4", p)
	}
}

func TestDiscAnswersInFlight(t *testing.T) {
	dev := &holdDevice{memDevice: newMem(testSize), release: make(chan struct{}),
		hold: map[int64]bool{0: true}, entered: make(chan int64, 1)}
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	c := dial(t, addr, "")
	var reqs []nbdtest.Request
	for i := range 10 {
		reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: uint64(i * 4096), Length: 4096, Payload: pattern(4096, byte(i))})
	}
	reqs = append(reqs, nbdtest.Request{Type: nbd.CmdDisc})
	calls, err := c.StartBatch(reqs)
	if err != nil {
		t.Fatal(err)
	}
	<-dev.entered
	time.Sleep(50 * time.Millisecond)
	select {
	case <-c.Closed():
		t.Fatal("closed before the held write was answered")
	default:
	}
	close(dev.release)
	for _, call := range calls[:10] {
		if r, err := call.Wait(); err != nil || r.Error != 0 {
			t.Fatalf("write: %v %d", err, r.Error)
		}
	}
	waitClosed(t, c, 5*time.Second)
}

func TestMultiConn(t *testing.T) {
	dev := newMem(4 << 20)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	const conns, blocks = 8, 64
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := nbdtest.Dial("tcp", addr, "")
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			var reqs []nbdtest.Request
			for b := range blocks {
				off := uint64((i*blocks + b) * 4096)
				reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: off, Length: 4096, Payload: pattern(4096, byte(i*blocks+b))})
			}
			calls, err := c.StartBatch(reqs)
			if err != nil {
				t.Error(err)
				return
			}
			for _, call := range calls {
				if r, err := call.Wait(); err != nil || r.Error != 0 {
					t.Errorf("conn %d write: %v %d", i, err, r.Error)
					return
				}
			}
			if err := c.Flush(); err != nil {
				t.Error(err)
			}
			if err := c.Disc(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// Read everything back through a fresh connection.
	c := dial(t, addr, "")
	got := make([]byte, conns*blocks*4096)
	if err := c.Read(got, 0); err != nil {
		t.Fatal(err)
	}
	for b := range conns * blocks {
		if !bytes.Equal(got[b*4096:(b+1)*4096], pattern(4096, byte(b))) {
			t.Fatalf("block %d differs", b)
		}
	}
}

func TestRandomIO(t *testing.T) {
	// Random pipelined reads and writes of random sizes against a model.
	dev := newMem(testSize)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	c := dial(t, addr, "")
	model := make([]byte, testSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		// Within a round, writes do not overlap each other or the reads.
		var reqs []nbdtest.Request
		var want [][]byte
		for i := range 32 {
			n := 1 + rng.IntN(8192)
			off := i*(testSize/32) + rng.IntN(testSize/32-n)
			if rng.IntN(2) == 0 {
				p := pattern(n, byte(round*32+i))
				copy(model[off:], p)
				reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: uint64(off), Length: uint32(n), Payload: p})
				want = append(want, nil)
			} else {
				reqs = append(reqs, nbdtest.Request{Type: nbd.CmdRead, Offset: uint64(off), Length: uint32(n)})
				want = append(want, bytes.Clone(model[off:off+n]))
			}
		}
		calls, err := c.StartBatch(reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i, call := range calls {
			r, err := call.Wait()
			if err != nil || r.Error != 0 {
				t.Fatal(err, r.Error)
			}
			if want[i] != nil && !bytes.Equal(r.Data, want[i]) {
				t.Fatalf("round %d request %d: read differs", round, i)
			}
		}
	}
}

func TestPanicClosesOnlyThatConnection(t *testing.T) {
	srv := &nbd.Server{Exports: []nbd.Export{{Device: panicDevice{newMem(testSize)}}}}
	addr := serve(t, srv)
	other := dial(t, addr, "")
	c := dial(t, addr, "")
	if err := c.Read(make([]byte, 512), 0); err == nil {
		t.Fatal("read that panicked succeeded")
	}
	waitClosed(t, c, 5*time.Second)
	if err := other.Read(make([]byte, 512), 4096); err != nil {
		t.Fatalf("other connection: %v", err)
	}
	c2 := dial(t, addr, "")
	if err := c2.Flush(); err != nil {
		t.Fatalf("new connection: %v", err)
	}
}

func TestOnRequest(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	var errs int
	srv := &nbd.Server{
		Exports: []nbd.Export{{Device: newMem(testSize)}},
		OnRequest: func(cmd string, n int64, dur time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			seen[cmd]++
			if err != nil {
				errs++
			}
		},
	}
	addr := serve(t, srv)
	c := dial(t, addr, "")
	c.Write(make([]byte, 4096), 0, false)
	c.Read(make([]byte, 4096), 0)
	c.Read(make([]byte, 4096), testSize)
	c.Flush()
	c.Do(nbdtest.Request{Type: 42})
	c.Disc()
	mu.Lock()
	defer mu.Unlock()
	if seen["write"] != 1 || seen["read"] != 2 || seen["flush"] != 1 || seen["unknown"] != 1 || errs != 2 {
		t.Fatalf("OnRequest saw %v with %d errors", seen, errs)
	}
}
