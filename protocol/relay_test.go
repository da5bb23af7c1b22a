package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// The attacks of the security review, played against three honest nodes
// (alpha 0, beta 1, gamma 2) that share a secret and listen on loopback
// sockets, by an attacker that does not know the secret but can open
// connections, accept the ones the nodes open (it sits at the address they
// dial), and read, forward, alter and replay every frame.

var relaySecret = []byte("three-node-shared-secret")

// honest is a node: its listener runs Accept on every connection, and it
// dials when told to.
type honest struct {
	t        *testing.T
	hello    *Hello
	ln       net.Listener
	accepted chan hsResult
}

func startHonest(t *testing.T, id uint8, name string) *honest {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &honest{t: t, hello: validHello(id, name), ln: ln, accepted: make(chan hsResult, 16)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { nc.Close() })
			wg.Go(func() {
				nc.SetDeadline(time.Now().Add(3 * time.Second))
				c := NewConn(nc)
				s, err := Accept(c, n.hello, relaySecret, knownPeer)
				if err != nil {
					nc.Close()
				}
				n.accepted <- hsResult{s, err, c}
			})
		}
	})
	return n
}

// knownPeer is the listener's check: one of the three configured nodes.
// (The direction rule of package replica is left out on purpose: the
// cryptography alone must stop every attack.)
func knownPeer(h *Hello) error {
	if h.NodeID > 2 {
		return errors.New("not a peer")
	}
	return nil
}

// dial makes n dial addr, expecting node want there.
func (n *honest) dial(addr string, want uint8) <-chan dialed {
	ch := make(chan dialed, 1)
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(3 * time.Second))
	go func() {
		c := NewConn(nc)
		s, err := Dial(c, n.hello, relaySecret, want, nil)
		if err != nil {
			nc.Close()
		}
		ch <- dialed{hsResult{s: s, err: err}, c}
	}()
	return ch
}

type dialed struct {
	hsResult
	c *Conn
}

// outcome waits for one handshake result of n's listener.
func (n *honest) outcome() hsResult {
	select {
	case r := <-n.accepted:
		return r
	case <-time.After(5 * time.Second):
		n.t.Fatalf("%s: no handshake outcome", n.hello.Name)
		return hsResult{}
	}
}

// wire is the attacker's end of a connection: raw handshake frames.
type wire struct {
	t  *testing.T
	nc net.Conn
	r  *Reader
	w  *Writer
}

func newWire(t *testing.T, nc net.Conn) *wire {
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(3 * time.Second))
	return &wire{t: t, nc: nc, r: newHandshakeReader(nc), w: newHandshakeWriter(nc)}
}

func connect(t *testing.T, addr string) *wire {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return newWire(t, nc)
}

func (w *wire) send(typ Type, payload []byte) {
	if err := w.w.WriteFrame(typ, 0, 0, payload, nil); err != nil {
		w.t.Fatal(err)
	}
	if err := w.w.Flush(); err != nil {
		w.t.Fatal(err)
	}
}

// recv reads one frame; a copy of its payload.
func (w *wire) recv() (Type, []byte, error) {
	f, err := w.r.ReadFrame()
	return f.Type, bytes.Clone(f.Payload), err
}

// expect reads one frame of type typ.
func (w *wire) expect(typ Type) []byte {
	w.t.Helper()
	got, p, err := w.recv()
	if err != nil || got != typ {
		w.t.Fatalf("attacker wanted a %s, got %s (%q) %v", typ, got, p, err)
	}
	return p
}

// nothing checks that no frame arrives within d: the peer is waiting.
func (w *wire) nothing(d time.Duration) {
	w.t.Helper()
	w.nc.SetReadDeadline(time.Now().Add(d))
	typ, p, err := w.recv()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		w.t.Fatalf("attacker got %s %q (%v), want nothing: the peer must wait for our proof", typ, p, err)
	}
	w.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
}

// forged is a Hello the attacker makes up, as an honest node would send.
func forged(id uint8, name string) []byte {
	h := validHello(id, name)
	h.Features |= FeatureFrameMAC
	h.Nonce = NewNonce()
	return h.Append(nil)
}

// rewrite decodes a Hello payload, changes it and encodes it again.
func rewrite(t *testing.T, p []byte, f func(*Hello)) []byte {
	var h Hello
	if err := h.Decode(p); err != nil {
		t.Fatal(err)
	}
	f(&h)
	return h.Append(nil)
}

