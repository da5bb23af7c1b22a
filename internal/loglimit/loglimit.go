// Package loglimit limits a log line that input from outside the node can
// repeat at will (a refused connection, say) to one a second: the lines in
// between are counted, and the count goes with the next line written. So
// a flood costs the log a line a second, and the log still tells how big
// the flood was.
package loglimit

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Every is the least time between two lines of one Limiter.
const Every = time.Second

// Limiter decides which occurrences of one kind of line are written. The
// zero value is ready; it is safe for concurrent use.
type Limiter struct {
	mu         sync.Mutex
	last       time.Time // when the last line was written; zero: never
	suppressed int       // occurrences not written since
}

// Allow reports whether the occurrence at now is written and, if it is,
// how many were suppressed since the last line written (for that line).
// The first occurrence is always written.
func (l *Limiter) Allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < Every {
		l.suppressed++
		return false, 0
	}
	suppressed, l.suppressed, l.last = l.suppressed, 0, now
	return true, suppressed
}

// Log writes msg with args at level through lg if l allows a line now,
// adding key with the occurrences since the last line written, this one
// included.
func (l *Limiter) Log(lg *slog.Logger, level slog.Level, key, msg string, args ...any) {
	if ok, suppressed := l.Allow(time.Now()); ok {
		lg.Log(context.Background(), level, msg, append(args, key, suppressed+1)...)
	}
}
