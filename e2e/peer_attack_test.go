package e2e

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/nbd/nbdtest"
	"github.com/repd/repd/protocol"
)

// An attacker on the peer network who does not know the secret, against
// three real repd processes (alpha 0, beta 1, gamma 2; the lower id dials).

// attackerHello is the Hello an honest node id would send, made up by the
// attacker.
func attackerHello(id uint8, name string, size int64) *protocol.Hello {
	return &protocol.Hello{Features: protocol.Features | protocol.FeatureFrameMAC, Size: uint64(size), Granularity: 4096,
		NodeID: id, Nonce: protocol.NewNonce(), Resource: "r0", Name: name}
}

// peerWire is the attacker's raw connection to a node's peer port.
type peerWire struct {
	t  *testing.T
	nc net.Conn
	c  *protocol.Conn
}

func dialPeer(t *testing.T, addr string) *peerWire {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &peerWire{t: t, nc: nc, c: protocol.NewConn(nc)}
}

func (w *peerWire) send(typ protocol.Type, payload []byte) error {
	return w.c.Send(5*time.Second, typ, 0, 0, payload, nil)
}

// recv reads one frame within d; a copy of its payload.
func (w *peerWire) recv(d time.Duration) (protocol.Type, []byte, error) {
	w.nc.SetReadDeadline(time.Now().Add(d))
	f, err := w.c.R.ReadFrame()
	return f.Type, bytes.Clone(f.Payload), err
}

// The review's relay: claim to be beta towards gamma and alpha towards
// beta, and hand gamma the proof beta makes. Now a listener proves nothing
// before it verified the dialer's proof, so there is nothing to hand on;
// the made-up proofs are refused and counted as authentication failures,
// the live sessions stay, and no byte of the attacker's reaches a disk.
func TestPeerRelayRefused(t *testing.T) {
	const size = 16 << 20
	c := newCluster(t, clusterOpts{nodes: 3, size: "16MiB"})
	alpha := upCluster(t, c)
	beta, gamma := c.nodes[1], c.nodes[2]
	waitInSync(t, c, 30*time.Second)
	cl, err := nbdtest.Dial("tcp", alpha.nbd, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Write(bytes.Repeat([]byte{0x5a}, 64<<10), 0, true); err != nil {
		t.Fatal(err)
	}
	failsGamma := peerCounter(t, gamma, "beta", "auth_failures")
	failsBeta := peerCounter(t, beta, "alpha", "auth_failures")
	connectsGamma := peerCounter(t, gamma, "beta", "connects")
	connectsBeta := peerCounter(t, beta, "alpha", "connects")

	toGamma := dialPeer(t, gamma.peer) // as beta
	if err := toGamma.send(protocol.TypeHello, attackerHello(1, "beta", size).Append(nil)); err != nil {
		t.Fatal(err)
	}
	typ, helloGamma, err := toGamma.recv(5 * time.Second)
	if err != nil || typ != protocol.TypeHello {
		t.Fatalf("gamma answered a Hello claiming beta with %s %q (%v)", typ, helloGamma, err)
	}
	toBeta := dialPeer(t, beta.peer) // as alpha
	if err := toBeta.send(protocol.TypeHello, attackerHello(0, "alpha", size).Append(nil)); err != nil {
		t.Fatal(err)
	}
	typ, helloBeta, err := toBeta.recv(5 * time.Second)
	if err != nil || typ != protocol.TypeHello {
		t.Fatalf("beta answered a Hello claiming alpha with %s %q (%v)", typ, helloBeta, err)
	}
	// Neither listener proves anything before it has the dialer's proof:
	// the attacker waits in vain for something to relay.
	for _, w := range []struct {
		who string
		w   *peerWire
	}{{"gamma", toGamma}, {"beta", toBeta}} {
		if typ, p, err := w.w.recv(time.Second); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s sent %s %q (%v) before the dialer proved the secret", w.who, typ, p, err)
		}
	}
	// What the attacker can send: the other listener's Hello bytes cut to
	// a proof's size, and a random one.
	forged := make([]byte, 32)
	rand.Read(forged)
	for _, x := range []struct {
		who   string
		w     *peerWire
		proof []byte
	}{{"gamma", toGamma, helloBeta[:32]}, {"beta", toBeta, forged}} {
		if err := x.w.send(protocol.TypeAuth, x.proof); err != nil {
			t.Fatal(err)
		}
		typ, p, err := x.w.recv(5 * time.Second)
		if err != nil || typ != protocol.TypeRefuse || !strings.Contains(string(p), "authentication failed") {
			t.Fatalf("%s answered a forged proof with %s %q (%v), want a Refuse naming the authentication", x.who, typ, p, err)
		}
		// Then the connection is closed: a Write injected now goes
		// nowhere.
		x.w.send(protocol.TypeWrite, make([]byte, 64))
		x.w.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := io.Copy(io.Discard, x.w.nc); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") || n != 0 {
			t.Fatalf("%s after the refusal: %d more bytes, %v", x.who, n, err)
		}
	}
	waitFor(t, "the refusals counted", 10*time.Second, func() bool {
		return peerCounter(t, gamma, "beta", "auth_failures") == failsGamma+1 && peerCounter(t, beta, "alpha", "auth_failures") == failsBeta+1
	})
	// The honest sessions were not superseded.
	if n := peerCounter(t, gamma, "beta", "connects"); n != connectsGamma {
		t.Errorf("gamma's session with beta was replaced (%d connects, was %d)", n, connectsGamma)
	}
	if n := peerCounter(t, beta, "alpha", "connects"); n != connectsBeta {
		t.Errorf("beta's session with alpha was replaced (%d connects, was %d)", n, connectsBeta)
	}
	for _, n := range c.nodes {
		for _, p := range n.status().Peers {
			if p.Connection != api.Connected {
				t.Errorf("%s: peer %s %s after the attack", n.name, p.Name, p.Connection)
			}
		}
	}
	// Only alpha's writes are on every disk.
	if err := cl.Write(bytes.Repeat([]byte{0xa5}, 64<<10), 1<<20, true); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, 30*time.Second)
	c.terminateAll(t)
	sameDisks(t, alpha, beta, size, "alpha and beta differ after the attack")
	sameDisks(t, alpha, gamma, size, "alpha and gamma differ after the attack")
}

