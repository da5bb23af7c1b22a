package protocol

import (
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/zeebo/blake3"
)

// Handshake errors.
var (
	// ErrRefused: the peer refused us; the error text carries its reason.
	ErrRefused = errors.New("refused by peer")
	// ErrMismatch: the peer's Hello does not match our configuration.
	ErrMismatch = errors.New("peer configuration mismatch")
	// ErrAuth: the peer failed the challenge (the shared secrets differ, or
	// only one side has one).
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

// Session is what a successful handshake established. The Conn it ran on
// is open: big buffers, every post-handshake frame type, and, if
// FrameAuth, AES-256-GCM tags (GMAC) on the frames in both directions
// under keys derived from the secret and Transcript.
type Session struct {
	// Peer is the peer's Hello, checked (names valid, resource, size,
	// granularity and frame authentication equal to ours, vetted by the
	// caller's check, and on Dial the node id wanted).
	Peer *Hello
	// Dialer: this side dialed.
	Dialer bool
	// FrameAuth: frames carry AES-256-GCM tags (a secret and no TLS);
	// otherwise xxhash64.
	FrameAuth bool
	// SplitMAC: FrameAuth, and both sides announced FeatureSplitMAC: frames
	// of at least 64 KiB of payload carry two-part tags.
	SplitMAC bool
	// Transcript is the BLAKE3 hash of the four handshake frames; it is
	// unique to this connection and equal on both sides.
	Transcript [32]byte
}

// Domain-separation strings of the handshake's hashes. Part of the wire
// format.
const (
	ctxAuthKey       = "repd 2026-12-05 peer link v2: authentication key from the shared secret"
	ctxTranscript    = "repd 2026-12-05 peer link v2: handshake transcript\x00"
	ctxDialerProof   = "repd 2026-12-05 peer link v2: proof of the dialer\x00"
	ctxListenerProof = "repd 2026-12-05 peer link v2: proof of the listener\x00"
	ctxKeyDialer     = "repd 2026-12-05 peer link v2: AES-256-GCM frame key, dialer to listener"
	ctxKeyListener   = "repd 2026-12-05 peer link v2: AES-256-GCM frame key, listener to dialer"
)

// Dial runs the dialer's side of the handshake on c (see the package
// documentation): it sends its Hello, checks the listener's (its node id
// must be want; then check, if not nil, vets it, and its error is sent as
// the refusal), proves the secret over both Hellos, and checks the
// listener's proof. local is this node; its Nonce is ignored (each
// handshake draws its own) and its FeatureFrameMAC bit is set from secret
// and c (a *tls.Conn whose handshake completed means TLS). Any failure
// refuses the peer (when we are the one refusing) and returns an error;
// the caller closes c. The caller sets deadlines.
func Dial(c *Conn, local *Hello, secret []byte, want uint8, check func(*Hello) error) (*Session, error) {
	hs, err := newHandshake(c, local, secret, true)
	if err != nil {
		return nil, err
	}
	if err := hs.send(TypeHello, hs.local.Append(hs.buf[:0])); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	peer, err := hs.readHello()
	if err != nil {
		return nil, err
	}
	if err := hs.vet(peer, func(h *Hello) error {
		if h.NodeID != want {
			return fmt.Errorf("%s expected node id %d, found %s (id %d)", hs.local.Name, want, h.Name, h.NodeID)
		}
		if check != nil {
			return check(h)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	mine := hs.proof(ctxDialerProof, &hs.local, peer)
	if err := hs.send(TypeAuth, mine[:]); err != nil {
		return nil, fmt.Errorf("send auth: %w", err)
	}
	if err := hs.readProof(ctxListenerProof, peer, &hs.local, peer); err != nil {
		return nil, err
	}
	return hs.finish(peer)
}

// Accept runs the listener's side of the handshake on c (see the package
// documentation): it reads the dialer's Hello and checks it (check, if not
// nil, vets it, and its error is sent as the refusal), sends its own,
// verifies the dialer's proof, and only then proves the secret itself.
// local, secret and the failure handling are as for Dial.
func Accept(c *Conn, local *Hello, secret []byte, check func(*Hello) error) (*Session, error) {
	hs, err := newHandshake(c, local, secret, false)
	if err != nil {
		return nil, err
	}
	peer, err := hs.readHello()
	if err != nil {
		return nil, err
	}
	if err := hs.vet(peer, check); err != nil {
		return nil, err
	}
	if err := hs.send(TypeHello, hs.local.Append(hs.buf[:0])); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	if err := hs.readProof(ctxDialerProof, peer, peer, &hs.local); err != nil {
		return nil, err
	}
	mine := hs.proof(ctxListenerProof, peer, &hs.local)
	if err := hs.send(TypeAuth, mine[:]); err != nil {
		return nil, fmt.Errorf("send auth: %w", err)
	}
	return hs.finish(peer)
}

// handshake is one side's state during Dial or Accept.
type handshake struct {
	c         *Conn
	local     Hello
	dialer    bool
	frameAuth bool
	key       [32]byte // from the secret: keys the proofs and the frame keys
	tr        []byte   // transcript: header ‖ payload of every handshake frame so far
	buf       [MaxHelloSize]byte
}

func newHandshake(c *Conn, local *Hello, secret []byte, dialer bool) (*handshake, error) {
	if c.R.open || c.W.open {
		return nil, errors.New("handshake on a connection that had one already")
	}
	hs := &handshake{c: c, local: *local, dialer: dialer, tr: make([]byte, 0, 2*(HeaderSize+MaxHelloSize+HeaderSize+AuthSize))}
	if !ValidName(local.Resource) || !ValidName(local.Name) {
		return nil, fmt.Errorf("this node's resource %s or node name %s is not valid: use 1 to %d letters, digits, '-', '_' or '.'",
			quoteName(local.Resource), quoteName(local.Name), MaxNameLen)
	}
	hs.local.Nonce = NewNonce()
	hs.frameAuth = len(secret) > 0 && !isTLS(c.nc)
	hs.local.Features &^= FeatureFrameMAC | featureFrameMACBLAKE3
	if hs.frameAuth {
		hs.local.Features |= FeatureFrameMAC
	}
	blake3.DeriveKey(ctxAuthKey, secret, hs.key[:])
	return hs, nil
}

// isTLS reports whether nc is a TLS connection whose handshake completed.
func isTLS(nc net.Conn) bool {
	tc, ok := nc.(interface{ ConnectionState() tls.ConnectionState })
	return ok && tc.ConnectionState().HandshakeComplete
}

// send sends one handshake frame and adds it to the transcript.
func (hs *handshake) send(t Type, payload []byte) error {
	w := hs.c.W
	if err := w.WriteFrame(t, 0, 0, payload, nil); err != nil {
		return err
	}
	hs.tr = append(append(hs.tr, w.hdr[:]...), payload...)
	return hs.c.Flush(0)
}

// recv reads the next handshake frame, which must be of type want, and
// adds it to the transcript unless it is an Auth (whose proof is checked
// against the transcript before it).
func (hs *handshake) recv(want Type) (Frame, error) {
	c := hs.c
	f, err := c.R.ReadFrame()
	if err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			c.Refuse(time.Second, fmt.Sprintf("protocol version %d is not supported: this node (%s) speaks version %d", ve.Got, hs.local.Name, Version))
		}
		return f, fmt.Errorf("read %s: %w", want, err)
	}
	switch f.Type {
	case want:
	case TypeRefuse:
		return f, &RefusedError{Reason: ReasonText(f.Payload)}
	default:
		c.Refuse(time.Second, fmt.Sprintf("unexpected %s frame during the handshake, want %s", f.Type, want))
		return f, fmt.Errorf("%w: %s during handshake, want %s", ErrUnexpected, f.Type, want)
	}
	if want != TypeAuth {
		hs.record(f)
	}
	return f, nil
}

// record adds the frame just read to the transcript.
func (hs *handshake) record(f Frame) {
	hs.tr = append(append(hs.tr, hs.c.R.hdr[:]...), f.Payload...)
}

// readHello reads and decodes the peer's Hello; a bad one is refused.
func (hs *handshake) readHello() (*Hello, error) {
	f, err := hs.recv(TypeHello)
	if err != nil {
		return nil, err
	}
	peer := new(Hello)
	if err := peer.Decode(f.Payload); err != nil {
		hs.c.Refuse(time.Second, fmt.Sprintf("bad Hello: %v", err))
		return nil, fmt.Errorf("read hello: %w", err)
	}
	return peer, nil
}

// vet checks the peer's Hello against ours, then by check, then that both
// sides authenticate frames alike; a failure is sent to the peer as a
// Refuse.
func (hs *handshake) vet(peer *Hello, check func(*Hello) error) error {
	l := &hs.local
	err := matchHello(l, peer)
	if err == nil && check != nil {
		err = check(peer)
	}
	if err != nil {
		hs.c.Refuse(time.Second, err.Error())
		return fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	if peer.Features&featureFrameMACBLAKE3 != 0 && peer.Features&FeatureFrameMAC == 0 {
		detail := fmt.Sprintf("node %s runs a pre-release build of protocol version 2 (keyed-BLAKE3 frame MACs) that node %s cannot talk to; run the same repd release on every node of resource %s",
			peer.Name, l.Name, l.Resource)
		hs.c.Refuse(time.Second, "authentication failed: "+detail)
		return fmt.Errorf("%w: %s", ErrAuth, detail)
	}
	if theirs := peer.Features&FeatureFrameMAC != 0; theirs != hs.frameAuth {
		detail := fmt.Sprintf("node %s %s, node %s %s; give every node of resource %s the same secret-file and TLS settings",
			l.Name, frameAuthText(hs.frameAuth), peer.Name, frameAuthText(theirs), l.Resource)
		hs.c.Refuse(time.Second, "authentication failed: "+detail)
		return fmt.Errorf("%w: %s", ErrAuth, detail)
	}
	return nil
}

func frameAuthText(on bool) string {
	if on {
		return "authenticates frames with a shared secret"
	}
	return "does not (no secret-file, or TLS)"
}

// proof is the MAC of a side (ctx: dialer or listener) over the transcript
// so far and the two node ids, dialer's first.
func (hs *handshake) proof(ctx string, dialer, listener *Hello) [AuthSize]byte {
	t := hs.transcript()
	m, err := blake3.NewKeyed(hs.key[:])
	if err != nil {
		panic(err) // the key is 32 bytes
	}
	m.WriteString(ctx)
	m.Write(t[:])
	m.Write([]byte{dialer.NodeID, listener.NodeID})
	var out [AuthSize]byte
	m.Sum(out[:0])
	return out
}

// transcript is the hash of the handshake frames so far.
func (hs *handshake) transcript() [32]byte {
	h := blake3.New()
	h.WriteString(ctxTranscript)
	h.Write(hs.tr)
	var t [32]byte
	h.Sum(t[:0])
	return t
}

// readProof reads the peer's Auth and checks it against the proof of ctx
// over the transcript so far; a wrong one is refused. from is the peer's
// Hello, for the messages.
func (hs *handshake) readProof(ctx string, from, dialer, listener *Hello) error {
	f, err := hs.recv(TypeAuth)
	if err != nil {
		return err
	}
	var a Auth
	if err := a.Decode(f.Payload); err != nil {
		hs.c.Refuse(time.Second, fmt.Sprintf("bad Auth: %v", err))
		return fmt.Errorf("read auth: %w", err)
	}
	want := hs.proof(ctx, dialer, listener)
	if subtle.ConstantTimeCompare(want[:], a.MAC[:]) != 1 {
		l := &hs.local
		hs.c.Refuse(time.Second, fmt.Sprintf("authentication failed: node %s does not share this node's (%s) secret for resource %s", from.Name, l.Name, l.Resource))
		return fmt.Errorf("%w: node %s (id %d) answered the challenge with a wrong proof; the shared secrets differ (or the connection was tampered with)", ErrAuth, from.Name, from.NodeID)
	}
	hs.record(f)
	return nil
}

// finish derives the frame keys and opens the connection.
func (hs *handshake) finish(peer *Hello) (*Session, error) {
	t := hs.transcript()
	var send, recv *frameMAC
	if hs.frameAuth {
		material := append(append(make([]byte, 0, 64), hs.key[:]...), t[:]...)
		var kd, kl [32]byte
		blake3.DeriveKey(ctxKeyDialer, material, kd[:])
		blake3.DeriveKey(ctxKeyListener, material, kl[:])
		fromD, err := newFrameMAC(&kd)
		if err != nil {
			return nil, err
		}
		fromL, err := newFrameMAC(&kl)
		if err != nil {
			return nil, err
		}
		send, recv = fromL, fromD
		if hs.dialer {
			send, recv = fromD, fromL
		}
		split := hs.local.Features&peer.Features&FeatureSplitMAC != 0
		send.split, recv.split = split, split
	}
	if err := hs.c.W.openWith(send); err != nil {
		return nil, err
	}
	hs.c.R.openWith(recv)
	return &Session{Peer: peer, Dialer: hs.dialer, FrameAuth: hs.frameAuth, SplitMAC: send != nil && send.split, Transcript: t}, nil
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
