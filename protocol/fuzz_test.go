package protocol

import (
	"bytes"
	"testing"
)

// FuzzReadFrame feeds arbitrary bytes to the frame reader and the message
// decoders: nothing may panic, and a frame accepted must re-encode to one
// that decodes to the same message.
func FuzzReadFrame(f *testing.F) {
	f.Add(encodeFrame(f, CodecNone, TypePing, 1, nil))
	f.Add(encodeFrame(f, CodecS2, TypeWrite, 2, append((&Write{Off: 4096, Len: 512}).AppendHead(nil), make([]byte, 512)...)))
	f.Add(encodeFrame(f, CodecZstd, TypeBitmap, 0, AppendExtents(nil, []Extent{{1, 2}})))
	f.Add(encodeFrame(f, CodecNone, TypeHello, 0, (&Hello{Resource: "r0", Name: "a"}).Append(nil)))
	f.Add(encodeFrame(f, CodecNone, TypeState, 0, (&State{Current: 5}).Append(nil)))
	dw := DedupWrite{Off: 8192, Len: 3*DedupBlock + 100, Kinds: []BlockKind{BlockZero, BlockRef, BlockData, BlockData},
		Refs: []Ref{{Src: 4096, Hash: [32]byte{7}}}, Data: make([]byte, DedupBlock+100)}
	f.Add(encodeFrame(f, CodecZstd, TypeWrite, 3, append(dw.AppendHead(nil), dw.Data...)))
	f.Add(encodeFrame(f, CodecNone, TypePromoteReq, 7, nil))
	f.Add(encodeFrame(f, CodecNone, TypePromoteReply, 7, []byte("refused: peer alpha is becoming Primary")))
	f.Add(encodeFrame(f, CodecNone, TypePeerSeqs, 0, AppendPeerSeqs(nil, []PeerSeq{{2, 99}, {3, 12}})))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
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
			case TypePeerSeqs:
				if ps, err := DecodePeerSeqs(fr.Payload, nil); err == nil && !bytes.Equal(AppendPeerSeqs(nil, ps), fr.Payload) {
					t.Fatalf("re-encoded PeerSeqs differs")
				}
			}
		}
	})
}
