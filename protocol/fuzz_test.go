package protocol

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzReadFrame feeds arbitrary bytes to the frame reader and the message
// decoders: nothing may panic, and a frame accepted must re-encode to one
// that decodes to the same message.
func FuzzReadFrame(f *testing.F) {
	f.Add(encodeFrame(f, CodecNone, TypePing, 1, nil))
	f.Add(encodeFrame(f, CodecS2, TypeWrite, 2, append((&Write{Off: 4096, Len: 512}).AppendHead(nil), make([]byte, 512)...)))
	f.Add(encodeFrame(f, CodecZstd, TypeBitmap, 0, AppendExtents(nil, []Extent{{1, 2}})))
	f.Add(encodeFrame(f, CodecNone, TypeHello, 0, (&Hello{Resource: "r0", Name: "a"}).Append(nil)))
	f.Add(encodeFrame(f, CodecNone, TypeCsums, 0, (&Hashes{Off: 4096, Len: 8192, Sums: make([][SumSize]byte, 2)}).Append(nil)))
	f.Add(encodeFrame(f, CodecNone, TypeVerifyReply, 0, (&Mismatches{Off: 0, Len: 8192, Bad: []Extent{{4096, 4096}}}).Append(nil)))
	f.Add(encodeFrame(f, CodecNone, TypeState, 0, (&State{Current: 5}).Append(nil)))
	dw := DedupWrite{Off: 8192, Len: 3*DedupBlock + 100, Kinds: []BlockKind{BlockZero, BlockRef, BlockData, BlockData},
		Refs: []Ref{{Src: 4096, Hash: [32]byte{7}}}, Data: make([]byte, DedupBlock+100)}
	f.Add(encodeFrame(f, CodecZstd, TypeWrite, 3, append(dw.AppendHead(nil), dw.Data...)))
	f.Add(encodeFrame(f, CodecNone, TypePromoteReq, 7, nil))
	f.Add(encodeFrame(f, CodecNone, TypePromoteReply, 7, []byte("refused: peer alpha is becoming Primary")))
	f.Add(encodeFrame(f, CodecNone, TypePeerSeqs, 0, AppendPeerSeqs(nil, []PeerSeq{{2, 99}, {3, 12}})))
	f.Add(encodeFrame(f, CodecNone, TypeSnapshot, 9, []byte("nightly-1")))
	f.Add(encodeFrame(f, CodecNone, TypeSnapshotReq, 4, (&SnapshotReq{Name: "n.1", Nodes: []uint8{1, 3}}).Append(nil)))
	f.Add(encodeFrame(f, CodecNone, TypeSnapshotAck, 9, []byte("the snapshot store is full")))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// As during the handshake (only small handshake frames pass)...
		r := newHandshakeReader(bytes.NewReader(b))
		for range 4 {
			fr, err := r.ReadFrame()
			if err != nil {
				break
			}
			if fr.Type != TypeHello && fr.Type != TypeAuth && fr.Type != TypeRefuse || len(fr.Payload) > MaxPreAuthPayload {
				t.Fatalf("%s frame of %d bytes read before the handshake", fr.Type, len(fr.Payload))
			}
			if fr.Type == TypeHello {
				var h Hello
				if h.Decode(fr.Payload) == nil && (!ValidName(h.Name) || !ValidName(h.Resource)) {
					t.Fatalf("Hello with names %q, %q decoded", h.Name, h.Resource)
				}
			}
		}
		// ...and after it.
		r = NewReader(bytes.NewReader(b))
		for range 4 {
			fr, err := r.ReadFrame()
			if err != nil {
				return
			}
			switch fr.Type {
			case TypeHello:
				var h Hello
				h.Decode(fr.Payload)
			case TypeState:
				var s State
				s.Decode(fr.Payload)
			case TypeAuth:
				var a Auth
				a.Decode(fr.Payload)
			case TypeWrite:
				var d DedupWrite
				if d.Decode(fr.Payload) == nil {
					// A valid dedup write re-encodes to the same bytes.
					if got := append(d.AppendHead(nil), d.Data...); !bytes.Equal(got, fr.Payload) {
						t.Fatalf("re-encoded dedup write differs")
					}
					covered := uint64(len(d.Data)) + uint64(len(d.Refs))*DedupBlock
					for _, k := range d.Kinds {
						if k == BlockZero {
							covered += DedupBlock
						}
					}
					if covered < d.Len {
						t.Fatalf("dedup write of %d bytes covers only %d", d.Len, covered)
					}
				}
				var w Write
				if w.Decode(fr.Payload, fr.Flags) == nil {
					out := encodeFrame(t, CodecS2, TypeWrite, fr.Seq, append(w.AppendHead(nil), w.Data...))
					g, err := NewReader(bytes.NewReader(out)).ReadFrame()
					if err != nil || !bytes.Equal(g.Payload, fr.Payload) {
						t.Fatalf("re-encoded write differs: %v", err)
					}
				}
			case TypeBitmap:
				DecodeExtents(fr.Payload, nil)
			case TypeResyncDone:
				var d ResyncDone
				d.Decode(fr.Payload)
			case TypeResyncReq:
				var g Range
				g.Decode(fr.Payload)
			case TypeCsums, TypeVerify:
				var h Hashes
				if h.Decode(fr.Payload) == nil && (h.Len == 0 || h.Len > MaxData || h.Off+h.Len < h.Off || len(h.Sums) > MaxSums) {
					t.Fatalf("Hashes %d+%d with %d sums accepted", h.Off, h.Len, len(h.Sums))
				}
			case TypeVerifyReply:
				var m Mismatches
				if m.Decode(fr.Payload) == nil {
					if m.Len == 0 || m.Len > MaxData || m.Off+m.Len < m.Off {
						t.Fatalf("Mismatches %d+%d accepted", m.Off, m.Len)
					}
					for _, e := range m.Bad {
						if e.Count == 0 || e.Start < m.Off || e.Start+e.Count > m.Off+m.Len {
							t.Fatalf("mismatch %d+%d outside %d+%d accepted", e.Start, e.Count, m.Off, m.Len)
						}
					}
				}
			case TypeSnapshot:
				if name, err := DecodeSnapshotName(fr.Payload); err == nil && !ValidName(name) {
					t.Fatalf("snapshot name %q accepted", name)
				}
			case TypeSnapshotReq:
				var r SnapshotReq
				if r.Decode(fr.Payload) == nil && (!ValidName(r.Name) || len(r.Nodes) > MaxSnapshotNodes || r.All && len(r.Nodes) > 0 ||
					!bytes.Equal(r.Append(nil), fr.Payload)) {
					t.Fatalf("SnapshotReq %+v accepted from %x", r, fr.Payload)
				}
			case TypeSnapshotAck, TypeSnapshotReply:
				if s := SnapshotReason(fr.Payload); len(fr.Payload) > 0 && (s == "" || strings.ContainsAny(s, "\n\r")) {
					t.Fatalf("reason %q from %x", s, fr.Payload)
				}
			case TypePeerSeqs:
				if ps, err := DecodePeerSeqs(fr.Payload, nil); err == nil && !bytes.Equal(AppendPeerSeqs(nil, ps), fr.Payload) {
					t.Fatalf("re-encoded PeerSeqs differs")
				}
			}
		}
	})
}

