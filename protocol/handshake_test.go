package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// validHello is a node of resource r0.
func validHello(id uint8, name string) *Hello {
	return &Hello{Features: Features, Size: 1 << 20, Granularity: 4096, NodeID: id, Resource: "r0", Name: name}
}

type hsResult struct {
	s   *Session
	err error
	c   *Conn // the listener's, in relay tests
}

// handshakePair runs Dial on d (wanting want) and Accept on l at once.
func handshakePair(d, l *Conn, hd, hl *Hello, sd, sl []byte, want uint8) (dr, lr hsResult) {
	ch := make(chan hsResult, 1)
	go func() {
		s, err := Accept(l, hl, sl, nil)
		if err != nil {
			l.Close() // as a caller does: the dialer waiting on us sees EOF
		}
		ch <- hsResult{s: s, err: err}
	}()
	s, err := Dial(d, hd, sd, want, nil)
	if err != nil {
		d.Close()
	}
	return hsResult{s: s, err: err}, <-ch
}

// openPair returns two Conns over loopback TCP that completed a handshake
// with secret (dialer first).
func openPair(t *testing.T, secret string) (*Conn, *Conn) {
	t.Helper()
	a, b := pipePair(t)
	dr, lr := handshakePair(a, b, validHello(1, "alpha"), validHello(2, "beta"), []byte(secret), []byte(secret), 2)
	if dr.err != nil || lr.err != nil {
		t.Fatalf("handshake: dialer %v, listener %v", dr.err, lr.err)
	}
	return a, b
}

func TestHandshakeEstablishes(t *testing.T) {
	for _, secret := range []string{"s3cret-s3cret", ""} {
		a, b := pipePair(t)
		dr, lr := handshakePair(a, b, validHello(1, "alpha"), validHello(2, "beta"), []byte(secret), []byte(secret), 2)
		if dr.err != nil || lr.err != nil {
			t.Fatalf("secret %q: dialer %v, listener %v", secret, dr.err, lr.err)
		}
		ds, ls := dr.s, lr.s
		if ds.Peer.Name != "beta" || ls.Peer.Name != "alpha" || !ds.Dialer || ls.Dialer {
			t.Fatalf("sessions: %+v / %+v", ds, ls)
		}
		if ds.Transcript != ls.Transcript {
			t.Fatal("the two sides' transcripts differ")
		}
		if want := secret != ""; ds.FrameAuth != want || ls.FrameAuth != want {
			t.Fatalf("secret %q: FrameAuth %v/%v, want %v", secret, ds.FrameAuth, ls.FrameAuth, want)
		}
		if ds.Peer.Features&FeatureFrameMAC != 0 != ds.FrameAuth {
			t.Fatalf("peer's FeatureFrameMAC does not follow the mode")
		}
		// Frames flow both ways, with the trailer of the mode.
		tl := int64(TrailerSize)
		if ds.FrameAuth {
			tl = MACSize
		}
		data := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, MaxData/9)
		before := a.W.BytesWritten()
		if err := a.Send(0, TypeWrite, 0, 7, (&Write{Off: 0, Len: uint64(len(data))}).AppendHead(nil), data); err != nil {
			t.Fatal(err)
		}
		if got, want := a.W.BytesWritten()-before, HeaderSize+WriteHeadSize+int64(len(data))+tl; got != want {
			t.Fatalf("secret %q: a Write of %d bytes took %d bytes on the wire, want %d", secret, len(data), got, want)
		}
		f, err := b.ReadFrame(0)
		if err != nil || f.Type != TypeWrite || f.Seq != 7 || !bytes.Equal(f.Payload[WriteHeadSize:], data) {
			t.Fatalf("secret %q: write: %v", secret, err)
		}
		for i := range 3 {
			if err := b.Send(0, TypePing, 0, uint64(i), nil, nil); err != nil {
				t.Fatal(err)
			}
			if f, err := a.ReadFrame(0); err != nil || f.Type != TypePing || f.Seq != uint64(i) {
				t.Fatalf("ping %d: %+v %v", i, f, err)
			}
		}
		// Hello and Auth are refused after the handshake, both ways.
		if err := a.Send(0, TypeHello, 0, 0, validHello(1, "alpha").Append(nil), nil); err == nil {
			t.Fatal("a Hello was sent after the handshake")
		}
		if _, err := Dial(a, validHello(1, "alpha"), nil, 2, nil); err == nil {
			t.Fatal("a second handshake ran on an open connection")
		}
	}
}