// The review's flood: 400 connections each sending a near-complete 1 MiB
// Hello took a node from 17 MB to 502 MB. Now a frame announced larger
// than a handshake frame is refused on its header, at most 8 handshakes
// per address and 64 in all are in progress (the rest are closed at once),
// each holds a few KiB, and each ends after the resource's timeout. The
// flood below comes from 50 addresses, wave after wave; the node's RSS
// stays within 64 MiB of where it was, and its peer, on another address,
// reconnects meanwhile whenever a single address floods.
func TestPeerPreAuthFlood(t *testing.T) {
	const size = 16 << 20
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB", extra: `timeout = "2s"`})
	alpha := upCluster(t, c)
	beta := c.nodes[1]
	waitInSync(t, c, 30*time.Second)
	base := alpha.rssKiB(t)

	// The largest frames allowed before authentication, one byte short,
	// and a header announcing a 1 MiB Hello followed by 64 KiB of it.
	hello := attackerHello(1, strings.Repeat("b", protocol.MaxNameLen), size)
	hello.Resource = strings.Repeat("r", protocol.MaxNameLen)
	var frame bytes.Buffer
	if err := protocol.NewConn(captureConn{&frame}).Send(0, protocol.TypeHello, 0, 0, hello.Append(nil), nil); err != nil {
		t.Fatal(err)
	}
	nearHello := frame.Bytes()[:frame.Len()-1]
	huge := bytes.Clone(frame.Bytes()[:protocol.HeaderSize])
	// Header bytes 8..15: payload and raw length (little endian).
	for _, at := range []int{8, 12} {
		huge[at], huge[at+1], huge[at+2], huge[at+3] = 0, 0, 0x10, 0 // 1 MiB
	}
	huge = append(huge, make([]byte, 64<<10)...)

	flood := func(addrs, conns int, d time.Duration) (opened, refusedAtOnce int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		stop := time.Now().Add(d)
		for a := range addrs {
			wg.Go(func() {
				src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(10+a))}
				dl := net.Dialer{LocalAddr: src, Timeout: 2 * time.Second}
				var held []net.Conn
				defer func() {
					for _, nc := range held {
						nc.Close()
					}
				}()
				for i := 0; time.Now().Before(stop); i++ {
					if len(held) >= conns/addrs {
						// A wave's worth open: drop the oldest half.
						for _, nc := range held[:len(held)/2] {
							nc.Close()
						}
						held = append(held[:0], held[len(held)/2:]...)
						time.Sleep(100 * time.Millisecond)
					}
					nc, err := dl.Dial("tcp", alpha.peer)
					if err != nil {
						continue
					}
					b := nearHello
					if i%4 == 3 {
						b = huge
					}
					nc.SetWriteDeadline(time.Now().Add(time.Second))
					_, err = nc.Write(b)
					mu.Lock()
					opened++
					if err != nil {
						refusedAtOnce++
					}
					mu.Unlock()
					held = append(held, nc)
				}
			})
		}
		wg.Wait()
		return opened, refusedAtOnce
	}

	// Many addresses: memory.
	peak := base
	done := make(chan struct{})
	var opened int
	go func() {
		defer close(done)
		opened, _ = flood(50, 400, 8*time.Second)
	}()
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		case <-time.After(100 * time.Millisecond):
		}
		peak = max(peak, alpha.rssKiB(t))
	}
	t.Logf("flood from 50 addresses: %d connections; alpha RSS %d KiB before, peak %d KiB (+%d KiB)", opened, base, peak, peak-base)
	if opened < 400 {
		t.Fatalf("the flood opened only %d connections", opened)
	}
	if peak-base > 64<<10 {
		t.Fatalf("RSS grew by %d KiB under a pre-authentication flood, want under 64 MiB", peak-base)
	}
	log := alpha.log(t)
	if !strings.Contains(log, "too many handshakes in progress") {
		t.Fatal("the handshake limit never refused a connection of the flood")
	}

	// One address: the peer on its own address gets in meanwhile.
	beta.mustCtl("disconnect", "alpha")
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		flood(1, 100, 6*time.Second)
	}()
	time.Sleep(time.Second)
	start := time.Now()
	beta.mustCtl("connect", "alpha")
	waitFor(t, "beta reconnected during a flood from one address", 15*time.Second, func() bool {
		for _, p := range beta.status().Peers {
			if p.Name == "alpha" && p.Connection == api.Connected {
				return true
			}
		}
		return false
	})
	t.Logf("beta reconnected %v after connect, during the flood", time.Since(start).Round(time.Millisecond))
	<-floodDone
	// Still serving.
	cl, err := nbdtest.Dial("tcp", alpha.nbd, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Write(bytes.Repeat([]byte{1}, 4096), 0, true); err != nil {
		t.Fatalf("a write after the flood: %v", err)
	}
	got := make([]byte, 4096)
	if err := cl.Read(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{1}, 4096)) {
		t.Fatalf("read after the flood: %v", err)
	}
}

// captureConn is a net.Conn that only collects what is written to it.
type captureConn struct{ b *bytes.Buffer }

func (c captureConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c captureConn) Write(p []byte) (int, error)      { return c.b.Write(p) }
func (c captureConn) Close() error                     { return nil }
func (c captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c captureConn) SetDeadline(time.Time) error      { return nil }
func (c captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c captureConn) SetWriteDeadline(time.Time) error { return nil }
