package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/repd/repd/internal/loglimit"
)

// limitListener serves at most max connections of l at once. The metrics
// and health listener is not authenticated: without the bound, anyone who
// reaches it could hold a goroutine and its buffers per connection for the
// length of its timeouts (5 s of slow headers each).
//
// When all slots are taken, a new connection takes the slot of one that
// is not serving a request (it has not sent a whole request yet, or waits
// idle between requests) or has served one for longer than busyFor (a
// client that does not read its answer): of those, one from the address
// that holds the most slots, its oldest (victimLocked). So a flood of
// connections that send nothing, or send slowly, or do not read, cannot
// keep a load balancer's health probe out (it would mark the Primary down
// and cut its clients): the probe needs its slot only for the
// milliseconds of one request, and a flood from another host takes its
// own slots first. Only when every slot is serving a request begun less
// than busyFor ago is the new connection closed at once, before anything
// is read from it. Refusals and evictions are logged at most once
// a second each, with a count. Serve with serve, which tells the listener
// which connections are serving a request.
type limitListener struct {
	net.Listener
	max     int
	busyFor time.Duration
	log     *slog.Logger
	refused loglimit.Limiter
	evicted loglimit.Limiter

	mu    sync.Mutex
	conns []*limitedConn // held, oldest first
}

// limitBusyFor: a scrape or a probe takes milliseconds; a request served
// for longer is a client that does not read (or a profile, with --pprof).
const limitBusyFor = time.Second

func newLimitListener(l net.Listener, max int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: l, max: max, busyFor: limitBusyFor, log: log}
}

// connKey keys a request's connection in its context (serve).
type connKey struct{}

// serve serves s on l: s's handler marks its connection as serving a
// request while it runs.
func (l *limitListener) serve(s *http.Server) error {
	h := s.Handler
	s.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if lc, ok := r.Context().Value(connKey{}).(*limitedConn); ok {
			l.mu.Lock()
			lc.busy, lc.since = true, time.Now()
			l.mu.Unlock()
			defer func() {
				l.mu.Lock()
				lc.busy = false
				l.mu.Unlock()
			}()
		}
		h.ServeHTTP(w, r)
	})
	return httpServe(s, l)
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		lc := &limitedConn{Conn: c, l: l, host: hostOf(c.RemoteAddr())}
		l.mu.Lock()
		var victim *limitedConn
		full := false
		if len(l.conns) >= l.max {
			victim = l.victimLocked(time.Now())
			full = victim == nil
		}
		if victim != nil {
			l.removeLocked(victim)
		}
		if !full {
			l.conns = append(l.conns, lc)
		}
		l.mu.Unlock()
		if full {
			c.Close()
			l.refused.Log(l.log, slog.LevelWarn, "refused_since_last_log", "metrics: connection refused: every slot is serving a fresh request",
				"remote", c.RemoteAddr().String(), "served", l.max)
			continue
		}
		if victim != nil {
			victim.Conn.Close() // its slot is the new one's already
			l.evicted.Log(l.log, slog.LevelWarn, "evicted_since_last_log", "metrics: all slots taken; closed the oldest idle or stuck connection",
				"closed", victim.RemoteAddr().String(), "for", c.RemoteAddr().String(), "served", l.max)
		}
		return lc, nil
	}
}

// victimLocked is the connection a new one takes the slot of: one not
// serving a request, or serving one for longer than busyFor; of those,
// one from the address that holds the most slots, the oldest of its; nil
// if none (l.mu held). Counting by address keeps a flood from one host
// from taking the slot of a probe from another while its request is on
// the way; from one address, the oldest goes first.
func (l *limitListener) victimLocked(now time.Time) *limitedConn {
	held := make(map[string]int, len(l.conns))
	for _, h := range l.conns {
		held[h.host]++
	}
	var victim *limitedConn
	for _, h := range l.conns {
		if h.busy && now.Sub(h.since) <= l.busyFor {
			continue
		}
		if victim == nil || held[h.host] > held[victim.host] {
			victim = h
		}
	}
	return victim
}

// removeLocked drops c from the held connections (l.mu held).
func (l *limitListener) removeLocked(c *limitedConn) {
	for i, h := range l.conns {
		if h == c {
			l.conns = append(l.conns[:i], l.conns[i+1:]...)
			return
		}
	}
}

// limitedConn gives its slot back when it is closed (once).
type limitedConn struct {
	net.Conn
	l     *limitListener
	host  string    // the remote address without its port
	busy  bool      // serving a request (l.mu) ...
	since time.Time // ... since then
	once  sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.removeLocked(c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// hostOf is a's address without its port.
func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}
