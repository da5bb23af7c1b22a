package faultnet

import (
	"crypto/sha256"
	"errors"
	"io"
	"math/bits"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// backend is a loopback TCP server run by a test.
type backend struct {
	ln       net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
	accepted atomic.Int64
}

func newBackend(t *testing.T, handle func(net.Conn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(b.Close)
	return b
}

func (b *backend) Addr() string { return b.ln.Addr().String() }

func (b *backend) Close() {
	b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func echo(c net.Conn) { io.Copy(c, c) }

func startProxy(t *testing.T, target string, up, down Link) *Proxy {
	t.Helper()
	p, err := NewProxy("127.0.0.1:0", target, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("faultnet seed %d", p.Seed())
	p.SetLink(up, down)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ping sends one byte through an echo and waits for it to come back.
func ping(c net.Conn, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{'p'}); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// eventually polls cond for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}

func TestDelayRTT(t *testing.T) {
	const delay = 10 * time.Millisecond
	b := newBackend(t, echo)
	p := startProxy(t, b.Addr(), Link{Delay: delay}, Link{Delay: delay})
	c := dial(t, p.Addr())
	var rtts []time.Duration
	for range 10 {
		rtt, err := ping(c, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if rtt < 2*delay {
			t.Errorf("rtt %v < 2×delay %v", rtt, 2*delay)
		}
		rtts = append(rtts, rtt)
	}
	// Upper bounds use the best of several pings, so a busy machine does not
	// fail them.
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	if rtts[0] > 2*delay+40*time.Millisecond {
		t.Errorf("best rtt %v, want about %v", rtts[0], 2*delay)
	}

	// Changed live, for the next chunks.
	p.SetLink(Link{}, Link{})
	if rtt := bestPing(t, c, 5); rtt >= 2*delay {
		t.Errorf("after SetLink(Link{}, Link{}): best rtt %v; want < %v", rtt, 2*delay)
	}
	p.SetLink(Link{Delay: 3 * delay}, Link{})
	if rtt, err := ping(c, 2*time.Second); err != nil || rtt < 3*delay {
		t.Errorf("after up delay %v: rtt %v, %v", 3*delay, rtt, err)
	}
}

// bestPing is the shortest of n pings.
func bestPing(t *testing.T, c net.Conn, n int) time.Duration {
	t.Helper()
	best := time.Hour
	for range n {
		rtt, err := ping(c, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		best = min(best, rtt)
	}
	return best
}

// sink reads a connection to EOF and reports what it got.
type sinkResult struct {
	n   int64
	sum [32]byte
	at  time.Time
}

func newSink(t *testing.T) (*backend, chan sinkResult) {
	results := make(chan sinkResult, 16)
	b := newBackend(t, func(c net.Conn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		var r sinkResult
		r.n, r.at = n, time.Now()
		copy(r.sum[:], h.Sum(nil))
		results <- r
	})
	return b, results
}

// send writes data, half-closes and waits for the sink's report.
func send(t *testing.T, addr string, data []byte, results chan sinkResult) (sinkResult, time.Duration) {
	t.Helper()
	c := dial(t, addr)
	start := time.Now()
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case r := <-results:
		return r, r.at.Sub(start)
	case <-time.After(10 * time.Second):
		t.Fatal("sink got no EOF")
		return sinkResult{}, 0
	}
}

func TestDelayDoesNotCapThroughput(t *testing.T) {
	const delay = 20 * time.Millisecond
	b, results := newSink(t)
	p := startProxy(t, b.Addr(), Link{Delay: delay}, Link{Delay: delay})
	data := randomBytes(1, 16<<20)
	r, took := send(t, p.Addr(), data, results)
	if r.n != int64(len(data)) || r.sum != sha256.Sum256(data) {
		t.Fatalf("sink got %d bytes, sum %x; want %d, %x", r.n, r.sum, len(data), sha256.Sum256(data))
	}
	t.Logf("16 MiB through a %v link in %v", delay, took)
	if took < delay {
		t.Errorf("took %v, less than the delay %v", took, delay)
	}
	if took > 2*time.Second {
		t.Errorf("took %v: delay caps throughput", took)
	}
	if s := p.Stats(); s.Up.Bytes != int64(len(data)) {
		t.Errorf("Stats.Up.Bytes = %d, want %d", s.Up.Bytes, len(data))
	}
}

func TestJitterKeepsOrder(t *testing.T) {
	b, results := newSink(t)
	p, err := NewProxy("127.0.0.1:0", b.Addr(), 42)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.ChunkSize = 4 << 10
	p.SetLink(Link{Delay: time.Millisecond, Jitter: 5 * time.Millisecond}, Link{})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(2, 2<<20)
	r, _ := send(t, p.Addr(), data, results)
	if r.n != int64(len(data)) || r.sum != sha256.Sum256(data) {
		t.Fatalf("stream changed by jitter: got %d bytes", r.n)
	}
}

func TestBandwidth(t *testing.T) {
	const bw = 4 << 20
	b, results := newSink(t)
	p := startProxy(t, b.Addr(), Link{Bandwidth: bw}, Link{})
	data := randomBytes(3, 6<<20) // 1.5 s at bw
	r, took := send(t, p.Addr(), data, results)
	if r.n != int64(len(data)) {
		t.Fatalf("sink got %d bytes, want %d", r.n, len(data))
	}
	rate := float64(len(data)) / took.Seconds()
	t.Logf("%d bytes in %v: %.2f MiB/s, cap %.2f MiB/s", len(data), took, rate/(1<<20), float64(bw)/(1<<20))
	if rate < 0.7*bw || rate > 1.3*bw {
		t.Errorf("rate %.0f B/s, want %d ±30%%", rate, bw)
	}
}

func TestCorruption(t *testing.T) {
	data := randomBytes(4, 1<<20)
	b := newBackend(t, func(c net.Conn) { c.Write(data) })
	p := startProxy(t, b.Addr(), Link{}, Link{CorruptProb: 1})
	c := dial(t, p.Addr())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(data) {
		t.Fatalf("got %d bytes, want %d", len(got), len(data))
	}
	flipped := 0
	for i := range got {
		flipped += bits.OnesCount8(got[i] ^ data[i])
	}
	s := p.Stats()
	t.Logf("%d bits flipped in %d chunks", flipped, s.Down.Chunks)
	if flipped == 0 {
		t.Fatal("no bits flipped with CorruptProb 1")
	}
	// One bit per chunk, every chunk.
	if int64(flipped) != s.Down.Corrupted || s.Down.Corrupted != s.Down.Chunks {
		t.Errorf("flipped %d bits; stats: %d corrupted of %d chunks", flipped, s.Down.Corrupted, s.Down.Chunks)
	}
	if s.Up.Corrupted != 0 {
		t.Errorf("up corrupted %d, want 0", s.Up.Corrupted)
	}
}

func TestLoss(t *testing.T) {
	const penalty = 50 * time.Millisecond
	b := newBackend(t, echo)
	p := startProxy(t, b.Addr(), Link{LossProb: 1, LossPenalty: penalty}, Link{})
	c := dial(t, p.Addr())
	rtt, err := ping(c, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rtt < penalty {
		t.Errorf("rtt %v < loss penalty %v", rtt, penalty)
	}
	if s := p.Stats(); s.Up.Lost != 1 {
		t.Errorf("Stats.Up.Lost = %d, want 1", s.Up.Lost)
	}
}

// TestStopsReading checks that Partition and Stall stop the flow, fill the
// sender's window without closing anything, and that undoing them delivers
// what the sender had written.
func TestStopsReading(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Proxy, bool)
	}{
		{"Partition", (*Proxy).Partition},
		{"Stall", (*Proxy).Stall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got atomic.Int64
			b := newBackend(t, func(c net.Conn) {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					got.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
			p := startProxy(t, b.Addr(), Link{}, Link{})
			c := dial(t, p.Addr())
			if _, err := c.Write(make([]byte, 1024)); err != nil {
				t.Fatal(err)
			}
			if !eventually(2*time.Second, func() bool { return got.Load() == 1024 }) {
				t.Fatalf("before %s: backend got %d bytes, want 1024", tc.name, got.Load())
			}

			tc.set(p, true)
			c.SetWriteDeadline(time.Now().Add(time.Second))
			n, err := c.Write(make([]byte, 64<<20))
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("write of 64 MiB: %d, %v; want the sender's window to fill", n, err)
			}
			t.Logf("sender wrote %d bytes before its window filled", n)
			if g := got.Load(); g != 1024 {
				t.Errorf("during %s: backend got %d bytes, want 1024", tc.name, g)
			}
			if s := p.Stats(); s.Active != 1 {
				t.Errorf("Active = %d, want 1", s.Active)
			}

			tc.set(p, false)
			want := int64(1024 + n)
			if !eventually(5*time.Second, func() bool { return got.Load() == want }) {
				t.Errorf("after %s(false): backend got %d bytes, want %d", tc.name, got.Load(), want)
			}
		})
	}
}

func TestPartitionHoldsNewConns(t *testing.T) {
	b := newBackend(t, echo)
	p := startProxy(t, b.Addr(), Link{}, Link{})
	old := dial(t, p.Addr())
	if _, err := ping(old, 2*time.Second); err != nil {
		t.Fatal(err)
	}

	p.Partition(true)
	c := dial(t, p.Addr()) // accepted
	for _, c := range []net.Conn{old, c} {
		if _, err := ping(c, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ping during partition: %v, want a timeout", err)
		}
	}
	if n := b.accepted.Load(); n != 1 {
		t.Errorf("target accepted %d connections during the partition, want 1", n)
	}
	if s := p.Stats(); s.Accepted != 2 || s.Active != 2 {
		t.Errorf("stats %+v: want 2 accepted, 2 active", s)
	}

	p.Partition(false)
	for _, c := range []net.Conn{old, c} {
		// The ping sent during the partition comes back first.
		var b [1]byte
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(c, b[:]); err != nil {
			t.Fatalf("held ping after heal: %v", err)
		}
		if _, err := ping(c, 2*time.Second); err != nil {
			t.Fatalf("ping after heal: %v", err)
		}
	}
	if n := b.accepted.Load(); n != 2 {
		t.Errorf("target accepted %d connections after heal, want 2", n)
	}
}

func TestCutAll(t *testing.T) {
	b := newBackend(t, echo)
	p := startProxy(t, b.Addr(), Link{}, Link{})
	var conns []net.Conn
	for range 3 {
		c := dial(t, p.Addr())
		if _, err := ping(c, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	p.CutAll()
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		var buf [1]byte
		if _, err := c.Read(buf[:]); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("conn %d after CutAll: read error %v, want EOF or reset", i, err)
		}
	}
	if !eventually(2*time.Second, func() bool { return p.Stats().Active == 0 }) {
		t.Errorf("Active = %d after CutAll", p.Stats().Active)
	}
	if s := p.Stats(); s.Cut != 3 {
		t.Errorf("Cut = %d, want 3", s.Cut)
	}
	c := dial(t, p.Addr())
	if _, err := ping(c, 2*time.Second); err != nil {
		t.Errorf("new conn after CutAll: %v", err)
	}
}

func TestDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := startProxy(t, dead, Link{}, Link{})
	// The reset may beat the client's connect.
	if c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second); err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read with target down: %v, want EOF or reset", err)
		}
	}
	if !eventually(2*time.Second, func() bool { return p.Stats().DialErrors == 1 }) {
		t.Errorf("DialErrors = %d, want 1", p.Stats().DialErrors)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		b := newBackend(t, echo)
		defer b.Close()
		p, err := NewProxy("127.0.0.1:0", b.Addr(), 0)
		if err != nil {
			t.Fatal(err)
		}
		p.SetLink(Link{Delay: 50 * time.Millisecond, Bandwidth: 1 << 20}, Link{Delay: 50 * time.Millisecond})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for range 3 {
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			if _, err := ping(c, 2*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		// Data in flight, paced and delayed; nobody reads the echo.
		conns[0].SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		conns[0].Write(make([]byte, 8<<20))
		p.Stall(true)
		p.Partition(true)
		c, err := net.Dial("tcp", p.Addr()) // waits for a heal
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if !eventually(time.Second, func() bool { return p.Stats().Accepted == 4 }) {
			t.Fatal("fourth conn not accepted")
		}

		start := time.Now()
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("Close took %v", took)
		}
		if _, err := net.DialTimeout("tcp", p.Addr(), 200*time.Millisecond); err == nil {
			t.Error("proxy still accepts after Close")
		}
		if err := p.Start(); !errors.Is(err, ErrClosed) {
			t.Errorf("Start after Close: %v, want ErrClosed", err)
		}
	}()
	if !eventually(2*time.Second, func() bool { return runtime.NumGoroutine() <= base }) {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
	}
}

func TestShaperPlan(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := Link{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond, Bandwidth: 1 << 20, CorruptProb: 0.5, LossProb: 0.1}
	a, b := newShaper(7, 1), newShaper(7, 1)
	var last time.Time
	var lastPace time.Time
	for i := range 1024 {
		now := t0.Add(time.Duration(i) * 100 * time.Microsecond) // reads faster than the cap
		if lastPace.After(now) {
			now = lastPace // the reader sleeps until pace
		}
		va, vb := a.plan(l, now, 1024), b.plan(l, now, 1024)
		if va != vb {
			t.Fatalf("chunk %d: same seed, different verdicts %+v, %+v", i, va, vb)
		}
		if va.release.Before(last) {
			t.Fatalf("chunk %d released at %v, before the one ahead (%v)", i, va.release, last)
		}
		if min := va.pace.Add(l.Delay); va.release.Before(min) {
			t.Fatalf("chunk %d released %v before pace+delay", i, min.Sub(va.release))
		}
		if va.flip >= 1024*8 {
			t.Fatalf("flip bit %d out of range", va.flip)
		}
		last, lastPace = va.release, va.pace
	}
	// 1 MiB at 1 MiB/s, less the burst saved up before t0.
	if d := lastPace.Sub(t0); d < time.Second-burstWindow-time.Millisecond || d > time.Second {
		t.Errorf("1 MiB at 1 MiB/s paced over %v", d)
	}

	c := newShaper(8, 1)
	same := true
	for range 64 {
		if a.plan(l, t0, 1024) != c.plan(l, t0, 1024) {
			same = false
		}
	}
	if same {
		t.Error("different seeds gave the same verdicts")
	}
}

func TestReadSize(t *testing.T) {
	for _, tc := range []struct {
		bw   int64
		want int
	}{
		{0, 32 << 10},
		{100 << 20, 32 << 10},
		{1 << 20, 5242},
		{1000, 1024},
	} {
		if got := readSize(Link{Bandwidth: tc.bw}, 32<<10); got != tc.want {
			t.Errorf("readSize(bw %d) = %d, want %d", tc.bw, got, tc.want)
		}
	}
}
