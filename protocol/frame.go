package protocol

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
)

// Frame geometry. Part of the wire format: do not change without a new
// Version.
const (
	Magic       uint32 = 0x01445052 // "RPD\x01" as bytes
	Version     uint8  = 1
	HeaderSize         = 24
	TrailerSize        = 8
	// MaxData is the most application data one Write frame carries.
	MaxData = 1 << 20
	// MaxPayload bounds a frame's payload, encoded or decoded.
	MaxPayload = MaxData + 4096
)

// Type is a frame's message type. Part of the wire format.
type Type uint8

// Message types. Part of the wire format: values never change meaning.
const (
	TypeHello      Type = 1  // Hello
	TypeAuth       Type = 2  // Auth
	TypeRefuse     Type = 3  // UTF-8 reason; readable at any version
	TypeState      Type = 4  // State
	TypeWrite      Type = 5  // Write; seq = sequence number
	TypeAck        Type = 6  // seq = every write up to seq applied (cumulative)
	TypeBarrier    Type = 7  // seq = barrier number (in the write sequence)
	TypeBarrierAck Type = 8  // seq = barrier durable, and all before it
	TypePing       Type = 9  // seq = token
	TypePong       Type = 10 // seq = token of the ping answered
	TypeBitmap     Type = 11 // Bitmap extents; FlagLast on the final one
	TypeResyncReq  Type = 12 // Range: target asks for blocks (reserved for checksum resync)
	TypeResyncDone Type = 13 // ResyncDone; seq = last barrier of the resync
	// 14: TypeDataReq (dedup.go); 15 reserved. 16..19: checksum resync and
	// online verify (sync.go). 20..23: promotion and peer sequence numbers
	// (cluster.go).
	typeMax = TypeLeaseAck
)

var typeNames = [...]string{
	TypeHello: "Hello", TypeAuth: "Auth", TypeRefuse: "Refuse", TypeState: "State",
	TypeWrite: "Write", TypeAck: "Ack", TypeBarrier: "Barrier", TypeBarrierAck: "BarrierAck",
	TypePing: "Ping", TypePong: "Pong", TypeBitmap: "Bitmap", TypeResyncReq: "ResyncReq",
	TypeResyncDone: "ResyncDone", TypeCsums: "Csums", TypeCsumsDone: "CsumsDone",
	TypeVerify: "Verify", TypeVerifyReply: "VerifyReply", TypeDataReq: "DataReq",
	TypePromoteReq: "PromoteReq", TypePromoteReply: "PromoteReply", TypePromoteEnd: "PromoteEnd",
	TypePeerSeqs: "PeerSeqs", TypeLease: "Lease", TypeLeaseAck: "LeaseAck",
}