// macStream is what an honest Writer sends under key, rekeying every 2
// frames: the bytes, and the frames a Reader must return. With split,
// frames of 64 bytes of payload or more get two-part tags.
func macStream(tb testing.TB, key [32]byte, split bool) ([]byte, []Frame) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, CodecS2, 0)
	if err != nil {
		tb.Fatal(err)
	}
	w.mac = newFuzzMAC(tb, key, split)
	text := bytes.Repeat([]byte("compressible "), 100)
	noise := make([]byte, 1000)
	for i := range noise {
		noise[i] = byte(i*7919 + i>>3*31)
	}
	frames := []Frame{
		{Type: TypeWrite, Flags: FlagFUA, Seq: 1, Payload: append((&Write{Off: 0, Len: uint64(len(text))}).AppendHead(nil), text...)},
		{Type: TypePing, Seq: 2},
		{Type: TypeWrite, Seq: 3, Payload: append((&Write{Off: 4096, Len: 40}).AppendHead(nil), "forty bytes of data, not worth squeezing"...)},
		{Type: TypeAck, Seq: 3},
		{Type: TypeBarrier, Seq: 4},
		{Type: TypeWrite, Seq: 5, Payload: append((&Write{Off: 8192, Len: uint64(len(noise))}).AppendHead(nil), noise...)},
	}
	for _, f := range frames {
		if err := w.WriteFrame(f.Type, f.Flags, f.Seq, f.Payload, nil); err != nil {
			tb.Fatal(err)
		}
	}
	w.Flush()
	return buf.Bytes(), frames
}

// FuzzReadFrameMAC feeds arbitrary bytes, seeded with an honest stream, to
// an authenticated Reader: nothing may panic, the Reader returns only the
// honest frames, in order (anything else would be a forgery), and once it
// refused a frame as unauthenticated it refuses everything.
func FuzzReadFrameMAC(f *testing.F) { fuzzReadFrameMAC(f, false) }

// FuzzReadFrameSplitMAC is FuzzReadFrameMAC with two-part tags on frames of
// 64 bytes of payload or more (64 KiB in use).
func FuzzReadFrameSplitMAC(f *testing.F) { fuzzReadFrameMAC(f, true) }

// newFuzzMAC is the frameMAC of the fuzzed streams: a new key every 2
// frames, and with split two-part tags from 64 bytes of payload.
func newFuzzMAC(tb testing.TB, key [32]byte, split bool) *frameMAC {
	m := mustFrameMAC(tb, &key)
	m.every = 2
	m.split, m.splitMin = split, 64
	return m
}

