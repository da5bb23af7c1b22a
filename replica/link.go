package replica

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/loglimit"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/authlimit"
)

// Connect (re)enables the connection to peer. With discardMyData this node
// gives up its changes and becomes the peer's sync target (the victim's
// side of a split-brain resolution).
func (n *Node) Connect(name string, discardMyData bool) error {
	p, err := n.peerByName(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.unlock()
	if discardMyData && n.role == api.Primary {
		return fmt.Errorf("%w: this node is Primary and cannot discard its data; demote it first", ErrRefused)
	}
	if p.conn == api.Connected && !discardMyData {
		return nil
	}
	p.discard = discardMyData
	p.splitBrain = false
	if p.conn == api.StandAlone {
		p.setConnLocked(api.Connecting, "")
	}
	if p.sess != nil && discardMyData {
		p.restartLocked("connect --discard-my-data")
	}
	p.kickLocked()
	return nil
}

// Disconnect drops the connection to peer and keeps it down (StandAlone)
// until Connect.
func (n *Node) Disconnect(name string) error {
	p, err := n.peerByName(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.unlock()
	p.setConnLocked(api.StandAlone, "disconnected by the operator")
	if p.sess != nil {
		p.sess.cancel()
	}
	p.kickLocked()
	return nil
}

// run keeps the connection to p up until ctx is done: it dials (if this
// node has the lower id) or waits for the listener to hand over a
// connection, then runs a session; after a failure it backs off.
func (p *peer) run(ctx context.Context) {
	n := p.n
	backoff := n.cfg.ConnectInterval
	dials := n.cfg.Self.ID < p.cfg.ID
	for ctx.Err() == nil {
		n.mu.Lock()
		standalone := p.conn == api.StandAlone
		n.mu.Unlock()
		if standalone {
			p.drainIncoming()
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
			}
			continue
		}
		var c *protocol.Conn
		var err error
		if dials {
			c, err = p.dial(ctx)
		} else {
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
				continue
			case c = <-p.incoming:
			}
		}
		if err == nil {
			start := time.Now()
			err = p.session(ctx, c)
			if time.Since(start) > 2*n.cfg.Timeout {
				backoff = n.cfg.ConnectInterval
			}
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			n.mu.Lock()
			p.setErrLocked(err)
			n.unlock()
			n.log.Warn("peer connection failed", "peer", p.cfg.Name, "err", err)
		}
		t := time.NewTimer(jitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.kick:
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(newUUID()%uint64(d/2+1))
}

func (p *peer) drainIncoming() {
	for {
		select {
		case c := <-p.incoming:
			c.Refuse(time.Second, fmt.Sprintf("node %s is StandAlone toward %s (disconnected by the operator); run connect there", p.n.cfg.Self.Name, p.cfg.Name))
			c.Close()
		default:
			return
		}
	}
}

func (n *Node) hello() *protocol.Hello {
	return &protocol.Hello{Features: protocol.Features, Size: uint64(n.cfg.Size), Granularity: uint32(n.cfg.Granularity),
		NodeID: n.cfg.Self.ID, Nonce: protocol.NewNonce(), Resource: n.cfg.Resource, Name: n.cfg.Self.Name}
}

// dial connects to p and runs the handshake.
func (p *peer) dial(ctx context.Context) (*protocol.Conn, error) {
	n := p.n
	d := net.Dialer{Timeout: n.cfg.Timeout}
	nc, err := d.DialContext(ctx, "tcp", p.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s at %s: %w", p.cfg.Name, p.cfg.Addr, err)
	}
	if nc, err = p.clientTLS(ctx, nc); err != nil {
		return nil, err
	}
	c := protocol.NewConn(nc)
	c.SetDeadline(time.Now().Add(n.cfg.Timeout))
	s, err := protocol.Dial(c, n.hello(), n.cfg.Secret, p.cfg.ID, nil)
	if err != nil {
		p.noteHandshakeErr(err)
		nc.Close()
		return nil, fmt.Errorf("handshake with %s at %s: %w", p.cfg.Name, p.cfg.Addr, err)
	}
	p.setCodec(c, s.Peer)
	return c, nil
}

func (p *peer) setCodec(c *protocol.Conn, h *protocol.Hello) {
	p.features.Store(h.Features)
	codec := p.n.codec
	if codec == protocol.CodecS2 && h.Features&protocol.FeatureS2 == 0 || codec == protocol.CodecZstd && h.Features&protocol.FeatureZstd == 0 {
		codec = protocol.CodecNone
	}
	c.SetCodec(codec, p.n.cfg.CompressionLevel)
}

// refusalLogs limits the log lines of the peer listener's refusals to one
// a second of each kind, with the count of those left out in the next:
// anyone who can open a TCP connection to the peer port causes them,
// before any authentication, and a line per connection let a flood fill
// the disk under the log. (A refused handshake still sets the peer's
// LastError and counters, or makes an event.) Each kind has its own
// limiter, so that a flood of one does not hide the other.
type refusalLogs struct {
	busy    loglimit.Limiter // too many handshakes in progress
	refused loglimit.Limiter // a handshake (or its TLS) failed or was refused
}

// logLimited logs msg with args at level if lim allows a line now, with
// the number of lines it suppressed since the last (if any).
func (n *Node) logLimited(lim *loglimit.Limiter, level slog.Level, msg string, args ...any) {
	ok, suppressed := lim.Allow(time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed_since_last_log", suppressed)
	}
	n.log.Log(context.Background(), level, msg, args...)
}

// accept serves the peer listener: each connection is authenticated and
// handed to its peer's run loop.
func (n *Node) accept(ctx context.Context, ln net.Listener) {
	logs := &refusalLogs{}
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		ip := remoteIP(nc)
		if !n.authLim.Begin(ip) {
			// Too many connections still in their handshake (from this
			// address, or in all): an unauthenticated flood gets no
			// goroutine and no buffers.
			n.logLimited(&logs.busy, slog.LevelWarn, "refused incoming peer connection: too many handshakes in progress", "remote", nc.RemoteAddr().String(),
				"per_address", authlimit.MaxHandshakesPerIP, "total", authlimit.MaxHandshakes)
			nc.Close()
			continue
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer n.authLim.End(ip)
			n.handshakeIncoming(ctx, nc, logs)
		}()
	}
}

func (n *Node) handshakeIncoming(ctx context.Context, nc net.Conn, logs *refusalLogs) {
	nc, done, ok := n.admit(ctx, nc, logs)
	if !ok {
		return
	}
	c := protocol.NewConn(nc)
	c.SetDeadline(time.Now().Add(n.cfg.Timeout))
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	var p *peer
	s, err := protocol.Accept(c, n.hello(), n.cfg.Secret, func(h *protocol.Hello) error {
		for _, q := range n.all {
			if q.cfg.ID == h.NodeID {
				p = q
			}
		}
		switch {
		case p == nil:
			return fmt.Errorf("node %s (id %d) is not a peer of resource %s on %s; add it to the configuration", h.Name, h.NodeID, n.cfg.Resource, n.cfg.Self.Name)
		case p.cfg.ID > n.cfg.Self.ID:
			return fmt.Errorf("%s (id %d) dials %s (id %d), not the other way round", n.cfg.Self.Name, n.cfg.Self.ID, h.Name, h.NodeID)
		}
		if err := checkPeerCert(nc, p.cfg.Name); err != nil {
			return err
		}
		n.mu.Lock()
		standalone := p.conn == api.StandAlone
		n.mu.Unlock()
		if standalone {
			return fmt.Errorf("node %s is StandAlone toward %s (disconnected by the operator or after a split brain); run connect there", n.cfg.Self.Name, h.Name)
		}
		return nil
	})
	done(err)
	if err != nil {
		n.logLimited(&logs.refused, slog.LevelWarn, "refused incoming peer connection", "remote", nc.RemoteAddr().String(), "err", err)
		if p != nil {
			p.noteHandshakeErr(err)
			n.mu.Lock()
			p.setErrLocked(fmt.Errorf("incoming connection from %s: %w", nc.RemoteAddr(), err))
			n.unlock()
		} else {
			n.mu.Lock()
			n.event("error", "", "", "", fmt.Sprintf("refused connection from %s: %v", nc.RemoteAddr(), err))
			n.unlock()
		}
		nc.Close()
		return
	}
	p.setCodec(c, s.Peer)
	c.SetDeadline(time.Time{})
	// Replace whatever is waiting; a live session is superseded (the peer
	// would not dial again if it still had it).
	n.mu.Lock()
	if p.sess != nil {
		p.sess.fail(errors.New("superseded by a new connection from the peer"))
	}
	n.mu.Unlock()
	for {
		select {
		case p.incoming <- c:
			return
		case old := <-p.incoming:
			old.Close()
		case <-ctx.Done():
			nc.Close()
			return
		}
	}
}

// The edges of a peer connection: optional TLS under the frames, and the
// rate limit on authentication failures (internal/authlimit).
func remoteIP(nc net.Conn) string {
	host, _, err := net.SplitHostPort(nc.RemoteAddr().String())
	if err != nil {
		return nc.RemoteAddr().String()
	}
	return host
}

// isAuthErr reports whether a handshake failed on authentication: a wrong
// MAC, a peer refusing ours, or a TLS certificate not accepted (by us or,
// as an alert, by the peer).
func isAuthErr(err error) bool {
	if err == nil {
		return false
	}
	var re *protocol.RefusedError
	if errors.Is(err, protocol.ErrAuth) || errors.As(err, &re) && strings.Contains(re.Reason, "authentication failed") {
		return true
	}
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var he x509.HostnameError
	var ve *tls.CertificateVerificationError
	var alert tls.AlertError
	return errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &he) || errors.As(err, &ve) ||
		errors.As(err, &alert) || strings.Contains(err.Error(), "certificate")
}