func (t Type) String() string {
	if t >= 1 && t <= typeMax && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Flags qualify a frame; their meaning depends on the type. Part of the wire
// format.
type Flags uint8

// Flags of Write frames.
const (
	FlagFUA    Flags = 1 << 0 // durable before ack
	FlagTrim   Flags = 1 << 1 // discard Len bytes at Off; no data
	FlagZeroes Flags = 1 << 2 // zero Len bytes at Off; no data
	FlagNoHole Flags = 1 << 3 // with FlagZeroes: keep the range allocated
	FlagResync Flags = 1 << 4 // resync data, not an application write
	FlagDedup  Flags = 1 << 5 // payload is a DedupWrite (zero and reference blocks; dedup.go)
	FlagResend Flags = 1 << 6 // the full data of a write the receiver asked for with DataReq
)

// FlagLast marks the last Bitmap frame of an exchange.
const FlagLast Flags = 1 << 7

// Codec is how a payload is encoded. Part of the wire format.
type Codec uint8

// Codecs.
const (
	CodecNone Codec = 0
	CodecS2   Codec = 1
	CodecZstd Codec = 2
	codecMax        = CodecZstd
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("Codec(%d)", uint8(c))
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseCodec's names.
func (c *Codec) UnmarshalText(b []byte) error {
	x, err := ParseCodec(string(b))
	if err != nil {
		return err
	}
	*c = x
	return nil
}

// ParseCodec maps a configuration name ("", "none", "s2", "zstd") to a Codec.
func ParseCodec(name string) (Codec, error) {
	switch name {
	case "", "none":
		return CodecNone, nil
	case "s2":
		return CodecS2, nil
	case "zstd":
		return CodecZstd, nil
	}
	return 0, fmt.Errorf("unknown compression %q: use none, s2 or zstd", name)
}

// ErrCorrupt is wrapped by every error about a malformed frame.
var ErrCorrupt = errors.New("corrupt frame")

// VersionError is a frame of another protocol version.
type VersionError struct{ Got uint8 }

func (e *VersionError) Error() string {
	return fmt.Sprintf("peer speaks protocol version %d, this node speaks version %d", e.Got, Version)
}

// Frame is one decoded frame. Payload is owned by the Reader and valid until
// the next ReadFrame.
type Frame struct {
	Type    Type
	Flags   Flags
	Seq     uint64
	Payload []byte
}

// Header is the fixed part of a frame as read from the wire.
type Header struct {
	Magic      uint32
	Version    uint8
	Type       Type
	Flags      Flags
	Codec      Codec
	PayloadLen uint32
	RawLen     uint32
	Seq        uint64
}

func putHeader(b []byte, h *Header) {
	binary.LittleEndian.PutUint32(b[0:], h.Magic)
	b[4] = h.Version
	b[5] = byte(h.Type)
	b[6] = byte(h.Flags)
	b[7] = byte(h.Codec)
	binary.LittleEndian.PutUint32(b[8:], h.PayloadLen)
	binary.LittleEndian.PutUint32(b[12:], h.RawLen)
	binary.LittleEndian.PutUint64(b[16:], h.Seq)
}

func parseHeader(b []byte) Header {
	return Header{
		Magic:      binary.LittleEndian.Uint32(b[0:]),
		Version:    b[4],
		Type:       Type(b[5]),
		Flags:      Flags(b[6]),
		Codec:      Codec(b[7]),
		PayloadLen: binary.LittleEndian.Uint32(b[8:]),
		RawLen:     binary.LittleEndian.Uint32(b[12:]),
		Seq:        binary.LittleEndian.Uint64(b[16:]),
	}
}

// check validates a header before its payload is read.
func (h *Header) check() error {
	if h.Magic != Magic {
		return fmt.Errorf("%w: bad magic %#08x", ErrCorrupt, h.Magic)
	}
	if h.Type == 0 || h.Type > typeMax || typeNames[h.Type] == "" {
		if h.Version != Version {
			return &VersionError{Got: h.Version}
		}
		return fmt.Errorf("%w: unknown type %d", ErrCorrupt, uint8(h.Type))
	}
	if h.Version != Version && h.Type != TypeRefuse {
		return &VersionError{Got: h.Version}
	}
	if h.Codec > codecMax {
		return fmt.Errorf("%w: unknown codec %d", ErrCorrupt, uint8(h.Codec))
	}
	if h.PayloadLen > MaxPayload || h.RawLen > MaxPayload {
		return fmt.Errorf("%w: %s payload of %d bytes (%d decoded) exceeds %d", ErrCorrupt, h.Type, h.PayloadLen, h.RawLen, MaxPayload)
	}
	if h.Codec == CodecNone && h.PayloadLen != h.RawLen {
		return fmt.Errorf("%w: raw payload length %d != %d", ErrCorrupt, h.PayloadLen, h.RawLen)
	}
	return nil
}

// Writer encodes frames into a buffered writer. It is not safe for
// concurrent use: one goroutine owns a connection's Writer. Frames are only
// sent by Flush (or when the buffer fills).
type Writer struct {
	bw      *bufio.Writer
	enc     encoder
	minComp int
	hdr     [HeaderSize]byte
	scratch []byte // joined payload to compress
	out     []byte // compressed payload
	digest  *xxhash.Digest
	n       int64 // bytes written, for statistics
	// Backoff after frames that did not shrink: fails in a row, and how
	// many frames to send raw before trying again (see WriteFrame).
	fails, skip int
	tries       int // encoder calls, for tests
}

// maxSkip bounds the backoff: after a run of frames that did not shrink,
// at most one frame in maxSkip+1 is tried, so incompressible data costs the
// encoder at most that share of its work, and data that turns
// compressible is compressed again within maxSkip frames.
const maxSkip = 63

// NewWriter returns a Writer on w encoding payloads with codec at level
// (codec-specific; 0 is the codec's default). Payloads shorter than 128
// bytes, payloads whose sampled bytes look random (compressible), and
// payloads that do not shrink, are sent raw.
func NewWriter(w io.Writer, codec Codec, level int) (*Writer, error) {
	enc, err := newEncoder(codec, level)
	if err != nil {
		return nil, err
	}
	return &Writer{bw: bufio.NewWriterSize(w, 256<<10), enc: enc, minComp: 128, digest: xxhash.New()}, nil
}

// BytesWritten is the number of bytes of frames written so far.
func (w *Writer) BytesWritten() int64 { return w.n }

// WriteFrame writes a frame whose payload is head ‖ data (either may be
// empty). The slices are not retained.
func (w *Writer) WriteFrame(t Type, f Flags, seq uint64, head, data []byte) error {
	raw := len(head) + len(data)
	if raw > MaxPayload {
		return fmt.Errorf("%s frame payload %d bytes exceeds %d", t, raw, MaxPayload)
	}
	h := Header{Magic: Magic, Version: Version, Type: t, Flags: f, Codec: CodecNone, PayloadLen: uint32(raw), RawLen: uint32(raw), Seq: seq}
	if w.enc != nil && raw >= w.minComp && (len(data) == 0 || compressible(data)) {
		if w.skip > 0 {
			w.skip--
			return w.emit(&h, head, data)
		}
		src := head
		if len(data) > 0 {
			w.scratch = append(append(w.scratch[:0], head...), data...)
			src = w.scratch
		}
		w.tries++
		out := w.enc.encode(w.out[:0], src)
		w.out = out[:0]
		if len(out) < raw-raw/32 { // worth the decoding
			w.fails = 0
			h.Codec = w.enc.codec()
			h.PayloadLen = uint32(len(out))
			return w.emit(&h, out, nil)
		}
		// Did not shrink: skip the next 1, 3, 7, ... maxSkip frames
		// that look compressible, as long as tries keep failing.
		w.fails++
		w.skip = min(1<<min(w.fails, 6)-1, maxSkip)
	}
	return w.emit(&h, head, data)
}

func (w *Writer) emit(h *Header, a, b []byte) error {
	putHeader(w.hdr[:], h)
	d := w.digest
	d.Reset()
	d.Write(w.hdr[:])
	d.Write(a)
	d.Write(b)
	var tr [TrailerSize]byte
	binary.LittleEndian.PutUint64(tr[:], d.Sum64())
	w.bw.Write(w.hdr[:])
	w.bw.Write(a)
	w.bw.Write(b)
	_, err := w.bw.Write(tr[:])
	w.n += int64(HeaderSize + len(a) + len(b) + TrailerSize)
	return err
}

// Flush sends buffered frames.
func (w *Writer) Flush() error { return w.bw.Flush() }

// Buffered is the number of bytes waiting for Flush.
func (w *Writer) Buffered() int { return w.bw.Buffered() }

// Reader decodes frames from a buffered reader. It is not safe for
// concurrent use.
type Reader struct {
	br      *bufio.Reader
	dec     decoders
	hdr     [HeaderSize]byte
	buf     []byte // encoded payload + trailer
	raw     []byte // decoded payload
	digest  *xxhash.Digest
	n       int64
	lastHdr Header
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 256<<10), digest: xxhash.New()}
}