// mitm listens where honest nodes will dial; it hands over each
// connection.
func mitm(t *testing.T) (string, <-chan *wire) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *wire, 4)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			ch <- newWire(t, nc)
		}
	}()
	return ln.Addr().String(), ch
}

func refusedAuth(t *testing.T, who string, r hsResult) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("%s accepted the attacker", who)
	}
	if !errors.Is(r.err, ErrAuth) {
		t.Fatalf("%s: %v, want ErrAuth", who, r.err)
	}
}

func notAuthenticated(t *testing.T, who string, r hsResult) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("%s completed a handshake with the attacker", who)
	}
}

func TestRelayAttacksFail(t *testing.T) {
	t.Run("the finding: beta's proof forwarded to gamma", func(t *testing.T) {
		beta, gamma := startHonest(t, 1, "beta"), startHonest(t, 2, "gamma")
		toGamma := connect(t, gamma.ln.Addr().String())
		toGamma.send(TypeHello, forged(1, "beta"))
		toGamma.expect(TypeHello)
		toBeta := connect(t, beta.ln.Addr().String())
		toBeta.send(TypeHello, forged(0, "alpha"))
		toBeta.expect(TypeHello)
		// The old protocol had beta send its Auth now, for the attacker
		// to forward. A listener proves nothing first.
		toBeta.nothing(300 * time.Millisecond)
		toGamma.nothing(300 * time.Millisecond)
		// Whatever the attacker sends as a proof is refused.
		toGamma.send(TypeAuth, make([]byte, AuthSize))
		if r := toGamma.expect(TypeRefuse); !strings.Contains(string(r), "authentication failed") {
			t.Fatalf("gamma's refusal: %q", r)
		}
		refusedAuth(t, "gamma", gamma.outcome())
		toBeta.nc.Close()
		notAuthenticated(t, "beta", beta.outcome())
	})

	t.Run("a dialer's proof forwarded to another listener", func(t *testing.T) {
		alpha, gamma := startHonest(t, 0, "alpha"), startHonest(t, 2, "gamma")
		addr, dials := mitm(t)
		for _, relabel := range []bool{false, true} {
			res := alpha.dial(addr, 1) // alpha means beta; the attacker answers
			fromAlpha := <-dials
			helloA := fromAlpha.expect(TypeHello)
			toGamma := connect(t, gamma.ln.Addr().String())
			toGamma.send(TypeHello, helloA) // alpha's own Hello, verbatim
			helloG := toGamma.expect(TypeHello)
			if !relabel {
				// gamma's Hello as it is: alpha sees it is not beta and
				// refuses without proving anything.
				fromAlpha.send(TypeHello, helloG)
				if typ, p, _ := fromAlpha.recv(); typ != TypeRefuse || !strings.Contains(string(p), "expected node id 1, found gamma (id 2)") {
					t.Fatalf("alpha sent %s %q", typ, p)
				}
				if r := <-res; !errors.Is(r.err, ErrMismatch) {
					t.Fatalf("alpha: %v", r.err)
				}
				toGamma.nc.Close()
				notAuthenticated(t, "gamma", gamma.outcome())
				continue
			}
			// gamma's Hello relabelled as beta's (gamma's nonce kept):
			// alpha proves, but over a Hello gamma never sent.
			fromAlpha.send(TypeHello, rewrite(t, helloG, func(h *Hello) { h.NodeID, h.Name = 1, "beta" }))
			proof := fromAlpha.expect(TypeAuth)
			toGamma.send(TypeAuth, proof)
			refusal := toGamma.expect(TypeRefuse)
			refusedAuth(t, "gamma", gamma.outcome())
			fromAlpha.send(TypeRefuse, refusal)
			if r := <-res; !errors.Is(r.err, ErrRefused) {
				t.Fatalf("alpha: %v", r.err)
			}
		}
	})

	t.Run("a proof reflected back to its maker", func(t *testing.T) {
		alpha := startHonest(t, 0, "alpha")
		addr, dials := mitm(t)
		// To alpha's own listener: the proof alpha made as a dialer.
		res := alpha.dial(addr, 1)
		fromAlpha := <-dials
		fromAlpha.expect(TypeHello)
		toAlpha := connect(t, alpha.ln.Addr().String())
		toAlpha.send(TypeHello, forged(1, "beta"))
		helloAL := toAlpha.expect(TypeHello)
		fromAlpha.send(TypeHello, rewrite(t, helloAL, func(h *Hello) { h.NodeID, h.Name = 1, "beta" }))
		proof := fromAlpha.expect(TypeAuth)
		toAlpha.send(TypeAuth, proof)
		toAlpha.expect(TypeRefuse)
		refusedAuth(t, "alpha's listener", alpha.outcome())
		fromAlpha.nc.Close()
		notAuthenticated(t, "alpha's dialer", (<-res).hsResult)

		// On the same connection: alpha's proof as the listener's answer.
		res = alpha.dial(addr, 1)
		fromAlpha = <-dials
		fromAlpha.expect(TypeHello)
		fromAlpha.send(TypeHello, forged(1, "beta"))
		proof = fromAlpha.expect(TypeAuth)
		fromAlpha.send(TypeAuth, proof)
		refusedAuth(t, "alpha's dialer", (<-res).hsResult)
		if r := fromAlpha.expect(TypeRefuse); !strings.Contains(string(r), "authentication failed") {
			t.Fatalf("alpha's refusal: %q", r)
		}
	})

	t.Run("Hellos altered or swapped in a relayed handshake", func(t *testing.T) {
		alpha, beta := startHonest(t, 0, "alpha"), startHonest(t, 1, "beta")
		addr, dials := mitm(t)
		flip := func(h *Hello) { h.Nonce[7] ^= 1 }
		for _, tc := range []struct {
			name       string
			toL, toD   func(*Hello)
			betaWant   error
			alphaWants error
		}{
			{"dialer's nonce", flip, nil, ErrAuth, ErrRefused},
			{"listener's nonce", nil, flip, ErrAuth, ErrRefused}, // the listener verifies first
			{"dialer's features (downgrade to xxhash64)", func(h *Hello) { h.Features &^= FeatureFrameMAC }, nil, ErrAuth, ErrRefused},
			{"listener's size", nil, func(h *Hello) { h.Size = 1 << 40 }, ErrRefused, ErrMismatch},
		} {
			res := alpha.dial(addr, 1)
			fromAlpha := <-dials
			toBeta := connect(t, beta.ln.Addr().String())
			relayHandshake(t, fromAlpha, toBeta, tc.toL, tc.toD)
			if r := beta.outcome(); !errors.Is(r.err, tc.betaWant) {
				t.Fatalf("%s: beta: %v, want %v", tc.name, r.err, tc.betaWant)
			}
			if r := <-res; !errors.Is(r.err, tc.alphaWants) {
				t.Fatalf("%s: alpha: %v, want %v", tc.name, r.err, tc.alphaWants)
			}
			fromAlpha.nc.Close()
			toBeta.nc.Close()
		}

		// Two handshakes at once, beta's Hellos swapped between them.
		res1, res2 := alpha.dial(addr, 1), alpha.dial(addr, 1)
		a1, a2 := <-dials, <-dials
		b1, b2 := connect(t, beta.ln.Addr().String()), connect(t, beta.ln.Addr().String())
		b1.send(TypeHello, a1.expect(TypeHello))
		b2.send(TypeHello, a2.expect(TypeHello))
		h1, h2 := b1.expect(TypeHello), b2.expect(TypeHello)
		a1.send(TypeHello, h2)
		a2.send(TypeHello, h1)
		b1.send(TypeAuth, a1.expect(TypeAuth))
		b2.send(TypeAuth, a2.expect(TypeAuth))
		refusedAuth(t, "beta", beta.outcome())
		refusedAuth(t, "beta", beta.outcome())
		a1.nc.Close()
		a2.nc.Close()
		notAuthenticated(t, "alpha", (<-res1).hsResult)
		notAuthenticated(t, "alpha", (<-res2).hsResult)
	})

	t.Run("an old transcript replayed", func(t *testing.T) {
		alpha, beta := startHonest(t, 0, "alpha"), startHonest(t, 1, "beta")
		addr, dials := mitm(t)
		// A relay that changes nothing is only a wire: the handshake
		// succeeds, and the attacker records it.
		res := alpha.dial(addr, 1)
		fromAlpha := <-dials
		toBeta := connect(t, beta.ln.Addr().String())
		rec := relayHandshake(t, fromAlpha, toBeta, nil, nil)
		br, ar := beta.outcome(), <-res
		if br.err != nil || ar.err != nil {
			t.Fatalf("plain relay: beta %v, alpha %v", br.err, ar.err)
		}
		if !br.s.FrameAuth {
			t.Fatal("no frame authentication")
		}
		// ...on which it cannot speak: a frame it writes is refused.
		toBeta.nc.Write(append(rawFrame(Version, TypePing, nil), make([]byte, MACSize-TrailerSize)...))
		if _, err := br.c.ReadFrame(time.Second); !errors.Is(err, ErrFrameAuth) {
			t.Fatalf("beta read the attacker's frame: %v", err)
		}

		// Replayed to beta: alpha's Hello and proof of that handshake.
		again := connect(t, beta.ln.Addr().String())
		again.send(TypeHello, rec.dialer[0])
		again.expect(TypeHello)
		again.send(TypeAuth, rec.dialer[1])
		again.expect(TypeRefuse)
		refusedAuth(t, "beta", beta.outcome())

		// Replayed to alpha: beta's Hello and proof of that handshake.
		res = alpha.dial(addr, 1)
		fromAlpha = <-dials
		fromAlpha.expect(TypeHello)
		fromAlpha.send(TypeHello, rec.listener[0])
		fromAlpha.expect(TypeAuth)
		fromAlpha.send(TypeAuth, rec.listener[1])
		refusedAuth(t, "alpha", (<-res).hsResult)
	})
}

