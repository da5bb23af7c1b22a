package protocol

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// encoder compresses one payload into dst (appending from dst[:0]).
type encoder interface {
	codec() Codec
	encode(dst, src []byte) []byte
}

func newEncoder(c Codec, level int) (encoder, error) {
	switch c {
	case CodecNone:
		return nil, nil
	case CodecS2:
		return s2Encoder{level: level}, nil
	case CodecZstd:
		e, err := zstdEncoder(level)
		if err != nil {
			return nil, err
		}
		return zstdEnc{e}, nil
	}
	return nil, fmt.Errorf("unknown codec %d", c)
}

// s2Encoder: level 0 or 1 is the fast mode, 2 "better", 3 and up "best".
type s2Encoder struct{ level int }

func (s2Encoder) codec() Codec { return CodecS2 }

func (e s2Encoder) encode(dst, src []byte) []byte {
	switch {
	case e.level >= 3:
		return s2.EncodeBest(dst[:cap(dst)], src)
	case e.level == 2:
		return s2.EncodeBetter(dst[:cap(dst)], src)
	}
	return s2.Encode(dst[:cap(dst)], src)
}

type zstdEnc struct{ e *zstd.Encoder }

func (zstdEnc) codec() Codec { return CodecZstd }

func (z zstdEnc) encode(dst, src []byte) []byte { return z.e.EncodeAll(src, dst[:0]) }

// zstd encoders and the decoder are safe for concurrent use (EncodeAll,
// DecodeAll) and keep their own state pools, so one per level is shared by
// every connection.
var (
	zstdMu   sync.Mutex
	zstdEncs = map[int]*zstd.Encoder{}
	zstdDec  *zstd.Decoder
)

func zstdEncoder(level int) (*zstd.Encoder, error) {
	zstdMu.Lock()
	defer zstdMu.Unlock()
	if e := zstdEncs[level]; e != nil {
		return e, nil
	}
	l := zstd.SpeedFastest
	if level > 0 {
		l = zstd.EncoderLevelFromZstd(level)
	}
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderConcurrency(4),
		zstd.WithWindowSize(1<<20), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder level %d: %w", level, err)
	}
	zstdEncs[level] = e
	return e, nil
}

func zstdDecoder() (*zstd.Decoder, error) {
	zstdMu.Lock()
	defer zstdMu.Unlock()
	if zstdDec != nil {
		return zstdDec, nil
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(4), zstd.WithDecoderMaxMemory(MaxPayload),
		zstd.WithDecoderMaxWindow(8<<20))
	if err != nil {
		return nil, err
	}
	zstdDec = d
	return d, nil
}

type decoders struct{}

// decode decodes src of codec c into dst (from dst[:0]); the result must be
// exactly rawLen bytes.
func (decoders) decode(c Codec, dst, src []byte, rawLen int) ([]byte, error) {
	var out []byte
	switch c {
	case CodecS2:
		n, err := s2.DecodedLen(src)
		if err != nil {
			return nil, err
		}
		if n != rawLen {
			return nil, fmt.Errorf("s2 payload decodes to %d bytes, header says %d", n, rawLen)
		}
		if cap(dst) < n {
			dst = make([]byte, n)
		}
		out, err = s2.Decode(dst[:n], src)
		if err != nil {
			return nil, err
		}
	case CodecZstd:
		d, err := zstdDecoder()
		if err != nil {
			return nil, err
		}
		if cap(dst) < rawLen {
			dst = make([]byte, 0, rawLen)
		}
		out, err = d.DecodeAll(src, dst[:0])
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown codec %d", c)
	}
	if len(out) != rawLen {
		return nil, fmt.Errorf("%s payload decodes to %d bytes, header says %d", c, len(out), rawLen)
	}
	return out, nil
}

// compressible is a quick look at whether data may shrink: it samples 256
// bytes and sums the squares of their byte counts. Bytes of random or
// already compressed data are spread evenly (the sum stays near its
// expectation for uniform bytes, 511, standard deviation about 53); text,
// zeros and repeated structures concentrate on fewer values (base64 text
// about 1280, English text well above). Incompressible payloads then cost
// the encoder nothing (zstd spends microseconds per 4 KiB finding no
// match). Short payloads are always tried.
//
// The stride between samples is odd, so the samples fall on every offset
// within a word: generators that fill a buffer word by word (fio's, for
// one) leave a pattern at a fixed offset in every word that an even stride
// would mistake for structure.
func compressible(data []byte) bool {
	const samples = 256
	if len(data) < 4*samples {
		return true
	}
	var h0, h1 [256]uint8
	stride := len(data) / samples
	if stride%2 == 0 {
		stride--
	}
	for k := range samples / 2 {
		i := 2 * k * stride
		h0[data[i]]++
		h1[data[i+stride]]++
	}
	sq := 0
	for i := range h0 {
		c := int(h0[i]) + int(h1[i])
		sq += c * c
	}
	return sq > 700
}
