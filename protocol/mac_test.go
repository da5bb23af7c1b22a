package protocol

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// gcmTag computes a frame's tag the way the package documentation says,
// with crypto/aes and crypto/cipher directly: AES-256-GCM under key, nonce
// ctr u64 ‖ 4 zero bytes, no plaintext, the frame as additional data.
func gcmTag(t *testing.T, key [32]byte, ctr uint64, frame []byte) []byte {
	t.Helper()
	var nonce [12]byte
	binary.LittleEndian.PutUint64(nonce[:], ctr)
	return testGCM(t, key).Seal(nil, nonce[:], nil, frame)
}

// testGCM is AES-256-GCM under key, from crypto/aes and crypto/cipher.
func testGCM(t *testing.T, key [32]byte) cipher.AEAD {
	t.Helper()
	block, err := aes.NewCipher(key[:])
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return aead
}

// frameKeys derives a connection's frame keys (dialer to listener, and
// back) from the secret and the transcript, as the documentation says.
func frameKeys(secret []byte, transcript [32]byte) (kd, kl [32]byte) {
	var k [32]byte
	blake3.DeriveKey(ctxAuthKey, secret, k[:])
	material := append(k[:], transcript[:]...)
	blake3.DeriveKey(ctxKeyDialer, material, kd[:])
	blake3.DeriveKey(ctxKeyListener, material, kl[:])
	return kd, kl
}

// readRaw reads one frame with a trailer of tl bytes from nc as bytes.
func readRaw(t *testing.T, nc net.Conn, tl int) (frame, trailer []byte) {
	t.Helper()
	hdr := make([]byte, HeaderSize)
	if _, err := io.ReadFull(nc, hdr); err != nil {
		t.Fatal(err)
	}
	rest := make([]byte, int(parseHeader(hdr).PayloadLen)+tl)
	if _, err := io.ReadFull(nc, rest); err != nil {
		t.Fatal(err)
	}
	all := append(hdr, rest...)
	return all[:len(all)-tl], all[len(all)-tl:]
}

// The frames of a real handshake carry, in each direction, the tag the
// documentation gives: keys derived from the secret and the transcript,
// the direction's frame counter as the nonce, header ‖ payload as the
// authenticated bytes.
func TestFrameMACIsDocumentedGCM(t *testing.T) {
	secret := []byte("s3cret-s3cret")
	a, b := pipePair(t)
	dr, lr := handshakePair(a, b, validHello(1, "alpha"), validHello(2, "beta"), secret, secret, 2)
	if dr.err != nil || lr.err != nil || !dr.s.FrameAuth {
		t.Fatalf("handshake: %v / %v", dr.err, lr.err)
	}
	kd, kl := frameKeys(secret, dr.s.Transcript)

	data := bytes.Repeat([]byte("x"), 5000)
	for _, dir := range []struct {
		name     string
		from, to *Conn
		key      [32]byte
	}{{"dialer to listener", a, b, kd}, {"listener to dialer", b, a, kl}} {
		for ctr := range uint64(3) {
			if err := dir.from.Send(0, TypeWrite, 0, 100+ctr, (&Write{Off: 4096 * ctr, Len: uint64(len(data))}).AppendHead(nil), data); err != nil {
				t.Fatal(err)
			}
			frame, tag := readRaw(t, dir.to.NetConn(), MACSize)
			if want := gcmTag(t, dir.key, ctr, frame); !bytes.Equal(tag, want) {
				t.Fatalf("%s, frame %d: tag %x, want %x", dir.name, ctr, tag, want)
			}
		}
	}
}

// macPair is a Writer and a Reader on one buffer whose frames are
// authenticated under key, rekeying every `every` frames.
func macPair(t *testing.T, key [32]byte, every uint64) (*Writer, *Reader, *bytes.Buffer) {
	t.Helper()
	return macPairCodec(t, key, every, CodecZstd)
}

// macPairCodec is macPair with codec.
func macPairCodec(t *testing.T, key [32]byte, every uint64, codec Codec) (*Writer, *Reader, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, codec, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	w.mac, r.mac = mustFrameMAC(t, &key), mustFrameMAC(t, &key)
	w.mac.every, r.mac.every = every, every
	return w, r, &buf
}

