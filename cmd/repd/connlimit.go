package main

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/repd/repd/internal/loglimit"
)

// limitListener serves at most max connections of l at once: a connection
// accepted beyond that is closed at once, before anything is read from
// it, and the refusals are logged at most once a second with a count. The
// metrics and health listener is not authenticated: without the bound,
// anyone who reaches it could hold a goroutine and its buffers per
// connection for the length of its timeouts (5 s of slow headers each).
type limitListener struct {
	net.Listener
	max     int64
	active  atomic.Int64
	log     *slog.Logger
	refused loglimit.Limiter
}

func newLimitListener(l net.Listener, max int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: l, max: int64(max), log: log}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.active.Add(1) <= l.max {
			return &limitedConn{Conn: c, l: l}, nil
		}
		l.active.Add(-1)
		c.Close()
		l.refused.Log(l.log, slog.LevelWarn, "refused_since_last_log", "metrics: connection refused",
			"remote", c.RemoteAddr().String(), "served", l.max)
	}
}

// limitedConn gives its slot back when it is closed (once).
type limitedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.active.Add(-1) })
	return c.Conn.Close()
}
