package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// splitTagDoc computes a split frame's tag the way the package
// documentation says, with crypto/aes and crypto/cipher directly: the
// inner tag over payload[s:] under nonce ctr ‖ 2, s = len(payload) mod
// 512, then the frame's tag over header ‖ payload[:s] ‖ inner tag under
// nonce ctr ‖ 1.
func splitTagDoc(t *testing.T, key [32]byte, ctr uint64, frame []byte) []byte {
	t.Helper()
	aead := testGCM(t, key)
	nonce := func(part uint32) []byte {
		var n [12]byte
		binary.LittleEndian.PutUint64(n[:8], ctr)
		binary.LittleEndian.PutUint32(n[8:], part)
		return n[:]
	}
	payload := frame[HeaderSize:]
	s := len(payload) % 512
	inner := aead.Seal(nil, nonce(2), nil, payload[s:])
	outer := append(append(bytes.Clone(frame[:HeaderSize]), payload[:s]...), inner...)
	return aead.Seal(nil, nonce(1), nil, outer)
}

// Between two peers that both announce FeatureSplitMAC, a frame of 64 KiB
// of payload or more carries the documented two-part tag and a smaller one
// the whole-frame tag, in both directions of a real handshake.
func TestSplitMACIsDocumented(t *testing.T) {
	secret := []byte("s3cret-s3cret")
	a, b := pipePair(t)
	dr, lr := handshakePair(a, b, validHello(1, "alpha"), validHello(2, "beta"), secret, secret, 2)
	if dr.err != nil || lr.err != nil || !dr.s.SplitMAC || !lr.s.SplitMAC {
		t.Fatalf("handshake: %v / %v, split %v/%v", dr.err, lr.err, dr.s != nil && dr.s.SplitMAC, lr.s != nil && lr.s.SplitMAC)
	}
	kd, kl := frameKeys(secret, dr.s.Transcript)

	for _, dir := range []struct {
		name     string
		from, to *Conn
		key      [32]byte
	}{{"dialer to listener", a, b, kd}, {"listener to dialer", b, a, kl}} {
		// Payloads of 16 + n bytes: below the threshold, at it, a 1 MiB write.
		for ctr, n := range []int{splitMACMin - WriteHeadSize - 1, splitMACMin - WriteHeadSize, MaxData} {
			data := bytes.Repeat([]byte{byte(ctr), 0x5A, 0xC3}, n/3+1)[:n]
			sent := make(chan error, 1)
			go func() {
				sent <- dir.from.Send(0, TypeWrite, 0, uint64(ctr), (&Write{Len: uint64(n)}).AppendHead(nil), data)
			}()
			frame, tag := readRaw(t, dir.to.NetConn(), MACSize)
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			want, how := gcmTag(t, dir.key, uint64(ctr), frame), "whole"
			if len(frame)-HeaderSize >= splitMACMin {
				want, how = splitTagDoc(t, dir.key, uint64(ctr), frame), "split"
			}
			if !bytes.Equal(tag, want) {
				t.Fatalf("%s, frame %d (%d payload bytes): tag %x, want the %s tag %x", dir.name, ctr, len(frame)-HeaderSize, tag, how, want)
			}
		}
	}
}

// splitPair is macPair with both ends in split mode, writing raw (no
// codec) unless codec says otherwise.
func splitPair(t *testing.T, codec Codec) (*Writer, *Reader, *bytes.Buffer) {
	t.Helper()
	w, r, buf := macPairCodec(t, [32]byte{7, 7}, rekeyInterval, codec)
	w.mac.split, r.mac.split = true, true
	return w, r, buf
}