// noteHandshakeErr counts a failed handshake with p.
func (p *peer) noteHandshakeErr(err error) {
	if errors.Is(err, protocol.ErrCorrupt) {
		p.stats.badFrames.Add(1)
	}
	if isAuthErr(err) {
		p.stats.authFailures.Add(1)
	}
}

// clientTLS runs the TLS handshake of a connection we dialed to p, if TLS
// is configured; the listener must present a certificate for p's name.
func (p *peer) clientTLS(ctx context.Context, nc net.Conn) (net.Conn, error) {
	n := p.n
	if n.cfg.TLS == nil {
		return nc, nil
	}
	cfg := n.cfg.TLS.Clone()
	cfg.ServerName = p.cfg.Name
	tc := tls.Client(nc, cfg)
	tc.SetDeadline(time.Now().Add(n.cfg.Timeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		err = fmt.Errorf("TLS handshake with %s at %s: %w", p.cfg.Name, p.cfg.Addr, err)
		p.noteHandshakeErr(err)
		return nil, err
	}
	return tc, nil
}

// admit prepares an accepted connection for the handshake: it applies the
// authentication rate limit and, if configured, runs the TLS handshake. It
// returns the connection to speak frames on and done, to be called with the
// outcome of the peer handshake; ok false means nc is closed already. A
// refusal is logged through logs.
func (n *Node) admit(ctx context.Context, nc net.Conn, logs *refusalLogs) (_ net.Conn, done func(error), ok bool) {
	ip := remoteIP(nc)
	delay, ok := n.authLim.Enter(ip, n.cfg.Timeout/2, time.Now())
	if !ok {
		nc.Close()
		return nil, nil, false
	}
	done = func(err error) { n.authLim.Leave(ip, isAuthErr(err), err == nil, time.Now()) }
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			nc.Close()
			done(ctx.Err())
			return nil, nil, false
		}
	}
	if n.cfg.TLS == nil {
		return nc, done, true
	}
	tc := tls.Server(nc, n.cfg.TLS)
	tc.SetDeadline(time.Now().Add(n.cfg.Timeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		err = fmt.Errorf("TLS handshake with %s: %w", nc.RemoteAddr(), err)
		done(err)
		n.logLimited(&logs.refused, slog.LevelWarn, "refused incoming peer connection", "remote", nc.RemoteAddr().String(), "err", err)
		n.mu.Lock()
		if p := n.peerAt(ip); p != nil {
			p.noteHandshakeErr(err)
			p.setErrLocked(fmt.Errorf("incoming connection: %w", err))
		} else {
			n.event("error", "", "", "", fmt.Sprintf("refused connection: %v", err))
		}
		n.unlock()
		return nil, nil, false
	}
	return tc, done, true
}

// peerAt is the only peer configured at host ip, if there is one.
func (n *Node) peerAt(ip string) *peer {
	var found *peer
	for _, p := range n.all {
		host, _, err := net.SplitHostPort(p.cfg.Addr)
		if err != nil || host != ip {
			continue
		}
		if found != nil {
			return nil
		}
		found = p
	}
	return found
}

// checkPeerCert refuses a TLS peer whose certificate is not for the node
// its Hello names.
func checkPeerCert(nc net.Conn, name string) error {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return nil
	}
	return protocol.CheckPeerName(tc.ConnectionState(), name)
}
