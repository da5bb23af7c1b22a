package replica

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/repd/repd/protocol"
)

// The edges of a peer connection: optional TLS under the frames, and the
// rate limit on authentication failures.
//
// Every incoming handshake from a remote IP that recently failed to
// authenticate (wrong HMAC secret, or a TLS certificate the CA does not
// vouch for) is answered only after a delay that doubles with each failure
// (authDelayBase, up to half the peer timeout so a peer whose secret was
// fixed still gets through), and only one such handshake per IP runs at a
// time: extra connections are closed at once. A success forgets the IP; so
// does authForget of quiet.

const (
	authDelayBase = 100 * time.Millisecond
	authForget    = 5 * time.Minute
	authMaxIPs    = 4096
)

type authLimiter struct {
	mu sync.Mutex
	m  map[string]*authRec
}

type authRec struct {
	fails int
	last  time.Time
	busy  bool
}

// enter is called before answering a handshake from ip: how long to wait
// first, or ok false to close the connection at once.
func (l *authLimiter) enter(ip string, maxDelay time.Duration, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.m[ip]
	if r == nil {
		return 0, true
	}
	if now.Sub(r.last) > authForget && !r.busy {
		delete(l.m, ip)
		return 0, true
	}
	if r.busy {
		return 0, false
	}
	r.busy = true
	return min(authDelayBase<<min(r.fails-1, 20), maxDelay), true
}

// leave records a handshake's outcome: failed authentication, success, or
// neither (a network error, a configuration mismatch).
func (l *authLimiter) leave(ip string, authFailed, ok bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.m[ip]
	switch {
	case ok:
		delete(l.m, ip)
		return
	case authFailed && r == nil:
		if l.m == nil {
			l.m = map[string]*authRec{}
		}
		if len(l.m) >= authMaxIPs {
			for k, x := range l.m {
				if !x.busy && (now.Sub(x.last) > authForget || len(l.m) >= authMaxIPs) {
					delete(l.m, k)
				}
			}
		}
		r = &authRec{}
		l.m[ip] = r
	}
	if r == nil {
		return
	}
	r.busy = false
	if authFailed {
		r.fails++
		r.last = now
	}
}

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
		p.badFrames.Add(1)
	}
	if isAuthErr(err) {
		p.ls.authFailures.Add(1)
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
// outcome of the peer handshake; ok false means nc is closed already.
func (n *Node) admit(ctx context.Context, nc net.Conn) (_ net.Conn, done func(error), ok bool) {
	ip := remoteIP(nc)
	delay, ok := n.authLim.enter(ip, n.cfg.Timeout/2, time.Now())
	if !ok {
		nc.Close()
		return nil, nil, false
	}
	done = func(err error) { n.authLim.leave(ip, isAuthErr(err), err == nil, time.Now()) }
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
		n.log.Warn("refused incoming peer connection", "remote", nc.RemoteAddr().String(), "err", err)
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
	for _, p := range n.peers {
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
