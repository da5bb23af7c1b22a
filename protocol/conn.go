package protocol

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"time"
)

// Conn is a peer connection: a frame Reader and Writer over a net.Conn. One
// goroutine reads and one writes.
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

// NewConn wraps nc. Frames are written raw until SetCodec.
func NewConn(nc net.Conn) *Conn {
	w, _ := NewWriter(nc, CodecNone, 0)
	return &Conn{nc: nc, R: NewReader(nc), W: w}
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

// SetCodec chooses the codec for frames written from now on.
func (c *Conn) SetCodec(codec Codec, level int) error {
	enc, err := newEncoder(codec, level)
	if err != nil {
		return err
	}
	c.W.enc = enc
	return nil
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
// within timeout (0: no deadline; it may be up to timeout/8 early).
func (c *Conn) Flush(timeout time.Duration) error {
	if c.W.Buffered() == 0 {
		return nil
	}
	if timeout > 0 && refresh(&c.writeSet, &c.writeFor, timeout) {
		c.nc.SetWriteDeadline(time.Now().Add(timeout))
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

// Refuse sends a Refuse frame with reason (raw, readable by any version).
func (c *Conn) Refuse(timeout time.Duration, reason string) error {
	enc := c.W.enc
	c.W.enc = nil
	defer func() { c.W.enc = enc }()
	b := []byte(reason)
	if len(b) > 4096 {
		b = b[:4096]
	}
	return c.Send(timeout, TypeRefuse, 0, 0, b, nil)
}

// Handshake errors.
var (
	// ErrRefused: the peer refused us; the error text carries its reason.
	ErrRefused = errors.New("refused by peer")
	// ErrMismatch: the peer's Hello does not match our configuration.
	ErrMismatch = errors.New("peer configuration mismatch")
	// ErrAuth: the peer failed the challenge (the shared secrets differ).
	ErrAuth = errors.New("authentication failed")
	// ErrUnexpected: a frame of the wrong type arrived.
	ErrUnexpected = errors.New("unexpected frame")
)

// RefusedError is a Refuse frame received from the peer.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "peer refused: " + e.Reason }

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// NewNonce returns a random nonce.
func NewNonce() [NonceSize]byte {
	var n [NonceSize]byte
	if _, err := rand.Read(n[:]); err != nil {
		panic(err)
	}
	return n
}

func authMAC(secret []byte, challenge, own *[NonceSize]byte, id uint8) [32]byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("repd auth v1\x00"))
	m.Write(challenge[:])
	m.Write(own[:])
	m.Write([]byte{id})
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

// Handshake runs the Hello exchange and the mutual challenge-response on c
// and returns the peer's Hello. local.Nonce must be fresh (NewNonce). check,
// if not nil, vets the peer's Hello after the built-in checks of resource,
// size and granularity; its error is sent to the peer as the refusal
// reason. Any failure refuses the peer (when we are the one refusing) and
// returns an error; the caller closes c. The caller sets deadlines.
//
// Both sides send before they read, so neither waits on the other.
func Handshake(c *Conn, local *Hello, secret []byte, check func(*Hello) error) (*Hello, error) {
	var buf [512]byte
	if err := c.Send(0, TypeHello, 0, 0, local.Append(buf[:0]), nil); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	f, err := c.R.ReadFrame()
	if err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			c.Refuse(time.Second, fmt.Sprintf("protocol version %d is not supported: this node (%s) speaks version %d", ve.Got, local.Name, Version))
		}
		return nil, fmt.Errorf("read hello: %w", err)
	}
	if err := refusal(f, TypeHello); err != nil {
		return nil, err
	}
	peer := new(Hello)
	if err := peer.Decode(f.Payload); err != nil {
		return nil, err
	}
	if err := matchHello(local, peer); err == nil && check != nil {
		if err := check(peer); err != nil {
			c.Refuse(time.Second, err.Error())
			return nil, fmt.Errorf("%w: %v", ErrMismatch, err)
		}
	} else if err != nil {
		c.Refuse(time.Second, err.Error())
		return nil, fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	a := Auth{MAC: authMAC(secret, &peer.Nonce, &local.Nonce, local.NodeID)}
	if err := c.Send(0, TypeAuth, 0, 0, a.Append(buf[:0]), nil); err != nil {
		return nil, fmt.Errorf("send auth: %w", err)
	}
	if f, err = c.R.ReadFrame(); err != nil {
		return nil, fmt.Errorf("read auth: %w", err)
	}
	if err := refusal(f, TypeAuth); err != nil {
		return nil, err
	}
	var pa Auth
	if err := pa.Decode(f.Payload); err != nil {
		return nil, err
	}
	want := authMAC(secret, &local.Nonce, &peer.Nonce, peer.NodeID)
	if !hmac.Equal(want[:], pa.MAC[:]) {
		c.Refuse(time.Second, fmt.Sprintf("authentication failed: node %s does not share this node's (%s) secret for resource %s", peer.Name, local.Name, local.Resource))
		return nil, fmt.Errorf("%w: node %s (id %d) answered the challenge with a wrong MAC; the shared secrets differ", ErrAuth, peer.Name, peer.NodeID)
	}
	return peer, nil
}

// refusal turns a Refuse frame into an error, and any type but want too.
func refusal(f Frame, want Type) error {
	if f.Type == TypeRefuse {
		return &RefusedError{Reason: string(f.Payload)}
	}
	if f.Type != want {
		return fmt.Errorf("%w: %s during handshake, want %s", ErrUnexpected, f.Type, want)
	}
	return nil
}

func matchHello(l, p *Hello) error {
	switch {
	case p.Resource != l.Resource:
		return fmt.Errorf("resource name differs: peer %s serves %q, this node (%s) serves %q", p.Name, p.Resource, l.Name, l.Resource)
	case p.Size != l.Size:
		return fmt.Errorf("size differs for resource %s: peer %s has %d bytes, this node (%s) has %d", l.Resource, p.Name, p.Size, l.Name, l.Size)
	case p.Granularity != l.Granularity:
		return fmt.Errorf("bitmap granularity differs for resource %s: peer %s uses %d, this node (%s) uses %d", l.Resource, p.Name, p.Granularity, l.Name, l.Granularity)
	case p.NodeID == l.NodeID:
		return fmt.Errorf("node id %d is used by both %s and %s", l.NodeID, p.Name, l.Name)
	}
	return nil
}