// Every feature has a bit of its own, and a peer sees every capability
// this build has whatever the frame mode: only FeatureFrameMAC follows
// the mode. (FeatureSnapshot once shared FeatureFrameMAC's bit, so links
// without MACs hid it.)
func TestFeatureBits(t *testing.T) {
	bits := map[string]uint64{"S2": FeatureS2, "Zstd": FeatureZstd, "Dedup": FeatureDedup, "Cluster": FeatureCluster,
		"FrameMAC": FeatureFrameMAC, "frameMACBLAKE3 (retired)": featureFrameMACBLAKE3, "Snapshot": FeatureSnapshot,
		"SplitMAC": FeatureSplitMAC}
	seen := map[uint64]string{}
	for name, b := range bits {
		if b == 0 || b&(b-1) != 0 {
			t.Fatalf("Feature%s = %#x is not one bit", name, b)
		}
		if other, ok := seen[b]; ok {
			t.Fatalf("Feature%s and Feature%s share bit %#x", name, other, b)
		}
		seen[b] = name
	}
	for _, secret := range []string{"s3cret-s3cret", ""} {
		a, b := pipePair(t)
		dr, lr := handshakePair(a, b, validHello(1, "alpha"), validHello(2, "beta"), []byte(secret), []byte(secret), 2)
		if dr.err != nil || lr.err != nil {
			t.Fatalf("secret %q: dialer %v, listener %v", secret, dr.err, lr.err)
		}
		for _, s := range []*Session{dr.s, lr.s} {
			if got := s.Peer.Features & Features; got != Features {
				t.Errorf("secret %q: %s announced features %#x, want all of %#x", secret, s.Peer.Name, s.Peer.Features, Features)
			}
		}
	}
}

// The listener proves nothing to a dialer that did not prove the secret:
// with different secrets the dialer gets a refusal, never a proof.
func TestHandshakeWrongSecret(t *testing.T) {
	a, b := pipePair(t)
	dr, lr := handshakePair(a, b, validHello(1, "alpha"), validHello(2, "beta"), []byte("s3cret-one"), []byte("s3cret-two"), 2)
	var re *RefusedError
	if !errors.As(dr.err, &re) || !strings.Contains(re.Reason, "authentication failed") {
		t.Fatalf("dialer: %v, want the listener's refusal", dr.err)
	}
	if !errors.Is(lr.err, ErrAuth) {
		t.Fatalf("listener: %v, want ErrAuth", lr.err)
	}
	t.Logf("dialer: %v\nlistener: %v", dr.err, lr.err)
}

func TestHandshakeRefusals(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hd, hl   func(*Hello)
		sd, sl   string
		want     uint8
		lErr     error  // the listener's error
		dErr     error  // the dialer's
		contains string // in both
	}{
		{"resource", nil, func(h *Hello) { h.Resource = "r1" }, "", "", 2, ErrMismatch, ErrRefused, "resource name differs"},
		{"size", func(h *Hello) { h.Size++ }, nil, "", "", 2, ErrMismatch, ErrRefused, "size differs"},
		{"granularity", func(h *Hello) { h.Granularity = 8192 }, nil, "", "", 2, ErrMismatch, ErrRefused, "granularity differs"},
		{"same id", func(h *Hello) { h.NodeID = 2 }, nil, "", "", 2, ErrMismatch, ErrRefused, "node id 2 is used by both"},
		{"not the node dialed", nil, nil, "", "", 3, ErrRefused, ErrMismatch, "expected node id 3, found beta (id 2)"},
		{"secret on one side", nil, nil, "s3cret-s3cret", "", 2, ErrAuth, ErrRefused, "same secret-file"},
		{"secret on the other side", nil, nil, "", "s3cret-s3cret", 2, ErrAuth, ErrRefused, "same secret-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hd, hl := validHello(1, "alpha"), validHello(2, "beta")
			if tc.hd != nil {
				tc.hd(hd)
			}
			if tc.hl != nil {
				tc.hl(hl)
			}
			a, b := pipePair(t)
			dr, lr := handshakePair(a, b, hd, hl, []byte(tc.sd), []byte(tc.sl), tc.want)
			if !errors.Is(lr.err, tc.lErr) || !strings.Contains(lr.err.Error(), tc.contains) {
				t.Errorf("listener: %v, want %v with %q", lr.err, tc.lErr, tc.contains)
			}
			if !errors.Is(dr.err, tc.dErr) || !strings.Contains(dr.err.Error(), tc.contains) {
				t.Errorf("dialer: %v, want %v with %q", dr.err, tc.dErr, tc.contains)
			}
		})
	}
}

// rawFrame builds a frame by hand, as an attacker or a peer of another
// version may: any version, type and payload length, and a good
// xxhash64 trailer.
func rawFrame(version uint8, typ Type, payload []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload)+TrailerSize)
	putHeader(b, &Header{Magic: Magic, Version: version, Type: typ, PayloadLen: uint32(len(payload)), RawLen: uint32(len(payload))})
	b = append(b, payload...)
	b = append(b, make([]byte, TrailerSize)...)
	fixChecksum(b)
	return b
}

