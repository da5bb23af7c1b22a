package protocol

import (
	"encoding/binary"
	"net"
	"strings"
	"time"
	"unicode/utf8"
)

// Conn is a peer connection: a frame Reader and Writer over a net.Conn. One
// goroutine reads and one writes. A new Conn is in the handshake state
// (small buffers, handshake frames only); Dial or Accept opens it.
type Conn struct {
	nc net.Conn
	R  *Reader
	W  *Writer

	// The deadlines last set, on the monotonic clock (since clockBase):
	// a deadline is moved only when an eighth of its timeout has passed,
	// not at every frame (each move is a timer update in the runtime).
	readSet, readFor   time.Duration
	writeSet, writeFor time.Duration
}

var clockBase = time.Now()

// refresh reports whether a deadline set at *set for *dur must move for a
// new one of timeout, and notes the new one.
func refresh(set, dur *time.Duration, timeout time.Duration) bool {
	now := time.Since(clockBase)
	if *dur == timeout && now-*set < timeout/8 {
		return false
	}
	*set, *dur = now, timeout
	return true
}

// NewConn wraps nc for a handshake (Dial or Accept). Until the handshake
// succeeded its Reader and Writer hold about 2 KiB each and pass only
// handshake frames of at most MaxPreAuthPayload bytes, uncompressed; the
// big buffers come with the handshake's success. Frames are written raw
// until SetCodec.
func NewConn(nc net.Conn) *Conn {
	return &Conn{nc: nc, R: newHandshakeReader(nc), W: newHandshakeWriter(nc)}
}

// NetConn is the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// SetDeadline sets the connection's read and write deadlines (as
// net.Conn.SetDeadline); ReadFrame and Flush set their own afresh.
func (c *Conn) SetDeadline(t time.Time) error {
	c.readFor, c.writeFor = 0, 0
	return c.nc.SetDeadline(t)
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// SetCodec chooses the codec for frames written from now on (after the
// handshake; frames before it are never compressed).
func (c *Conn) SetCodec(codec Codec, level int) error {
	enc, err := newEncoder(codec, level)
	if err != nil {
		return err
	}
	c.W.enc = enc
	return nil
}

// FrameBuffered reports whether a whole frame is buffered: the next
// ReadFrame returns without reading the connection. A receiver that must
// answer before it waits (an ack) answers when it is false.
func (r *Reader) FrameBuffered() bool {
	k := r.br.Buffered()
	if k < HeaderSize {
		return false
	}
	h, err := r.br.Peek(HeaderSize)
	if err != nil {
		return false
	}
	tl := TrailerSize
	if r.mac != nil {
		tl = MACSize
	}
	return int64(k) >= int64(HeaderSize)+int64(binary.LittleEndian.Uint32(h[8:]))+int64(tl)
}

// ReadFrame reads the next frame, failing if none arrives within timeout
// (0: no deadline; the deadline may be up to timeout/8 early).
func (c *Conn) ReadFrame(timeout time.Duration) (Frame, error) {
	if timeout > 0 && refresh(&c.readSet, &c.readFor, timeout) {
		c.nc.SetReadDeadline(time.Now().Add(timeout))
	}
	return c.R.ReadFrame()
}

// Flush sends buffered frames, failing if the peer does not take them
// within timeout (0: no deadline; it may be up to timeout/8 early). The
// deadline also holds for what the next frames write before their Flush
// (the Writer writes when its buffer fills, and an authenticated frame
// larger than the buffer goes out whole inside WriteFrame), so it is
// moved even when nothing is buffered.
func (c *Conn) Flush(timeout time.Duration) error {
	if timeout > 0 && refresh(&c.writeSet, &c.writeFor, timeout) {
		c.nc.SetWriteDeadline(time.Now().Add(timeout))
	}
	if c.W.Buffered() == 0 {
		return nil
	}
	return c.W.Flush()
}

// Send writes one frame and flushes.
func (c *Conn) Send(timeout time.Duration, t Type, f Flags, seq uint64, head, data []byte) error {
	if err := c.W.WriteFrame(t, f, seq, head, data); err != nil {
		return err
	}
	return c.Flush(timeout)
}

// Refuse sends a Refuse frame with reason (raw, readable by any version
// before the handshake), cut to MaxReason bytes.
func (c *Conn) Refuse(timeout time.Duration, reason string) error {
	enc := c.W.enc
	c.W.enc = nil
	defer func() { c.W.enc = enc }()
	return c.Send(timeout, TypeRefuse, 0, 0, []byte(cutText(reason, MaxReason)), nil)
}

// cutText cuts s to at most n bytes at a rune boundary.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// ReasonText makes a peer's Refuse or PromoteReply text fit for a log line
// or an error: invalid UTF-8 and control characters (newlines among them)
// become U+FFFD, and it is cut to MaxReason bytes.
func ReasonText(p []byte) string {
	if len(p) > MaxReason {
		p = p[:MaxReason]
	}
	s := string(p)
	if strings.IndexFunc(s, unfit) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unfit(r) {
			return utf8.RuneError
		}
		return r
	}, s)
}

// unfit reports whether r may not appear in a log line as is: invalid
// UTF-8 and control characters, line and paragraph separators included.
func unfit(r rune) bool {
	return r == utf8.RuneError || r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == 0x2028 || r == 0x2029
}
