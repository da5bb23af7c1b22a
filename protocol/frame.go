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
	Magic      uint32 = 0x01445052 // "RPD\x01" as bytes
	Version    uint8  = 2
	HeaderSize        = 24
	// TrailerSize is the xxhash64 trailer of frames during the handshake,
	// and after it on TLS links or without a secret.
	TrailerSize = 8
	// MACSize is the AES-256-GCM tag that ends frames after a handshake
	// with a shared secret on a link without TLS (mac.go).
	MACSize = 16
	// MaxData is the most application data one Write frame carries.
	MaxData = 1 << 20
	// MaxPayload bounds a frame's payload, encoded or decoded.
	MaxPayload = MaxData + 4096
)

// Buffer sizes: small until the peer proved the secret, so an
// unauthenticated connection holds little memory.
const (
	preAuthBuf  = 2 << 10
	postAuthBuf = 256 << 10
)

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

// ErrFrameAuth is wrapped (with ErrCorrupt) by the error about a frame
// whose MAC does not verify on an authenticated connection: it was
// altered, injected, replayed, reordered, or one before it was dropped.
var ErrFrameAuth = errors.New("frame authentication failed")

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

// check validates a header before its payload is read, by the rules of
// typeTable: before the handshake (open false) only handshake types,
// uncompressed, of at most MaxPreAuthPayload bytes; after it every other
// type, at most its limit.
func (h *Header) check(open bool) error {
	if h.Magic != Magic {
		return fmt.Errorf("%w: bad magic %#08x", ErrCorrupt, h.Magic)
	}
	ti := h.Type.info()
	if h.Version != Version {
		// Before the handshake a Refuse of any version is read, so a peer
		// of another version can say why it turns us away; other frames
		// of another version name the version. After the handshake the
		// version is settled: another is corruption.
		if open {
			return fmt.Errorf("%w: %s frame of version %d on a version %d connection", ErrCorrupt, h.Type, h.Version, Version)
		}
		if h.Type != TypeRefuse {
			return &VersionError{Got: h.Version}
		}
	}
	if ti == nil {
		return fmt.Errorf("%w: unknown type %d", ErrCorrupt, uint8(h.Type))
	}
	limit := ti.limit
	if open {
		if ti.when&postAuth == 0 {
			return fmt.Errorf("%w: %s frame after the handshake", ErrCorrupt, h.Type)
		}
	} else {
		if ti.when&preAuth == 0 {
			return fmt.Errorf("%w: %s frame before the handshake completed", ErrCorrupt, h.Type)
		}
		if h.Codec != CodecNone {
			return fmt.Errorf("%w: %s frame compressed (%s) before the handshake completed", ErrCorrupt, h.Type, h.Codec)
		}
		limit = min(limit, MaxPreAuthPayload)
	}
	if h.Codec > codecMax {
		return fmt.Errorf("%w: unknown codec %d", ErrCorrupt, uint8(h.Codec))
	}
	if h.PayloadLen > limit || h.RawLen > limit {
		return fmt.Errorf("%w: %s payload of %d bytes (%d decoded) exceeds %d", ErrCorrupt, h.Type, h.PayloadLen, h.RawLen, limit)
	}
	if h.Codec == CodecNone && h.PayloadLen != h.RawLen {
		return fmt.Errorf("%w: raw payload length %d != %d", ErrCorrupt, h.PayloadLen, h.RawLen)
	}
	return nil
}