// oldFrame is a frame as a peer of protocol version v writes it.
func oldFrame(v uint8, typ Type, payload []byte) []byte { return rawFrame(v, typ, payload) }

// readRefusal reads raw frames from nc until a Refuse, the way a peer of
// version 1 does (any version's Refuse is readable).
func readRefusal(t *testing.T, nc net.Conn) string {
	t.Helper()
	r := newHandshakeReader(nc)
	for {
		f, err := r.ReadFrame()
		var ve *VersionError
		if errors.As(err, &ve) {
			continue // the other side's Hello, of version 2 (header and payload read)
		}
		if err != nil {
			t.Fatalf("reading the refusal: %v", err)
		}
		if f.Type == TypeRefuse {
			return string(f.Payload)
		}
	}
}

// A peer of protocol version 1 gets a clear refusal, as dialer and as
// listener.
func TestHandshakeOldVersionRefusedClearly(t *testing.T) {
	v1hello := oldFrame(1, TypeHello, validHello(1, "alpha").Append(nil))
	t.Run("v1 dialer", func(t *testing.T) {
		a, b := pipePair(t)
		go a.NetConn().Write(v1hello)
		_, err := Accept(b, validHello(2, "beta"), nil, nil)
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Got != 1 {
			t.Fatalf("got %v", err)
		}
		if r := readRefusal(t, a.NetConn()); !strings.Contains(r, "protocol version 1 is not supported: this node (beta) speaks version 2") {
			t.Fatalf("refusal: %q", r)
		}
	})
	t.Run("v1 listener", func(t *testing.T) {
		a, b := pipePair(t)
		// A version 1 listener sends its Hello at once, as both sides did.
		go b.NetConn().Write(v1hello)
		_, err := Dial(a, validHello(2, "beta"), nil, 1, nil)
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Got != 1 {
			t.Fatalf("got %v", err)
		}
		if r := readRefusal(t, b.NetConn()); !strings.Contains(r, "protocol version 1 is not supported") {
			t.Fatalf("refusal: %q", r)
		}
	})
}

// Before authentication only small, uncompressed handshake frames pass,
// and a Hello's names must be valid: anything else is refused before its
// payload is read, with an error that carries no peer-chosen text raw.
func TestPreAuthLimits(t *testing.T) {
	hello := validHello(1, "alpha").Append(nil)
	oversized := encodeFrame(t, CodecNone, TypeHello, 0, hello)
	putHeader(oversized, &Header{Magic: Magic, Version: Version, Type: TypeHello, PayloadLen: MaxPayload, RawLen: MaxPayload})
	refuse := encodeFrame(t, CodecNone, TypeRefuse, 0, nil)
	putHeader(refuse, &Header{Magic: Magic, Version: Version, Type: TypeRefuse, PayloadLen: MaxPreAuthPayload + 1, RawLen: MaxPreAuthPayload + 1})
	compressed := encodeFrame(t, CodecNone, TypeHello, 0, hello)
	compressed[7] = byte(CodecS2)
	fixChecksum(compressed)
	bad := func(name string) []byte {
		h := validHello(1, "alpha")
		h.Name = name
		return rawFrame(Version, TypeHello, h.Append(nil))
	}
	var w bytes.Buffer
	pw, _ := NewWriter(&w, CodecNone, 0)
	pw.WriteFrame(TypeWrite, 0, 1, (&Write{Len: 4}).AppendHead(nil), []byte("data"))
	pw.Flush()
	for _, tc := range []struct {
		name  string
		bytes []byte
		want  string
	}{
		{"1 MiB Hello announced", oversized[:HeaderSize], "exceeds 185"},
		{"Refuse beyond 1 KiB announced", refuse[:HeaderSize], "exceeds 1024"},
		{"compressed Hello", compressed, "compressed (s2) before the handshake"},
		{"a Write before the handshake", w.Bytes(), "Write frame before the handshake"},
		{"name with a newline", bad("be\nta"), `node "be\nta"`},
		{"long name", bad(strings.Repeat("x", 65)), "(65 bytes)"},
		{"empty name", bad(""), `node ""`},
		{"name with a space", bad("al pha"), `node "al pha"`},
		{"long name in a long frame", bad(strings.Repeat("y", 60000) + "\n"), "exceeds 185"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pipePair(t)
			// The attacker sends only what is listed and keeps the
			// connection open: a refusal must not wait for more.
			go a.NetConn().Write(tc.bytes)
			start := time.Now()
			_, err := Accept(b, validHello(2, "beta"), []byte("s3cret-s3cret"), nil)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrCorrupt with %q", err, tc.want)
			}
			if strings.ContainsAny(err.Error(), "\n\r") || len(err.Error()) > 300 {
				t.Fatalf("error carries raw peer text: %q", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("refused after %v", d)
			}
		})
	}
}