// Every layout of a split frame's payload reads back intact: a Write's
// head and data (the data sent from where it lies, never put together),
// data that is not a multiple of 512 bytes and a head longer than 512
// (put together first), a compressed payload (one slice), and frames on
// either side of the threshold, with small frames between them.
func TestSplitMACLayouts(t *testing.T) {
	for _, codec := range []Codec{CodecNone, CodecZstd} {
		w, r, buf := splitPair(t, codec)
		type frame struct{ head, data []byte }
		var sent []frame
		add := func(headLen, n int, compressible bool) {
			head := bytes.Repeat([]byte{0xAB}, headLen)
			data := make([]byte, n)
			for j := range data {
				if compressible {
					data[j] = byte(j / 4096)
				} else {
					data[j] = byte(j*7919 + j>>3*31 + len(sent))
				}
			}
			sent = append(sent, frame{head, data})
		}
		add(WriteHeadSize, MaxData, false)
		add(0, 0, false)
		add(WriteHeadSize, splitMACMin-WriteHeadSize, false)
		add(WriteHeadSize, splitMACMin-WriteHeadSize-1, false)
		add(WriteHeadSize, 300<<10+7, false) // split point inside the data
		add(600, 128<<10, false)             // inside a head longer than 512
		add(WriteHeadSize, 4096, false)
		add(WriteHeadSize, MaxData, true) // compressed, when a codec is on
		add(0, 200<<10, false)            // data only
		for i, f := range sent {
			if err := w.WriteFrame(TypeWrite, 0, uint64(i), f.head, f.data); err != nil {
				t.Fatalf("%s: frame %d: %v", codec, i, err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if int64(buf.Len()) != w.BytesWritten() {
			t.Fatalf("%s: %d bytes on the wire, the Writer counted %d", codec, buf.Len(), w.BytesWritten())
		}
		for i, f := range sent {
			got, err := r.ReadFrame()
			if err != nil {
				t.Fatalf("%s: frame %d (%d+%d bytes): %v", codec, i, len(f.head), len(f.data), err)
			}
			if want := append(bytes.Clone(f.head), f.data...); got.Seq != uint64(i) || !bytes.Equal(got.Payload, want) {
				t.Fatalf("%s: frame %d came back different", codec, i)
			}
		}
	}
	// Plain 1 MiB Writes are never put together: the Writer's scratch
	// stays empty.
	w, r, _ := splitPair(t, CodecNone)
	data := make([]byte, MaxData)
	for i := range 4 {
		data[0] = byte(i)
		if err := w.WriteFrame(TypeWrite, 0, uint64(i), (&Write{Len: MaxData}).AppendHead(nil), data); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if f, err := r.ReadFrame(); err != nil || f.Payload[WriteHeadSize] != byte(i) {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	if cap(w.scratch) != 0 {
		t.Fatalf("the Writer put a plain 1 MiB Write together (%d bytes of scratch)", cap(w.scratch))
	}
}

// A split frame altered in any part fails authentication: its header, the
// payload before the split point, the data (first, middle and last byte),
// or the tag; and a Reader not in split mode refuses a split frame, as a
// split Reader refuses a whole-tagged one.
func TestSplitMACDetectsAlteration(t *testing.T) {
	w, _, buf := splitPair(t, CodecNone)
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5}, (256<<10)/5+1)
	data = data[:256<<10]
	if err := w.WriteFrame(TypeWrite, 0, 9, (&Write{Off: 4096, Len: uint64(len(data))}).AppendHead(nil), data); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	stream := bytes.Clone(buf.Bytes())
	n := len(stream)
	key := [32]byte{7, 7}
	read := func(s []byte, split bool) error {
		r := NewReader(bytes.NewReader(s))
		r.mac = mustFrameMAC(t, &key)
		r.mac.split = split
		_, err := r.ReadFrame()
		return err
	}
	if err := read(stream, true); err != nil {
		t.Fatalf("the frame as sent: %v", err)
	}
	for _, at := range []struct {
		what string
		off  int
	}{
		{"header (seq)", 16}, {"header (flags)", 6}, {"head (offset)", HeaderSize + 1},
		{"data, first byte", HeaderSize + WriteHeadSize}, {"data, middle", HeaderSize + WriteHeadSize + 100000},
		{"data, last byte", n - MACSize - 1}, {"tag, first byte", n - MACSize}, {"tag, last byte", n - 1},
	} {
		bad := bytes.Clone(stream)
		bad[at.off] ^= 0x01
		if err := read(bad, true); !errors.Is(err, ErrFrameAuth) {
			t.Errorf("%s altered: %v, want ErrFrameAuth", at.what, err)
		}
	}
	if err := read(stream, false); !errors.Is(err, ErrFrameAuth) {
		t.Errorf("a split frame read as a whole-tagged one: %v, want ErrFrameAuth", err)
	}
	var whole bytes.Buffer
	ww, _ := NewWriter(&whole, CodecNone, 0)
	ww.mac = mustFrameMAC(t, &key)
	ww.WriteFrame(TypeWrite, 0, 9, (&Write{Off: 4096, Len: uint64(len(data))}).AppendHead(nil), data)
	ww.Flush()
	if err := read(whole.Bytes(), true); !errors.Is(err, ErrFrameAuth) {
		t.Errorf("a whole-tagged frame read as a split one: %v, want ErrFrameAuth", err)
	}
}

// Split tags are used only when both sides announce FeatureSplitMAC and
// frames are authenticated; a peer without it (an older build) gets
// whole-frame tags both ways, and 1 MiB frames flow either way.
func TestSplitMACNegotiated(t *testing.T) {
	for _, c := range []struct {
		secret           string
		dialer, listener bool // announce FeatureSplitMAC
		want             bool
	}{
		{"s3cret", true, true, true},
		{"s3cret", true, false, false},
		{"s3cret", false, true, false},
		{"", true, true, false},
	} {
		t.Run(fmt.Sprintf("secret=%q/dialer=%v/listener=%v", c.secret, c.dialer, c.listener), func(t *testing.T) {
			hd, hl := validHello(1, "alpha"), validHello(2, "beta")
			if !c.dialer {
				hd.Features &^= FeatureSplitMAC
			}
			if !c.listener {
				hl.Features &^= FeatureSplitMAC
			}
			a, b := pipePair(t)
			dr, lr := handshakePair(a, b, hd, hl, []byte(c.secret), []byte(c.secret), 2)
			if dr.err != nil || lr.err != nil {
				t.Fatalf("handshake: %v / %v", dr.err, lr.err)
			}
			if dr.s.SplitMAC != c.want || lr.s.SplitMAC != c.want {
				t.Fatalf("SplitMAC %v/%v, want %v", dr.s.SplitMAC, lr.s.SplitMAC, c.want)
			}
			data := make([]byte, MaxData)
			for i, dir := range [][2]*Conn{{a, b}, {b, a}} {
				data[0] = byte(i + 1)
				sent := make(chan error, 1)
				go func() { sent <- dir[0].Send(0, TypeWrite, 0, uint64(i), (&Write{Len: MaxData}).AppendHead(nil), data) }()
				if f, err := dir[1].ReadFrame(0); err != nil || f.Payload[WriteHeadSize] != byte(i+1) {
					t.Fatalf("direction %d: %v", i, err)
				}
				if err := <-sent; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