// recorded are the handshake payloads a relay saw: the dialer's Hello and
// Auth, the listener's Hello and Auth.
type recorded struct{ dialer, listener [][]byte }

// relayHandshake passes a handshake between d (the dialer's connection to
// the attacker) and l (the attacker's connection to the listener),
// changing the Hellos by toL and toD if not nil, until one side stops.
func relayHandshake(t *testing.T, d, l *wire, toL, toD func(*Hello)) recorded {
	var rec recorded
	pass := func(from, to *wire, change func(*Hello), log *[][]byte) bool {
		typ, p, err := from.recv()
		if err != nil {
			return false
		}
		*log = append(*log, p)
		if typ == TypeHello && change != nil {
			p = rewrite(t, p, change)
		}
		to.send(typ, p)
		return typ != TypeRefuse
	}
	// Hello_D, Hello_L, Auth_D, Auth_L, in turn.
	_ = pass(d, l, toL, &rec.dialer) && pass(l, d, toD, &rec.listener) &&
		pass(d, l, nil, &rec.dialer) && pass(l, d, nil, &rec.listener)
	return rec
}

// After an authenticated handshake, an attacker on the path cannot alter,
// inject, replay, reorder or drop frames unnoticed: with the real rekey
// interval, and with keys that change every 2 frames, where the
// tampering happens at the first frame under the second key (frame 2) or
// moves a frame across the change.
func TestFrameInjectionDetected(t *testing.T) {
	for _, every := range []uint64{rekeyInterval, 2} {
		t.Run(fmt.Sprintf("rekey every %d", every), func(t *testing.T) { testFrameInjection(t, every) })
	}
}