// A Refuse's text reaches errors cleaned: no newline, no control bytes,
// at most MaxReason bytes.
func TestRefusalTextCleaned(t *testing.T) {
	a, b := pipePair(t)
	go func() {
		f := encodeFrame(t, CodecNone, TypeRefuse, 0, []byte("go away\n{\"forged\":\"log line\"}\x1b[31m\xff"))
		b.NetConn().Write(f)
	}()
	_, err := Dial(a, validHello(1, "alpha"), nil, 2, nil)
	var re *RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("got %v", err)
	}
	if strings.ContainsAny(re.Reason, "\n\x1b") || !utf8.ValidString(re.Reason) || !strings.HasPrefix(re.Reason, "go away") {
		t.Fatalf("reason %q", re.Reason)
	}
	if got := ReasonText(bytes.Repeat([]byte("é"), MaxReason)); len(got) > MaxReason+2 {
		t.Fatalf("ReasonText kept %d bytes", len(got))
	}
}

func TestGarbageIsAnError(t *testing.T) {
	for _, side := range []string{"dial", "accept"} {
		a, b := pipePair(t)
		go b.NetConn().Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		var err error
		if side == "dial" {
			_, err = Dial(a, validHello(1, "alpha"), nil, 2, nil)
		} else {
			_, err = Accept(a, validHello(1, "alpha"), nil, nil)
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: got %v", side, err)
		}
	}
}

// With TLS under the frames, frames keep xxhash64 even with a secret: TLS
// authenticates them already. The secret's proofs still run.
func TestHandshakeOverTLSKeepsXXHash(t *testing.T) {
	ca, pool := testCA(t)
	cfgFor := func(name string) *tls.Config {
		return NewTLSConfig(testCert(t, ca, name), pool)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		hsResult
		c *Conn
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			ch <- res{hsResult{err: err}, nil}
			return
		}
		tc := tls.Server(nc, cfgFor("beta"))
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			ch <- res{hsResult{err: err}, nil}
			return
		}
		c := NewConn(tc)
		s, err := Accept(c, validHello(2, "beta"), []byte("s3cret-s3cret"), nil)
		ch <- res{hsResult{s: s, err: err}, c}
	}()
	cc := cfgFor("alpha")
	cc.ServerName = "beta"
	tc, err := tls.Dial("tcp", ln.Addr().String(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	c := NewConn(tc)
	s, err := Dial(c, validHello(1, "alpha"), []byte("s3cret-s3cret"), 2, nil)
	r := <-ch
	if err != nil || r.err != nil {
		t.Fatalf("dialer %v, listener %v", err, r.err)
	}
	defer r.c.Close()
	if s.FrameAuth || r.s.FrameAuth {
		t.Fatalf("frame MACs on a TLS link")
	}
	before := c.W.BytesWritten()
	c.Send(0, TypePing, 0, 1, nil, nil)
	if got := c.W.BytesWritten() - before; got != HeaderSize+TrailerSize {
		t.Fatalf("a Ping took %d bytes", got)
	}
	if f, err := r.c.ReadFrame(0); err != nil || f.Type != TypePing {
		t.Fatalf("ping: %v", err)
	}
}

func testCA(t *testing.T) (*x509.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "r0 CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	caKeys[ca] = key
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return ca, pool
}

var caKeys = map[*x509.Certificate]*ecdsa.PrivateKey{}

func testCert(t *testing.T, ca *x509.Certificate, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKeys[ca])
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// The reader's big buffer after the handshake keeps bytes the small one
// had read already.
func TestOpenKeepsBufferedBytes(t *testing.T) {
	var buf bytes.Buffer
	w := newHandshakeWriter(&buf)
	w.WriteFrame(TypeHello, 0, 0, validHello(1, "alpha").Append(nil), nil)
	w.Flush()
	pw, _ := NewWriter(&buf, CodecNone, 0)
	for i := range 5 {
		pw.WriteFrame(TypePing, 0, uint64(i), nil, nil)
	}
	pw.Flush()
	r := newHandshakeReader(io.MultiReader(&buf)) // one read takes the Hello and the Pings
	if f, err := r.ReadFrame(); err != nil || f.Type != TypeHello {
		t.Fatal(err)
	}
	if r.br.Buffered() == 0 {
		t.Fatal("test needs bytes buffered past the Hello")
	}
	r.openWith(nil)
	for i := range 5 {
		if f, err := r.ReadFrame(); err != nil || f.Seq != uint64(i) {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
}
