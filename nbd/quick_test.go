package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// quickDevice is a holdDevice that answers Quick with quick and records
// what it was asked.
type quickDevice struct {
	*holdDevice
	quick bool

	mu    sync.Mutex
	asked []int64 // n of each Quick call, negative for reads
}

func (q *quickDevice) Quick(write bool, n int64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !write {
		n = -n
	}
	q.asked = append(q.asked, n)
	return q.quick
}

func (q *quickDevice) questions() []int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]int64(nil), q.asked...)
}

func newQuick(size int, quick bool, hold ...int64) *quickDevice {
	h := &holdDevice{memDevice: newMem(size), release: make(chan struct{}),
		hold: map[int64]bool{}, entered: make(chan int64, 8)}
	for _, off := range hold {
		h.hold[off] = true
	}
	return &quickDevice{holdDevice: h, quick: quick}
}

// A request the Device calls Quick runs on the reader when nothing else is
// buffered: the next request is read only after it. One it does not call
// Quick goes to a worker and the reader goes on.
func TestQuickRunsOnReader(t *testing.T) {
	for _, quick := range []bool{true, false} {
		dev := newQuick(testSize, quick, 0)
		addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
		c := dial(t, addr, "")
		held, err := c.Start(nbdtest.Request{Type: nbd.CmdWrite, Length: 4096, Payload: pattern(4096, 1)})
		if err != nil {
			t.Fatal(err)
		}
		<-dev.entered
		next, err := c.Start(nbdtest.Request{Type: nbd.CmdRead, Offset: 4096, Length: 4096})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-next.Done:
			if quick {
				t.Fatal("quick: the next request was answered while the reader ran the held one")
			}
		case <-time.After(200 * time.Millisecond):
			if !quick {
				t.Fatal("not quick: the next request waited for the held one")
			}
		}
		close(dev.release)
		for _, call := range []*nbdtest.Call{held, next} {
			if r, err := call.Wait(); err != nil || r.Error != 0 {
				t.Fatalf("quick=%v: %v %d", quick, err, r.Error)
			}
		}
		if got := dev.questions(); len(got) == 0 || got[0] != 4096 {
			t.Fatalf("quick=%v: Quick asked %v, want first a write of 4096", quick, got)
		}
	}
}

// Quick is asked only about reads and writes of up to 64 KiB.
func TestQuickAskedOnlyForSmallIO(t *testing.T) {
	dev := newQuick(4<<20, true)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	c := dial(t, addr, "")
	big := pattern(1<<20, 3)
	steps := []func() error{
		func() error { return c.Write(big, 0, false) },
		func() error { return c.Read(make([]byte, 1<<20), 0) },
		func() error { return c.Write(pattern(64<<10, 4), 1<<20, true) },
		func() error { return c.Read(make([]byte, 512), 0) },
		func() error { return c.Flush() },
		func() error { return c.Trim(2<<20, 4096, false) },
		func() error { return c.WriteZeroes(3<<20, 4096, 0) },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	got := dev.questions()
	want := []int64{64 << 10, -512}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Quick asked %v, want %v", got, want)
	}
	back := make([]byte, 1<<20)
	if err := c.Read(back, 0); err != nil || !bytes.Equal(back, big) {
		t.Fatalf("1 MiB write read back: %v", err)
	}
}

