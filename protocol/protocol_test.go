package protocol

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// roundTrip writes one frame and reads it back; handshake types go
// through a handshake Writer and Reader (uncompressed).
func roundTrip(t *testing.T, codec Codec, typ Type, f Flags, seq uint64, head, data []byte) Frame {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, codec, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	if typeTable[typ].when&postAuth == 0 {
		w, r = newHandshakeWriter(&buf), newHandshakeReader(&buf)
	}
	if err := w.WriteFrame(typ, f, seq, head, data); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadFrame()
	if err != nil {
		t.Fatalf("%s/%s: %v", codec, typ, err)
	}
	if got.Type != typ || got.Flags != f || got.Seq != seq {
		t.Fatalf("header: got %v %v %d, want %v %v %d", got.Type, got.Flags, got.Seq, typ, f, seq)
	}
	if want := append(append([]byte{}, head...), data...); !bytes.Equal(got.Payload, want) {
		t.Fatalf("%s/%s payload differs: %d vs %d bytes", codec, typ, len(got.Payload), len(want))
	}
	return got
}

func TestMessageRoundTrips(t *testing.T) {
	hello := Hello{Features: Features, Size: 1 << 30, Granularity: 4096, NodeID: 3, Nonce: NewNonce(), Resource: "r0", Name: "gamma"}
	state := State{Role: 1, Disk: 2, Repl: 3, Flags: StateDiscardMyData, Current: 0xdead, Bitmap: 0xbeef, History: [2]uint64{1, 2}, OutOfSync: 4096}
	data := bytes.Repeat([]byte("repd"), 1024)
	wr := Write{Off: 8192, Len: uint64(len(data))}
	ex := []Extent{{0, 1}, {10, 100}, {1 << 40, 3}}
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		t.Run(codec.String(), func(t *testing.T) {
			f := roundTrip(t, codec, TypeHello, 0, 0, hello.Append(nil), nil)
			var h Hello
			if err := h.Decode(f.Payload); err != nil || !reflect.DeepEqual(h, hello) {
				t.Fatalf("hello: %+v %v", h, err)
			}
			f = roundTrip(t, codec, TypeState, 0, 0, state.Append(nil), nil)
			var s State
			if err := s.Decode(f.Payload); err != nil || s != state {
				t.Fatalf("state: %+v %v", s, err)
			}
			a := Auth{MAC: [32]byte{1, 2, 3}}
			f = roundTrip(t, codec, TypeAuth, 0, 0, a.Append(nil), nil)
			var a2 Auth
			if err := a2.Decode(f.Payload); err != nil || a2 != a {
				t.Fatalf("auth: %v", err)
			}
			f = roundTrip(t, codec, TypeWrite, FlagFUA, 77, wr.AppendHead(nil), data)
			var w2 Write
			if err := w2.Decode(f.Payload, f.Flags); err != nil || w2.Off != wr.Off || !bytes.Equal(w2.Data, data) {
				t.Fatalf("write: %v", err)
			}
			trim := Write{Off: 0, Len: 1 << 40}
			f = roundTrip(t, codec, TypeWrite, FlagTrim, 78, trim.AppendHead(nil), nil)
			if err := w2.Decode(f.Payload, f.Flags); err != nil || w2.Len != 1<<40 || len(w2.Data) != 0 {
				t.Fatalf("trim: %v", err)
			}
			for _, typ := range []Type{TypeAck, TypeBarrier, TypeBarrierAck, TypePing, TypePong} {
				roundTrip(t, codec, typ, 0, 1<<63+5, nil, nil)
			}
			f = roundTrip(t, codec, TypeBitmap, FlagLast, 0, AppendExtents(nil, ex), nil)
			got, err := DecodeExtents(f.Payload, nil)
			if err != nil || !reflect.DeepEqual(got, ex) {
				t.Fatalf("extents: %v %v", got, err)
			}
			rd := ResyncDone{Current: 42}
			f = roundTrip(t, codec, TypeResyncDone, 0, 9, rd.Append(nil), nil)
			var rd2 ResyncDone
			if err := rd2.Decode(f.Payload); err != nil || rd2 != rd {
				t.Fatalf("resync done: %v", err)
			}
			rg := Range{Off: 4096, Len: 8192}
			f = roundTrip(t, codec, TypeResyncReq, 0, 0, rg.Append(nil), nil)
			var rg2 Range
			if err := rg2.Decode(f.Payload); err != nil || rg2 != rg {
				t.Fatalf("range: %v", err)
			}
			roundTrip(t, codec, TypeRefuse, 0, 0, []byte("no"), nil)
		})
	}
}