func testFrameInjection(t *testing.T, every uint64) {
	data := bytes.Repeat([]byte("block of data "), 300)
	seqs := []uint64{10, 11, 12, 13}
	send := func(c *Conn) {
		c.W.WriteFrame(TypeWrite, 0, 10, (&Write{Off: 0, Len: uint64(len(data))}).AppendHead(nil), data)
		c.W.WriteFrame(TypePing, 0, 11, nil, nil)
		c.W.WriteFrame(TypeWrite, 0, 12, (&Write{Off: 8192, Len: uint64(len(data))}).AppendHead(nil), data)
		c.W.WriteFrame(TypePing, 0, 13, nil, nil)
		c.Flush(0)
	}
	// Frames of another authenticated connection, for splicing: same
	// secret, same nodes, same positions, other keys.
	other := tapped(t, every, send).frames
	for _, tc := range []struct {
		name   string
		change func(f [][]byte) [][]byte
		bad    int // the first read that must fail; -1: none
	}{
		{"untouched", func(f [][]byte) [][]byte { return f }, -1},
		{"payload byte flipped", func(f [][]byte) [][]byte { f[2][HeaderSize+40] ^= 1; return f }, 2},
		{"seq changed", func(f [][]byte) [][]byte { f[2][16]++; return f }, 2},
		{"MAC byte flipped", func(f [][]byte) [][]byte { f[2][len(f[2])-1] ^= 0x80; return f }, 2},
		{"frame inserted", func(f [][]byte) [][]byte {
			forged := append(rawFrame(Version, TypePing, nil), make([]byte, MACSize-TrailerSize)...)
			return append(f[:2:2], append([][]byte{forged}, f[2:]...)...)
		}, 2},
		{"frame replayed", func(f [][]byte) [][]byte { return append(f[:2:2], append([][]byte{f[1]}, f[2:]...)...) }, 2},
		{"frame dropped", func(f [][]byte) [][]byte { return append(f[:1:1], f[2:]...) }, 1},
		{"frames reordered", func(f [][]byte) [][]byte { f[1], f[2] = f[2], f[1]; return f }, 1},
		{"frame of another connection spliced in", func(f [][]byte) [][]byte { f[1] = other[1]; return f }, 1},
		{"frame of another connection spliced in at frame 2", func(f [][]byte) [][]byte { f[2] = other[2]; return f }, 2},
		{"frame 0 replayed as frame 2", func(f [][]byte) [][]byte { f[2] = f[0]; return f }, 2},
		{"frame 2 moved to the end", func(f [][]byte) [][]byte { return [][]byte{f[0], f[1], f[3], f[2]} }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := tapped(t, every, send)
			frames := tc.change(tp.frames)
			for _, f := range frames {
				if _, err := tp.toBeta.Write(f); err != nil {
					t.Fatal(err)
				}
			}
			for i := range frames {
				f, err := tp.beta.ReadFrame(0)
				if i != tc.bad {
					if err != nil || f.Seq != seqs[i] {
						t.Fatalf("read %d: seq %d, %v; want seq %d", i, f.Seq, err, seqs[i])
					}
					continue
				}
				if !errors.Is(err, ErrCorrupt) || !errors.Is(err, ErrFrameAuth) {
					t.Fatalf("read %d: %v, want ErrCorrupt and ErrFrameAuth", i, err)
				}
				t.Logf("%v", err)
				if _, again := tp.beta.ReadFrame(0); again != err {
					t.Fatalf("the reader went on after a forged frame: %v", again)
				}
				return
			}
			if tc.bad >= 0 {
				t.Fatal("the forgery went unnoticed")
			}
		})
	}
}

