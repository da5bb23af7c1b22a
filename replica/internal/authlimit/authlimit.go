// Package authlimit slows down peers that fail to authenticate.
//
// Every incoming handshake from a remote IP that recently failed to
// authenticate (wrong shared secret, or a TLS certificate the CA does not
// vouch for) is answered only after a delay that doubles with each failure
// (DelayBase, up to half the peer timeout so a peer whose secret was
// fixed still gets through), and only one such handshake per IP runs at a
// time: extra connections are closed at once. A success forgets the IP; so
// does Forget of quiet.
package authlimit

import (
	"sync"
	"time"
)

// Limits.
const (
	DelayBase = 100 * time.Millisecond
	Forget    = 5 * time.Minute
	MaxIPs    = 4096
)

// Limiter is the per-address rate limit on failed authentications. Its
// zero value is ready; it is safe for concurrent use.
type Limiter struct {
	mu     sync.Mutex
	m      map[string]*authRec
	active int            // handshakes running (Begin, End)
	perIP  map[string]int // of them, per address
}

type authRec struct {
	fails int
	last  time.Time
	busy  bool
}

// Enter is called before answering a handshake from ip: how long to wait
// first, or ok false to close the connection at once.
func (l *Limiter) Enter(ip string, maxDelay time.Duration, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.m[ip]
	if r == nil {
		return 0, true
	}
	if now.Sub(r.last) > Forget && !r.busy {
		delete(l.m, ip)
		return 0, true
	}
	if r.busy {
		return 0, false
	}
	r.busy = true
	return min(DelayBase<<min(r.fails-1, 20), maxDelay), true
}

// Leave records a handshake's outcome: failed authentication, success, or
// neither (a network error, a configuration mismatch).
func (l *Limiter) Leave(ip string, authFailed, ok bool, now time.Time) {
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
		if len(l.m) >= MaxIPs {
			for k, x := range l.m {
				if !x.busy && (now.Sub(x.last) > Forget || len(l.m) >= MaxIPs) {
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

// Concurrent handshakes: before a connection has proved the shared
// secret it may hold a goroutine, a socket and small buffers for up to the
// handshake deadline. At most MaxHandshakes run at once, at most
// MaxHandshakesPerIP from one address; Begin refuses the rest, which the
// caller closes at once.
const (
	MaxHandshakes      = 64
	MaxHandshakesPerIP = 8
)

// Begin admits a handshake from ip, or refuses it; End must follow an
// admitted one.
func (l *Limiter) Begin(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.active >= MaxHandshakes || l.perIP[ip] >= MaxHandshakesPerIP {
		return false
	}
	if l.perIP == nil {
		l.perIP = map[string]int{}
	}
	l.active++
	l.perIP[ip]++
	return true
}

// End ends a handshake Begin admitted.
func (l *Limiter) End(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.active--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}