func TestCompressionShrinksOrGoesRaw(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(rnd.Uint32())
	}
	zeros := make([]byte, 64<<10)
	for _, codec := range []Codec{CodecS2, CodecZstd} {
		for _, tc := range []struct {
			name string
			data []byte
			want Codec
		}{{"zeros", zeros, codec}, {"random", random, CodecNone}} {
			var buf bytes.Buffer
			w, _ := NewWriter(&buf, codec, 3)
			w.WriteFrame(TypeWrite, 0, 1, (&Write{Len: uint64(len(tc.data))}).AppendHead(nil), tc.data)
			w.Flush()
			if got := Codec(buf.Bytes()[7]); got != tc.want {
				t.Errorf("%s %s: frame codec %s, want %s", codec, tc.name, got, tc.want)
			}
			if tc.want != CodecNone && buf.Len() > len(tc.data)/4 {
				t.Errorf("%s %s: %d bytes on the wire", codec, tc.name, buf.Len())
			}
			f, err := NewReader(&buf).ReadFrame()
			if err != nil || !bytes.Equal(f.Payload[WriteHeadSize:], tc.data) {
				t.Fatalf("%s %s: %v", codec, tc.name, err)
			}
		}
	}
}

// encodeFrame encodes one frame as after the handshake, or, for the
// handshake types, as during it.
func encodeFrame(t testing.TB, codec Codec, typ Type, seq uint64, payload []byte) []byte {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, codec, 0)
	if typeTable[typ].when&postAuth == 0 {
		w = newHandshakeWriter(&buf)
	}
	if err := w.WriteFrame(typ, 0, seq, payload, nil); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	return buf.Bytes()
}

func TestCorruptionDetected(t *testing.T) {
	payload := bytes.Repeat([]byte{7, 0, 0, 0}, 2048)
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		good := encodeFrame(t, codec, TypeWrite, 5, append((&Write{Len: uint64(len(payload)) - 16}).AppendHead(nil), payload[16:]...))
		// Flip every bit of the frame in turn: each must fail. (One
		// Reader, its source reset: a fresh 256 KiB buffer per flip made
		// this test take minutes under the race detector.)
		bad := make([]byte, len(good))
		src := bytes.NewReader(nil)
		r := NewReader(src)
		for i := range len(good) * 8 {
			copy(bad, good)
			bad[i/8] ^= 1 << (i % 8)
			src.Reset(bad)
			r.br.Reset(src)
			_, err := r.ReadFrame()
			var ve *VersionError
			if err == nil {
				t.Fatalf("%s: bit %d flipped: frame accepted", codec, i)
			}
			if !errors.Is(err, ErrCorrupt) && !errors.As(err, &ve) && !errors.Is(err, io.ErrUnexpectedEOF) && err != io.EOF {
				t.Fatalf("%s: bit %d flipped: unexpected error %v", codec, i, err)
			}
		}
		if _, err := NewReader(bytes.NewReader(good[:len(good)-1])).ReadFrame(); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("truncated: %v", err)
		}
	}
	// An oversized length is refused before reading the payload.
	hdr := encodeFrame(t, CodecNone, TypeWrite, 1, make([]byte, 16))
	hdr[8], hdr[9], hdr[10], hdr[11] = 0xff, 0xff, 0xff, 0x7f
	hdr[12], hdr[13], hdr[14], hdr[15] = 0xff, 0xff, 0xff, 0x7f
	if _, err := NewReader(bytes.NewReader(hdr[:HeaderSize])).ReadFrame(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized: %v", err)
	}
	// During the handshake a frame of another version is a VersionError,
	// except Refuse; after it, any other version is corruption.
	other := encodeFrame(t, CodecNone, TypeHello, 0, validHello(1, "alpha").Append(nil))
	other[4] = 9
	fixChecksum(other)
	var ve *VersionError
	if _, err := newHandshakeReader(bytes.NewReader(other)).ReadFrame(); !errors.As(err, &ve) || ve.Got != 9 {
		t.Fatalf("version: %v", err)
	}
	ref := encodeFrame(t, CodecNone, TypeRefuse, 0, []byte("go away"))
	ref[4] = 9
	fixChecksum(ref)
	if f, err := newHandshakeReader(bytes.NewReader(ref)).ReadFrame(); err != nil || string(f.Payload) != "go away" {
		t.Fatalf("refuse of other version: %v", err)
	}
	if _, err := NewReader(bytes.NewReader(ref)).ReadFrame(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("refuse of other version after the handshake: %v", err)
	}
}