// Pipelined reads and writes from 512 B to 2 MiB on several unix-socket
// connections against a model, with a Quick device: small requests run on
// the readers, large payloads switch the sockets out of blocking mode and
// back.
func TestQuickMixedSizes(t *testing.T) {
	const size = 32 << 20
	const conns = 3
	dev := newQuick(size, true)
	srv := &nbd.Server{Exports: []nbd.Export{{Device: dev}}}
	srv.Logger = testLogger(t)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for ci := range conns {
		c, err := nbdtest.Dial("unix", sock, "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Each connection owns one slice of the device.
		base := ci * (size / conns)
		span := size / conns
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- mixedRounds(c, base, span, uint64(ci))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, nbd.ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
}

func mixedRounds(c *nbdtest.Client, base, span int, seed uint64) error {
	model := make([]byte, span)
	rng := rand.New(rand.NewPCG(seed, 7))
	const slots = 12
	slot := span / slots
	for round := range 8 {
		// Within a round, requests do not overlap.
		var reqs []nbdtest.Request
		var want [][]byte
		for i := range slots {
			n := 512 + rng.IntN(8192)
			if rng.IntN(4) == 0 {
				n = 64<<10 + rng.IntN(1<<20-64<<10)
			}
			n = min(n, slot)
			off := i*slot + rng.IntN(slot-n+1)
			if rng.IntN(2) == 0 {
				p := pattern(n, byte(round*slots+i))
				copy(model[off:], p)
				reqs = append(reqs, nbdtest.Request{Type: nbd.CmdWrite, Offset: uint64(base + off), Length: uint32(n), Payload: p})
				want = append(want, nil)
			} else {
				reqs = append(reqs, nbdtest.Request{Type: nbd.CmdRead, Offset: uint64(base + off), Length: uint32(n)})
				want = append(want, bytes.Clone(model[off:off+n]))
			}
		}
		calls, err := c.StartBatch(reqs)
		if err != nil {
			return err
		}
		for i, call := range calls {
			r, err := call.Wait()
			if err != nil {
				return err
			}
			if r.Error != 0 {
				return &nbdtest.Error{Code: r.Error}
			}
			if want[i] != nil && !bytes.Equal(r.Data, want[i]) {
				return errors.New("read differs from the model")
			}
		}
	}
	got := make([]byte, span)
	if err := c.Read(got, int64(base)); err != nil {
		return err
	}
	if !bytes.Equal(got, model) {
		return errors.New("final content differs from the model")
	}
	return nil
}

// A client that pipelines small writes, then half-closes its side after a
// last batch, gets every reply and then the end of the connection: the
// reader, trying non-blocking receives first while the client pipelines,
// meets the end of the stream there and stops as it would in read(2).
func TestPipelinedClientHalfCloses(t *testing.T) {
	const batch, size, rounds = 32, 1024, 50
	dev := newQuick(rounds*batch*size, true)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: dev}}})
	nc, rd := rawGo(t, addr)
	reply := make([]byte, nbd.SimpleReplySize)
	for round := range rounds {
		var req []byte
		for i := range batch {
			var h [nbd.RequestSize]byte
			binary.BigEndian.PutUint32(h[0:], nbd.MagicRequest)
			binary.BigEndian.PutUint16(h[6:], nbd.CmdWrite)
			binary.BigEndian.PutUint64(h[8:], uint64(round*batch+i))
			binary.BigEndian.PutUint64(h[16:], uint64((round*batch+i)*size))
			binary.BigEndian.PutUint32(h[24:], size)
			req = append(req, h[:]...)
			req = append(req, pattern(size, byte(round*batch+i))...)
		}
		if _, err := nc.Write(req); err != nil {
			t.Fatal(err)
		}
		if round == rounds-1 {
			if err := nc.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[uint64]bool{}
		for range batch {
			if _, err := io.ReadFull(rd, reply); err != nil {
				t.Fatalf("round %d: reply: %v", round, err)
			}
			if e := binary.BigEndian.Uint32(reply[4:]); e != 0 {
				t.Fatalf("round %d: error %d", round, e)
			}
			seen[binary.BigEndian.Uint64(reply[8:])] = true
		}
		if len(seen) != batch {
			t.Fatalf("round %d: %d distinct replies, want %d", round, len(seen), batch)
		}
	}
	if _, err := rd.ReadByte(); err != io.EOF {
		t.Fatalf("after the last reply: %v, want EOF (the server closes)", err)
	}
	got := make([]byte, rounds*batch*size)
	if err := dev.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range rounds * batch {
		if !bytes.Equal(got[i*size:(i+1)*size], pattern(size, byte(i))) {
			t.Fatalf("block %d differs", i)
		}
	}
}