func fuzzReadFrameMAC(f *testing.F, split bool) {
	key := [32]byte{7, 7, 7}
	stream, want := macStream(f, key, split)
	inner := false // a frame with a two-part tag whose inner part is not empty
	for b := stream; len(b) >= HeaderSize; {
		plen := int(parseHeader(b).PayloadLen)
		inner = inner || plen >= 512
		b = b[min(len(b), HeaderSize+plen+MACSize):]
	}
	if split && !inner {
		f.Fatal("the honest stream has no frame with an inner tag")
	}
	if Codec(stream[7]) != CodecS2 {
		f.Fatalf("the honest stream's first frame is not compressed (%s)", Codec(stream[7]))
	}
	r := NewReader(bytes.NewReader(stream))
	r.mac = newFuzzMAC(f, key, split)
	for i := range want {
		if fr, err := r.ReadFrame(); err != nil || fr.Seq != want[i].Seq {
			f.Fatalf("honest frame %d: seq %d, %v", i, fr.Seq, err)
		}
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		f.Fatalf("after the honest stream: %v", err)
	}
	f.Add(stream)
	f.Add(stream[:len(stream)-1])
	flipped := bytes.Clone(stream)
	flipped[HeaderSize+3] ^= 4
	f.Add(flipped)
	f.Add(append(bytes.Clone(stream), stream[:HeaderSize+MACSize]...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		r.mac = newFuzzMAC(t, key, split)
		for i := 0; ; i++ {
			fr, err := r.ReadFrame()
			if err != nil {
				if errors.Is(err, ErrFrameAuth) {
					if _, again := r.ReadFrame(); again != err {
						t.Fatalf("the reader went on after %v: %v", err, again)
					}
				}
				return
			}
			if i >= len(want) {
				t.Fatalf("frame %d accepted: the honest stream has %d", i, len(want))
			}
			if w := want[i]; fr.Type != w.Type || fr.Flags != w.Flags || fr.Seq != w.Seq || !bytes.Equal(fr.Payload, w.Payload) {
				t.Fatalf("frame %d accepted as %s seq %d, the honest one is %s seq %d", i, fr.Type, fr.Seq, w.Type, w.Seq)
			}
		}
	})
}

// scriptConn is the far side of a handshake as a script: reads come from
// b, writes are taken and dropped.
type scriptConn struct {
	net.Conn
	r io.Reader
}

func (s scriptConn) Read(p []byte) (int, error)       { return s.r.Read(p) }
func (s scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (s scriptConn) SetDeadline(time.Time) error      { return nil }
func (s scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (s scriptConn) SetWriteDeadline(time.Time) error { return nil }
func (s scriptConn) Close() error                     { return nil }
func (s scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// FuzzHandshake feeds arbitrary bytes as the other side of Dial and of
// Accept, with and without a secret: nothing may panic, every failure is
// one of the handshake's errors, a refusal's text is clean, and no
// handshake succeeds (the bytes cannot hold a proof over the nonce this
// side draws afresh).
func FuzzHandshake(f *testing.F) {
	secret := []byte("fuzz-secret-fuzz")
	dialerHello := validHello(1, "alpha")
	dialerHello.Features |= FeatureFrameMAC
	listenerHello := validHello(2, "beta")
	listenerHello.Features |= FeatureFrameMAC
	proof := make([]byte, AuthSize)
	for _, h := range []*Hello{dialerHello, listenerHello} {
		hello := rawFrame(Version, TypeHello, h.Append(nil))
		f.Add(hello)
		f.Add(append(append([]byte{}, hello...), rawFrame(Version, TypeAuth, proof)...))
		f.Add(append(append([]byte{}, hello...), rawFrame(Version, TypeRefuse, []byte("go\naway"))...))
		f.Add(append(append([]byte{}, hello...), rawFrame(Version, TypePing, nil)...))
	}
	f.Add(rawFrame(1, TypeHello, dialerHello.Append(nil)))
	f.Add(rawFrame(Version, TypeRefuse, []byte("no")))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, dial := range []bool{true, false} {
			for _, key := range [][]byte{secret, nil} {
				c := NewConn(scriptConn{r: bytes.NewReader(b)})
				var err error
				if dial {
					_, err = Dial(c, validHello(1, "alpha"), key, 2, nil)
				} else {
					_, err = Accept(c, validHello(2, "beta"), key, nil)
				}
				if err == nil {
					t.Fatalf("dial %v: a handshake succeeded against fixed bytes", dial)
				}
				var ve *VersionError
				var re *RefusedError
				switch {
				case errors.As(err, &re):
					if strings.ContainsAny(re.Reason, "\n\r") || !utf8.ValidString(re.Reason) || len(re.Reason) > MaxReason+3 {
						t.Fatalf("refusal text %q", re.Reason)
					}
				case errors.Is(err, ErrCorrupt), errors.Is(err, ErrAuth), errors.Is(err, ErrMismatch),
					errors.Is(err, ErrUnexpected), errors.As(err, &ve), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				default:
					t.Fatalf("dial %v: unexpected error %v", dial, err)
				}
				if strings.ContainsAny(err.Error(), "\n\r") {
					t.Fatalf("error with a line break: %q", err)
				}
				if c.R.open || c.W.open {
					t.Fatal("connection opened after a failed handshake")
				}
			}
		}
	})
}