func fixChecksum(b []byte) {
	binary.LittleEndian.PutUint64(b[len(b)-TrailerSize:], xxhash.Sum64(b[:len(b)-TrailerSize]))
}

func TestMalformedPayloads(t *testing.T) {
	var h Hello
	if err := h.Decode([]byte{1, 2, 3}); !errors.Is(err, ErrCorrupt) {
		t.Fatal(err)
	}
	if err := h.Decode(append(validHello(1, "alpha").Append(nil), 0)); !errors.Is(err, ErrCorrupt) {
		t.Fatal("Hello with a trailing byte accepted")
	}
	var s State
	if err := s.Decode(make([]byte, 45)); !errors.Is(err, ErrCorrupt) {
		t.Fatal(err)
	}
	var w Write
	if err := w.Decode((&Write{Off: 0, Len: 10}).AppendHead(nil), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatal("write with missing data accepted")
	}
	if err := w.Decode(append((&Write{Len: 1}).AppendHead(nil), 1), FlagTrim); !errors.Is(err, ErrCorrupt) {
		t.Fatal("trim with data accepted")
	}
	if err := w.Decode((&Write{Off: 1 << 63, Len: 1 << 63}).AppendHead(nil), FlagTrim); !errors.Is(err, ErrCorrupt) {
		t.Fatal("overflowing range accepted")
	}
	if _, err := DecodeExtents([]byte{5, 0, 0, 0}, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatal(err)
	}
}

func pipePair(t *testing.T) (*Conn, *Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	a.SetDeadline(time.Now().Add(5 * time.Second))
	b.SetDeadline(time.Now().Add(5 * time.Second))
	return NewConn(a), NewConn(b)
}

func BenchmarkWriteFrame4k(b *testing.B) {
	data := make([]byte, 4096)
	w, _ := NewWriter(io.Discard, CodecNone, 0)
	head := make([]byte, 0, 16)
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := range b.N {
		w.WriteFrame(TypeWrite, 0, uint64(i), (&Write{Len: 4096}).AppendHead(head[:0]), data)
	}
}

func BenchmarkReadFrame4k(b *testing.B) {
	fr := encodeFrame(b, CodecNone, TypeWrite, 1, make([]byte, 4096+16))
	all := bytes.Repeat(fr, 1024)
	b.SetBytes(4096)
	b.ReportAllocs()
	rd := bytes.NewReader(all)
	r := NewReader(rd)
	for range b.N {
		if _, err := r.ReadFrame(); err != nil {
			rd.Reset(all)
			r.br.Reset(rd)
		}
	}
}

func TestDedupWriteRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte("d"), DedupBlock+512)
	dw := DedupWrite{Off: 1 << 20, Len: 3*DedupBlock + 512, Kinds: []BlockKind{BlockRef, BlockZero, BlockData, BlockData},
		Refs: []Ref{{Src: 12288, Hash: [32]byte{1, 2, 3}}}, Data: data}
	f := roundTrip(t, CodecS2, TypeWrite, FlagDedup, 9, dw.AppendHead(nil), dw.Data)
	var got DedupWrite
	if err := got.Decode(f.Payload); err != nil || !reflect.DeepEqual(got, dw) {
		t.Fatalf("dedup write: %+v %v", got, err)
	}
	for _, bad := range []DedupWrite{
		{Off: 0, Len: 4096, Kinds: []BlockKind{BlockRef}},                                  // reference without its entry
		{Off: 0, Len: 100, Kinds: []BlockKind{BlockRef}, Refs: []Ref{{}}},                  // a short block by reference
		{Off: 0, Len: 8192, Kinds: []BlockKind{BlockZero}},                                 // too few kinds
		{Off: 0, Len: 4096, Kinds: []BlockKind{7}, Data: make([]byte, 4096)},               // unknown kind
		{Off: 0, Len: 4096, Kinds: []BlockKind{BlockData}, Data: make([]byte, 4095)},       // short data
		{Off: ^uint64(0) - 10, Len: 4096, Kinds: []BlockKind{BlockZero}},                   // overflow
		{Off: 0, Len: MaxData + 4096, Kinds: make([]BlockKind, DedupBlocks(MaxData+4096))}, // too long
	} {
		if err := new(DedupWrite).Decode(append(bad.AppendHead(nil), bad.Data...)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

// The configured zstd level reaches the encoder: a higher level shrinks
// text further.
func TestZstdLevelUsed(t *testing.T) {
	var text bytes.Buffer
	r := rand.New(rand.NewPCG(1, 2))
	for text.Len() < 512<<10 {
		fmt.Fprintf(&text, "%d,customer-%d,%d.%02d,city-%d\n", text.Len(), r.IntN(5000), r.IntN(1000), r.IntN(100), r.IntN(50))
	}
	size := func(level int) int64 {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, CodecZstd, level)
		if err != nil {
			t.Fatal(err)
		}
		w.WriteFrame(TypeWrite, 0, 1, nil, text.Bytes()[:MaxData/2])
		w.Flush()
		return w.BytesWritten()
	}
	fast, best := size(1), size(19)
	t.Logf("zstd level 1: %d bytes, level 19: %d bytes of %d", fast, best, MaxData/2)
	if best >= fast {
		t.Fatalf("level 19 (%d bytes) does not beat level 1 (%d bytes)", best, fast)
	}
}

func TestTLSConfigIsTLS13Mutual(t *testing.T) {
	c := NewTLSConfig(tls.Certificate{}, x509.NewCertPool())
	if c.MinVersion != tls.VersionTLS13 || c.ClientAuth != tls.RequireAndVerifyClientCert || c.RootCAs == nil || c.ClientCAs == nil {
		t.Fatalf("%+v", c)
	}
}

func TestCompressibleSkipsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	for _, n := range []int{1024, 4096, 65536} {
		if compressible(random[:n]) {
			t.Errorf("%d random bytes judged compressible", n)
		}
	}
	var text bytes.Buffer
	for text.Len() < 64<<10 {
		fmt.Fprintf(&text, "%d,customer-%d,%d.%02d\n", text.Len(), r.IntN(5000), r.IntN(1000), r.IntN(100))
	}
	b64 := make([]byte, 4096)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range b64 {
		b64[i] = alphabet[r.IntN(64)]
	}
	half := append(append([]byte{}, random[:2048]...), make([]byte, 2048)...)
	for name, b := range map[string][]byte{"text": text.Bytes()[:4096], "zeros": make([]byte, 4096), "base64": b64, "half zero": half} {
		if !compressible(b) {
			t.Errorf("%s judged incompressible", name)
		}
	}
}

func TestPeerSeqsRoundTrip(t *testing.T) {
	in := []PeerSeq{{1, 0}, {2, 1 << 40}, {63, 7}}
	b := AppendPeerSeqs(nil, in)
	out, err := DecodePeerSeqs(b, nil)
	if err != nil || len(out) != len(in) {
		t.Fatalf("decode: %v %v", out, err)
	}
	for i := range in {
		if in[i] != out[i] {
			t.Fatalf("entry %d: %v != %v", i, out[i], in[i])
		}
	}
	if _, err := DecodePeerSeqs(b[:len(b)-1], nil); err == nil {
		t.Fatal("short PeerSeqs accepted")
	}
	if TypePromoteReq.String() != "PromoteReq" || TypePeerSeqs.String() != "PeerSeqs" {
		t.Fatal("type names")
	}
}