// Every frame size takes its path through the Writer (in the buffer's
// free space, after a flush to make room, in scratch when larger than
// the buffer, compressed or not) and reads back intact, without a Flush
// between frames.
func TestMACFramesOfEverySize(t *testing.T) {
	w, r, buf := macPair(t, [32]byte{9}, rekeyInterval)
	sizes := []int{0, 1, 4096, 100 << 10, 200 << 10, 60 << 10, MaxData, 300 << 10, 17}
	var sent [][]byte
	for i, n := range sizes {
		data := make([]byte, n)
		if i%2 == 0 { // compressible
			for j := range data {
				data[j] = byte(j / 512)
			}
		} else {
			for j := range data {
				data[j] = byte(j*7919 + j>>3*31 + i)
			}
		}
		if err := w.WriteFrame(TypeWrite, FlagFUA, uint64(i), (&Write{Off: 0, Len: uint64(n)}).AppendHead(nil), data); err != nil {
			t.Fatalf("frame %d (%d bytes): %v", i, n, err)
		}
		sent = append(sent, data)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if int64(buf.Len()) != w.BytesWritten() {
		t.Fatalf("%d bytes on the wire, the Writer counted %d", buf.Len(), w.BytesWritten())
	}
	for i, data := range sent {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.Seq != uint64(i) || f.Flags != FlagFUA || !bytes.Equal(f.Payload[WriteHeadSize:], data) {
			t.Fatalf("frame %d came back different", i)
		}
	}
	if w.mac.ctr != uint64(len(sizes)) || r.mac.ctr != w.mac.ctr {
		t.Fatalf("counters %d and %d after %d frames", w.mac.ctr, r.mac.ctr, len(sizes))
	}
}

// Each key authenticates `every` frames; the next is derived from it. Both
// ends move together, a Reader that did not move fails at the first frame
// under the new key, and the new key is the documented one.
func TestMACRekeys(t *testing.T) {
	const every = 3
	key := [32]byte{1, 2, 3}
	w, r, buf := macPair(t, key, every)
	var stream []byte
	for i := range uint64(10) {
		if err := w.WriteFrame(TypePing, 0, i, nil, nil); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		stream = append(stream, buf.Bytes()...)
		if f, err := r.ReadFrame(); err != nil || f.Seq != i {
			t.Fatalf("frame %d: seq %d, %v", i, f.Seq, err)
		}
	}
	if w.mac.epoch != 3 || r.mac.epoch != 3 || w.mac.key == key {
		t.Fatalf("after 10 frames, 3 per key: epochs %d and %d, want 3", w.mac.epoch, r.mac.epoch)
	}

	// Frame 3 is tagged under BLAKE3-derive-key(ctxRekey, key).
	frameLen := HeaderSize + MACSize
	f3 := stream[3*frameLen : 4*frameLen]
	var k1 [32]byte
	blake3.DeriveKey(ctxRekey, key[:], k1[:])
	if want := gcmTag(t, k1, 3, f3[:HeaderSize]); !bytes.Equal(f3[HeaderSize:], want) {
		t.Fatalf("frame 3: tag %x, want %x (the second key's)", f3[HeaderSize:], want)
	}

	// A Reader that keeps the first key reads frames 0..2 and fails at 3.
	stale := NewReader(bytes.NewReader(stream))
	stale.mac = mustFrameMAC(t, &key)
	for i := range 4 {
		_, err := stale.ReadFrame()
		if i < every && err != nil {
			t.Fatalf("frame %d under the first key: %v", i, err)
		}
		if i == every && !errors.Is(err, ErrFrameAuth) {
			t.Fatalf("frame %d read under the first key: %v", i, err)
		}
	}
}

// The counter never wraps: the last frame number is refused to the
// Writer, which writes nothing, and to the Reader, which stays failed.
func TestMACCounterNeverWraps(t *testing.T) {
	w, r, buf := macPair(t, [32]byte{4}, rekeyInterval)
	for _, m := range []*frameMAC{w.mac, r.mac} {
		m.ctr = maxFrames - 1
		m.epoch = m.ctr / m.every
	}
	if err := w.WriteFrame(TypePing, 0, 1, nil, nil); err != nil {
		t.Fatalf("frame 2^64-2: %v", err)
	}
	w.Flush()
	if _, err := r.ReadFrame(); err != nil {
		t.Fatalf("reading frame 2^64-2: %v", err)
	}
	err := w.WriteFrame(TypePing, 0, 2, nil, nil)
	if !errors.Is(err, errFramesExhausted) {
		t.Fatalf("frame 2^64-1 written: %v", err)
	}
	t.Log(err)
	if w.Buffered() != 0 || buf.Len() != 0 {
		t.Fatalf("a refused frame left %d bytes", w.Buffered()+buf.Len())
	}
	// A frame the peer sends anyway (its tag cannot be right: we never
	// made one for this counter) is refused for the counter.
	buf.Write(append(rawFrame(Version, TypePing, nil), make([]byte, MACSize-TrailerSize)...))
	_, err = r.ReadFrame()
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, ErrFrameAuth) || !strings.Contains(err.Error(), "counter exhausted") {
		t.Fatalf("frame 2^64-1 read: %v", err)
	}
	if _, again := r.ReadFrame(); again != err {
		t.Fatalf("the reader went on: %v", again)
	}
}