// BytesRead is the number of bytes of frames read so far.
func (r *Reader) BytesRead() int64 { return r.n }

// LastHeader is the header of the last frame read (or rejected).
func (r *Reader) LastHeader() Header { return r.lastHdr }

// ReadFrame reads and checks the next frame. The returned payload is valid
// until the next call. Errors other than io errors wrap ErrCorrupt or are a
// *VersionError.
func (r *Reader) ReadFrame() (Frame, error) {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		return Frame{}, err
	}
	h := parseHeader(r.hdr[:])
	r.lastHdr = h
	if err := h.check(); err != nil {
		return Frame{}, err
	}
	n := int(h.PayloadLen) + TrailerSize
	if cap(r.buf) < n {
		r.buf = make([]byte, n, max(n, 4096))
	}
	buf := r.buf[:n]
	if _, err := io.ReadFull(r.br, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	r.n += int64(HeaderSize + n)
	payload := buf[:h.PayloadLen]
	d := r.digest
	d.Reset()
	d.Write(r.hdr[:])
	d.Write(payload)
	if got, want := d.Sum64(), binary.LittleEndian.Uint64(buf[h.PayloadLen:]); got != want {
		return Frame{}, fmt.Errorf("%w: %s frame seq %d: checksum %#016x, trailer says %#016x", ErrCorrupt, h.Type, h.Seq, got, want)
	}
	if h.Codec != CodecNone {
		out, err := r.dec.decode(h.Codec, r.raw[:0], payload, int(h.RawLen))
		if err != nil {
			return Frame{}, fmt.Errorf("%w: %s frame seq %d: %v", ErrCorrupt, h.Type, h.Seq, err)
		}
		r.raw = out[:0]
		payload = out
	}
	return Frame{Type: h.Type, Flags: h.Flags, Seq: h.Seq, Payload: payload}, nil
}