// Frames that the sampling lets through but that do not shrink make the
// writer back off: it tries at most one frame in maxSkip+1 while they keep
// failing, and compresses again within maxSkip frames once data turns
// compressible.
func TestCompressionBacksOffOnIncompressibleData(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, codec := range []Codec{CodecZstd, CodecS2} {
		var out bytes.Buffer
		w, err := NewWriter(&out, codec, 0)
		if err != nil {
			t.Fatal(err)
		}
		random := make([]byte, 1000) // below the sampling's size: always tried
		for range 1000 {
			for i := range random {
				random[i] = byte(r.Uint32())
			}
			if err := w.WriteFrame(TypeWrite, 0, 1, nil, random); err != nil {
				t.Fatal(err)
			}
		}
		if lim := 6 + 1000/(maxSkip+1) + 1; w.tries > lim {
			t.Errorf("%v: %d encoder calls for 1000 incompressible frames, want at most %d", codec, w.tries, lim)
		}
		raw := w.BytesWritten()
		text := bytes.Repeat([]byte("customer,Acme Corp,Main Street 1,"), 30)
		for range 200 {
			if err := w.WriteFrame(TypeWrite, 0, 1, nil, text); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
		// Raw, the 200 text frames would be 200*(len+overhead); compressed
		// after at most maxSkip raw ones they are far less.
		textWire := w.BytesWritten() - raw
		if limit := int64((maxSkip + 20) * (len(text) + HeaderSize + TrailerSize)); textWire > limit {
			t.Errorf("%v: text after random data: %d bytes on the wire, want < %d (compression resumed)", codec, textWire, limit)
		}
		// Everything still decodes.
		rd := NewReader(&out)
		for range 1200 {
			if _, err := rd.ReadFrame(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A Conn moves its read deadline only every eighth of the timeout; a read
// still fails in time when frames stop, also when SetDeadline cleared the
// deadline (as the handshake does) just after a ReadFrame set one.
func TestReadDeadlineHoldsWhenFramesStop(t *testing.T) {
	const timeout = time.Second
	for _, clear := range []bool{false, true} {
		a, b := net.Pipe()
		c, peer := NewConn(a), NewConn(b)
		if dr, lr := handshakePair(c, peer, validHello(1, "alpha"), validHello(2, "beta"), nil, nil, 2); dr.err != nil || lr.err != nil {
			t.Fatalf("handshake: %v / %v", dr.err, lr.err)
		}
		go func() {
			for i := range 5 {
				if err := peer.Send(time.Second, TypePing, 0, uint64(i), nil, nil); err != nil {
					return
				}
			}
		}()
		for i := range 5 {
			if _, err := c.ReadFrame(timeout); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
		if clear {
			c.SetDeadline(time.Time{})
		}
		start := time.Now()
		done := make(chan error, 1)
		go func() { _, err := c.ReadFrame(timeout); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("clear=%v: read with no frame coming: %v, want a deadline error", clear, err)
			}
			if d := time.Since(start); d > timeout+timeout/2 {
				t.Fatalf("clear=%v: the deadline fired after %v, want within %v", clear, d, timeout)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("clear=%v: ReadFrame(%v) still waiting after 5 s: no deadline was set", clear, timeout)
		}
		a.Close()
		b.Close()
	}
}

// BenchmarkFrame is WriteFrame+Flush+ReadFrame of one Write frame through
// memory, with the xxhash64 trailer (TLS or no secret) and with the frame
// MAC (a secret, no TLS): the cost authentication adds per frame. Besides
// ns/op (wall time, which a loaded machine inflates) it reports cpu-ns/op,
// the process's CPU time (user + system) per frame.
func BenchmarkFrame(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		for _, trailer := range []string{"xxhash64", "mac"} {
			b.Run(fmt.Sprintf("%dk/%s", size>>10, trailer), func(b *testing.B) {
				var buf bytes.Buffer
				w, _ := NewWriter(&buf, CodecNone, 0)
				r := NewReader(&buf)
				if trailer == "mac" {
					key := [32]byte{1, 2, 3}
					w.mac, r.mac = mustFrameMAC(b, &key), mustFrameMAC(b, &key)
				}
				data := make([]byte, size)
				rnd := rand.New(rand.NewPCG(1, 2))
				for i := range data {
					data[i] = byte(rnd.Uint32())
				}
				head := (&Write{Len: uint64(size)}).AppendHead(nil)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				cpu0 := processCPU()
				for i := range b.N {
					if err := w.WriteFrame(TypeWrite, 0, uint64(i), head, data); err != nil {
						b.Fatal(err)
					}
					w.Flush()
					if _, err := r.ReadFrame(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// processCPU is the CPU time (user + system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func mustFrameMAC(tb testing.TB, key *[32]byte) *frameMAC {
	tb.Helper()
	m, err := newFrameMAC(key)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// stepReader hands out the bytes of src as far as limit allows.
type stepReader struct {
	src   []byte
	limit int
}

func (s *stepReader) Read(p []byte) (int, error) {
	if s.limit == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.src[:min(s.limit, len(s.src))])
	s.src, s.limit = s.src[n:], s.limit-n
	return n, nil
}

// TestFrameBuffered: a whole frame in the buffer is reported, a frame cut
// anywhere (header, payload, trailer) is not, so a receiver answers before
// a read that would wait.
func TestFrameBuffered(t *testing.T) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, CodecNone, 0)
	w.WriteFrame(TypeAck, 0, 1, nil, nil)
	w.WriteFrame(TypeWrite, 0, 2, make([]byte, WriteHeadSize), bytes.Repeat([]byte{7}, 4096))
	w.Flush()
	all := buf.Bytes()
	first := HeaderSize + TrailerSize
	for cut := first; cut <= len(all); cut++ {
		r := NewReader(&stepReader{src: all, limit: cut})
		if r.FrameBuffered() {
			t.Fatal("a frame reported buffered before anything was read")
		}
		if _, err := r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
		if got, want := r.FrameBuffered(), cut == len(all); got != want {
			t.Fatalf("%d of %d bytes read: FrameBuffered %v, want %v", cut, len(all), got, want)
		}
	}
}