// Writer encodes frames into a buffered writer. It is not safe for
// concurrent use: one goroutine owns a connection's Writer. Frames are only
// sent by Flush, or when the buffer fills, or, for an authenticated frame
// larger than the buffer, whole by WriteFrame (Conn.Flush's deadline
// covers these writes too).
type Writer struct {
	dst     io.Writer
	bw      *bufio.Writer
	open    bool      // past the handshake: every post-handshake type, compression
	mac     *frameMAC // AES-256-GCM tags; nil: xxhash64
	enc     encoder
	minComp int
	hdr     [HeaderSize]byte
	sum     [TrailerSize]byte
	// scratch is the joined payload to compress, or a frame to
	// authenticate that does not fit bw's buffer (see emitSealed); at
	// most HeaderSize+MaxPayload+MACSize bytes.
	scratch []byte
	pre     []byte // a split frame's payload before its split point (emitSplit)
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

// NewWriter returns a Writer on w for the frames after a handshake (xxhash64
// trailers), encoding payloads with codec at level (codec-specific; 0 is
// the codec's default). Payloads shorter than 128 bytes, payloads whose
// sampled bytes look random (compressible), and payloads that do not
// shrink, are sent raw. A Conn's Writer starts in the handshake state
// instead (NewConn).
func NewWriter(w io.Writer, codec Codec, level int) (*Writer, error) {
	enc, err := newEncoder(codec, level)
	if err != nil {
		return nil, err
	}
	return &Writer{dst: w, bw: bufio.NewWriterSize(w, postAuthBuf), open: true, enc: enc, minComp: 128, digest: xxhash.New()}, nil
}

// newHandshakeWriter returns a Writer for the handshake: a small buffer,
// handshake frame types only, no compression.
func newHandshakeWriter(w io.Writer) *Writer {
	return &Writer{dst: w, bw: bufio.NewWriterSize(w, preAuthBuf), minComp: 128, digest: xxhash.New()}
}

// openWith ends the handshake state: a big buffer, every post-handshake
// type, and MAC trailers if mac is not nil. Nothing may be buffered.
func (w *Writer) openWith(mac *frameMAC) error {
	if w.bw.Buffered() != 0 {
		return fmt.Errorf("open writer: %d handshake bytes not flushed", w.bw.Buffered())
	}
	w.bw = bufio.NewWriterSize(w.dst, postAuthBuf)
	w.open, w.mac = true, mac
	return nil
}

// BytesWritten is the number of bytes of frames written so far.
func (w *Writer) BytesWritten() int64 { return w.n }

// WriteFrame writes a frame whose payload is head ‖ data (either may be
// empty). The slices are not retained. A type that may not travel now
// (handshake types after the handshake, others before it) or a payload
// above the type's limit is refused.
func (w *Writer) WriteFrame(t Type, f Flags, seq uint64, head, data []byte) error {
	ti := t.info()
	switch {
	case ti == nil:
		return fmt.Errorf("unknown frame type %d", uint8(t))
	case w.open && ti.when&postAuth == 0:
		return fmt.Errorf("%s frame after the handshake", t)
	case !w.open && ti.when&preAuth == 0:
		return fmt.Errorf("%s frame before the handshake completed", t)
	}
	raw := len(head) + len(data)
	if raw > int(ti.limit) {
		return fmt.Errorf("%s frame payload %d bytes exceeds %d", t, raw, ti.limit)
	}
	h := Header{Magic: Magic, Version: Version, Type: t, Flags: f, Codec: CodecNone, PayloadLen: uint32(raw), RawLen: uint32(raw), Seq: seq}
	if w.open && w.enc != nil && raw >= w.minComp && (len(data) == 0 || compressible(data)) {
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

// emit writes the frame of header h and payload a ‖ b (neither may be
// w.scratch).
func (w *Writer) emit(h *Header, a, b []byte) error {
	putHeader(w.hdr[:], h)
	if w.mac != nil {
		return w.emitSealed(a, b)
	}
	d := w.digest
	d.Reset()
	d.Write(w.hdr[:])
	d.Write(a)
	d.Write(b)
	binary.LittleEndian.PutUint64(w.sum[:], d.Sum64())
	w.bw.Write(w.hdr[:])
	w.bw.Write(a)
	w.bw.Write(b)
	_, err := w.bw.Write(w.sum[:])
	w.n += int64(HeaderSize + len(a) + len(b) + TrailerSize)
	return err
}

// emitSealed writes w.hdr ‖ a ‖ b and its MAC. GCM takes the bytes it
// authenticates as one slice, so the frame is put together first: in the
// free part of bw's buffer, where bufio would have copied it anyway
// (flushing what is buffered if the frame fits only an empty buffer), or,
// for a frame larger than the buffer, in w.scratch — unless the frame has
// a two-part tag (emitSplit), which needs no such copy.
func (w *Writer) emitSealed(a, b []byte) error {
	if w.mac.splits(len(a) + len(b)) {
		return w.emitSplit(a, b)
	}
	n := HeaderSize + len(a) + len(b) + MACSize
	var frame []byte
	switch {
	case n <= w.bw.Available():
		frame = w.bw.AvailableBuffer()
	case n <= w.bw.Size():
		if err := w.bw.Flush(); err != nil {
			return err
		}
		frame = w.bw.AvailableBuffer()
	default:
		frame = w.scratch[:0]
	}
	frame = append(append(append(frame, w.hdr[:]...), a...), b...)
	frame, err := w.mac.seal(frame)
	if err != nil {
		return fmt.Errorf("%s frame seq %d: %w", Type(w.hdr[5]), binary.LittleEndian.Uint64(w.hdr[16:]), err)
	}
	if n > w.bw.Size() {
		w.scratch = frame[:0]
	}
	_, err = w.bw.Write(frame)
	w.n += int64(n)
	return err
}

// emitSplit writes w.hdr ‖ a ‖ b and its two-part tag (frameMAC.sealSplit):
// the data goes from where it lies to the socket, not copied. Only a
// payload whose split point falls inside a while b is not empty is put
// together in w.scratch first (a dedup head longer than splitAlign; a
// Write's head is 16 bytes and NBD data comes in multiples of 512).
func (w *Writer) emitSplit(a, b []byte) error {
	plen := len(a) + len(b)
	s := splitPoint(plen)
	var pre, inner []byte
	switch {
	case len(b) == 0:
		pre, inner = a[:s], a[s:]
	case s >= len(a):
		k := s - len(a)
		w.pre = append(append(w.pre[:0], a...), b[:k]...)
		pre, inner = w.pre, b[k:]
	default:
		w.scratch = append(append(w.scratch[:0], a...), b...)
		a, b = w.scratch, nil
		pre, inner = a[:s], a[s:]
	}
	tag, err := w.mac.sealSplit(w.hdr[:], pre, inner)
	if err != nil {
		return fmt.Errorf("%s frame seq %d: %w", Type(w.hdr[5]), binary.LittleEndian.Uint64(w.hdr[16:]), err)
	}
	w.bw.Write(w.hdr[:])
	w.writeLarge(a)
	w.writeLarge(b)
	_, err = w.bw.Write(tag)
	w.n += int64(HeaderSize + plen + MACSize)
	return err
}

// writeLarge writes p through bw, straight to the socket when it does not
// fit the buffer: what is buffered goes first (bufio would otherwise copy
// a buffer's worth of p to fill it).
func (w *Writer) writeLarge(p []byte) {
	if len(p) > w.bw.Available() && w.bw.Buffered() > 0 {
		w.bw.Flush() // an error stays in bw and is returned by its next Write
	}
	w.bw.Write(p)
}

// Flush sends buffered frames.
func (w *Writer) Flush() error { return w.bw.Flush() }

// Buffered is the number of bytes waiting for Flush.
func (w *Writer) Buffered() int { return w.bw.Buffered() }

// Reader decodes frames from a buffered reader. It is not safe for
// concurrent use.
type Reader struct {
	src     io.Reader
	br      *bufio.Reader
	open    bool      // past the handshake: every post-handshake type, full sizes, codecs
	mac     *frameMAC // AES-256-GCM tags; nil: xxhash64
	err     error     // a frame failed authentication: the stream is over
	dec     decoders
	hdr     [HeaderSize]byte
	buf     []byte // the frame: header, encoded payload, trailer
	raw     []byte // decoded payload
	n       int64
	lastHdr Header
}

// NewReader returns a Reader on r for the frames after a handshake, with
// xxhash64 trailers. A Conn's Reader starts in the handshake state instead
// (NewConn).
func NewReader(r io.Reader) *Reader {
	return &Reader{src: r, br: bufio.NewReaderSize(r, postAuthBuf), open: true}
}

// newHandshakeReader returns a Reader for the handshake: a small buffer,
// handshake frame types only, uncompressed, at most MaxPreAuthPayload
// bytes each.
func newHandshakeReader(r io.Reader) *Reader {
	return &Reader{src: r, br: bufio.NewReaderSize(r, preAuthBuf)}
}

// openWith ends the handshake state: a big buffer (keeping what the small
// one holds already), every post-handshake type, and MAC trailers if mac
// is not nil.
func (r *Reader) openWith(mac *frameMAC) {
	src := r.src
	if r.br.Buffered() > 0 {
		src = &drainReader{br: r.br, r: r.src}
	}
	r.br = bufio.NewReaderSize(src, postAuthBuf)
	r.buf = nil
	r.open, r.mac = true, mac
}

// drainReader reads what br holds, then from r.
type drainReader struct {
	br *bufio.Reader
	r  io.Reader
}

func (d *drainReader) Read(p []byte) (int, error) {
	if d.br != nil {
		if d.br.Buffered() > 0 {
			return d.br.Read(p)
		}
		d.br = nil
	}
	return d.r.Read(p)
}

// BytesRead is the number of bytes of frames read so far.
func (r *Reader) BytesRead() int64 { return r.n }

// LastHeader is the header of the last frame read (or rejected).
func (r *Reader) LastHeader() Header { return r.lastHdr }

// ReadFrame reads and checks the next frame. The returned payload is valid
// until the next call. Errors other than io errors wrap ErrCorrupt or are a
// *VersionError. After a frame failed authentication (ErrFrameAuth) every
// call returns that error.
func (r *Reader) ReadFrame() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		return Frame{}, err
	}
	h := parseHeader(r.hdr[:])
	r.lastHdr = h
	if err := h.check(r.open); err != nil {
		return Frame{}, err
	}
	tl := TrailerSize
	if r.mac != nil {
		tl = MACSize
	}
	// The whole frame goes into buf: GCM takes the bytes it
	// authenticates as one slice.
	n := HeaderSize + int(h.PayloadLen) + tl
	if cap(r.buf) < n {
		c := max(n, 4096)
		if !r.open {
			c = HeaderSize + MaxPreAuthPayload + TrailerSize
		}
		r.buf = make([]byte, n, c)
	}
	buf := r.buf[:n]
	copy(buf, r.hdr[:])
	if _, err := io.ReadFull(r.br, buf[HeaderSize:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	r.n += int64(n)
	frame := buf[:n-tl]
	payload := frame[HeaderSize:]
	if r.mac != nil {
		ctr := r.mac.ctr
		var err error
		if r.mac.splits(len(payload)) {
			s := splitPoint(len(payload))
			err = r.mac.openSplit(frame[:HeaderSize], payload[:s], payload[s:], buf[len(frame):])
		} else {
			err = r.mac.open(frame, buf[len(frame):])
		}
		if err != nil {
			if errors.Is(err, errFramesExhausted) {
				r.err = fmt.Errorf("%w: %w: %s frame seq %d: %v", ErrCorrupt, ErrFrameAuth, h.Type, h.Seq, err)
			} else {
				r.err = fmt.Errorf("%w: %w: %s frame seq %d is not frame %d from the authenticated peer (altered, injected, replayed, reordered, or one was dropped)",
					ErrCorrupt, ErrFrameAuth, h.Type, h.Seq, ctr)
			}
			return Frame{}, r.err
		}
	} else if got, want := xxhash.Sum64(frame), binary.LittleEndian.Uint64(buf[len(frame):]); got != want {
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