// tap is an authenticated connection from alpha to beta through an
// attacker, who relayed the handshake untouched and holds alpha's
// frames after it.
type tap struct {
	frames [][]byte // alpha's frames as they crossed the wire: header, payload, MAC
	toBeta net.Conn // the attacker's connection to beta
	beta   *Conn    // beta's end, open
}

// tapped builds a tap; alpha's frames are what send writes (4 frames),
// authenticated with a new key every `every` frames.
func tapped(t *testing.T, every uint64, send func(*Conn)) *tap {
	t.Helper()
	a, ma := pipePair(t) // alpha ↔ attacker
	mb, b := pipePair(t) // attacker ↔ beta
	go io.Copy(ma.NetConn(), mb.NetConn())
	type out struct {
		frames [][]byte
		err    error
	}
	ch := make(chan out, 1)
	go func() {
		var frames [][]byte
		src := ma.NetConn()
		for i := 0; len(frames) < 4; i++ {
			tl := TrailerSize
			if i >= 2 { // past alpha's Hello and Auth
				tl = MACSize
			}
			hdr := make([]byte, HeaderSize, HeaderSize+MaxData)
			if _, err := io.ReadFull(src, hdr); err != nil {
				ch <- out{nil, err}
				return
			}
			h := parseHeader(hdr)
			fr := hdr[:HeaderSize+int(h.PayloadLen)+tl]
			if _, err := io.ReadFull(src, fr[HeaderSize:]); err != nil {
				ch <- out{nil, err}
				return
			}
			if i < 2 {
				mb.NetConn().Write(fr)
				continue
			}
			frames = append(frames, fr)
		}
		ch <- out{frames, nil}
	}()
	dr, lr := handshakePair(a, b, validHello(0, "alpha"), validHello(1, "beta"), relaySecret, relaySecret, 1)
	if dr.err != nil || lr.err != nil || !dr.s.FrameAuth || !lr.s.FrameAuth {
		t.Fatalf("handshake through the relay: %v / %v", dr.err, lr.err)
	}
	a.W.mac.every, b.R.mac.every = every, every
	send(a)
	o := <-ch
	if o.err != nil {
		t.Fatalf("capturing frames: %v", o.err)
	}
	return &tap{frames: o.frames, toBeta: mb.NetConn(), beta: b}
}