// Authenticating a frame allocates nothing.
func TestMACFramesDoNotAllocate(t *testing.T) {
	w, r, _ := macPair(t, [32]byte{5}, rekeyInterval)
	w.enc = nil
	data := make([]byte, 4096)
	head := (&Write{Len: 4096}).AppendHead(nil)
	var i uint64
	allocs := testing.AllocsPerRun(200, func() {
		if err := w.WriteFrame(TypeWrite, 0, i, head, data); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		if _, err := r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per authenticated 4 KiB frame", allocs)
	}
}

// A pre-release build of version 2 announced keyed-BLAKE3 frame MACs with
// bit 4; it is refused at the handshake, naming the reason, on either
// side, instead of failing its first frame as a forgery.
func TestRetiredBLAKE3FeatureRefused(t *testing.T) {
	old := func(h *Hello) { h.Features = h.Features&^FeatureFrameMAC | featureFrameMACBLAKE3 }

	// An old dialer to an up-to-date listener.
	beta := startHonest(t, 1, "beta")
	hello := validHello(0, "alpha")
	hello.Nonce = NewNonce()
	old(hello)
	d := connect(t, beta.ln.Addr().String())
	d.send(TypeHello, hello.Append(nil))
	if r := d.expect(TypeRefuse); !strings.Contains(string(r), "pre-release build") {
		t.Fatalf("listener's refusal: %q", r)
	}
	if r := beta.outcome(); !errors.Is(r.err, ErrAuth) || !strings.Contains(r.err.Error(), "pre-release build") {
		t.Fatalf("listener: %v", r.err)
	}

	// An up-to-date dialer to an old listener.
	alpha := startHonest(t, 0, "alpha")
	addr, dials := mitm(t)
	res := alpha.dial(addr, 1)
	l := <-dials
	l.expect(TypeHello)
	hello = validHello(1, "beta")
	hello.Nonce = NewNonce()
	old(hello)
	l.send(TypeHello, hello.Append(nil))
	if r := l.expect(TypeRefuse); !strings.Contains(string(r), "pre-release build") {
		t.Fatalf("dialer's refusal: %q", r)
	}
	if r := <-res; !errors.Is(r.err, ErrAuth) {
		t.Fatalf("dialer: %v", r.err)
	}
}

// Conn.Send(timeout) keeps the write deadline moving on an authenticated
// link that sends only frames larger than the Writer's buffer (1 MiB
// writes, as a resync or a big application write does): each Send to a
// reader that keeps up succeeds, long after the first deadline would
// have passed. (A sealed frame larger than the buffer once went to the
// socket whole inside WriteFrame, leaving nothing buffered, so Flush set
// no deadline and the stale one cut the link.)
func TestLargeAuthenticatedFramesKeepWriteDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	a, b := net.Pipe()
	w, r := NewConn(a), NewConn(b)
	if dr, lr := handshakePair(w, r, validHello(1, "alpha"), validHello(2, "beta"), []byte("s3cret"), []byte("s3cret"), 2); dr.err != nil || lr.err != nil || !dr.s.FrameAuth {
		t.Fatalf("handshake: %v / %v", dr.err, lr.err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	read := make(chan error, 1)
	go func() {
		for {
			f, err := r.ReadFrame(0)
			if err != nil || f.Type == TypeBarrier {
				read <- err
				return
			}
		}
	}()
	data := make([]byte, MaxData)
	head := (&Write{Len: MaxData}).AppendHead(nil)
	if err := w.Send(timeout, TypePing, 0, 0, nil, nil); err != nil { // sets a deadline
		t.Fatal(err)
	}
	start := time.Now()
	for i := uint64(0); time.Since(start) < 4*timeout; i++ {
		if err := w.Send(timeout, TypeWrite, 0, i, head, data); err != nil {
			t.Fatalf("frame %d, %v after the first: %v", i, time.Since(start).Round(time.Millisecond), err)
		}
	}
	if err := w.Send(timeout, TypeBarrier, 0, 0, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
}
