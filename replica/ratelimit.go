package replica

import (
	"context"
	"time"
)

// appBusyWindow: application writes within this long make resync yield to
// ResyncMinRate.
const appBusyWindow = 200 * time.Millisecond

// ResyncBudget is the resync controller's decision, a plain function: the
// rate resync may use now (bytes/s, 0 = unlimited), given the configured
// maximum and minimum and whether application writes are active. While the
// application writes, resync yields down to minRate (DRBD's c-min-rate);
// otherwise it may use maxRate.
func ResyncBudget(maxRate, minRate int64, appBusy bool) int64 {
	if appBusy && minRate > 0 && (maxRate == 0 || minRate < maxRate) {
		return minRate
	}
	return maxRate
}

// tokenBucket paces resync and verify traffic. Not safe for concurrent use;
// each session's resync goroutine owns one.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

// delay takes n bytes at rate (bytes/s) and says how long to wait before
// sending them; the bucket holds at most 100ms of traffic, so a burst after
// an idle period is bounded.
func (b *tokenBucket) delay(now time.Time, rate, n int64) time.Duration {
	if rate <= 0 {
		b.last = now
		b.tokens = 0
		return 0
	}
	burst := max(float64(rate)/10, float64(n))
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*float64(rate))
	}
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / float64(rate) * float64(time.Second))
}

// pace waits until n more bytes of resync or verify traffic may go.
func (s *session) pace(n int64) error {
	nd := s.p.n
	busy := time.Since(time.Unix(0, nd.lastAppWrite.Load())) < appBusyWindow
	rate := ResyncBudget(nd.cfg.ResyncRate, nd.cfg.ResyncMinRate, busy)
	d := s.sy.bucket.delay(time.Now(), rate, n)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// rateMeter estimates a transfer rate from progress samples: a moving
// window of about two seconds.
type rateMeter struct {
	t0, t1 time.Time
	b0, b1 int64
}

// sample records done bytes at now and returns the rate in bytes/s.
func (m *rateMeter) sample(now time.Time, done int64) int64 {
	if m.t0.IsZero() || done < m.b1 {
		m.t0, m.b0 = now, done
	}
	if now.Sub(m.t0) > 2*time.Second {
		m.t0, m.b0 = m.t1, m.b1
	}
	m.t1, m.b1 = now, done
	dt := now.Sub(m.t0).Seconds()
	if dt < 0.05 {
		return 0
	}
	return int64(float64(done-m.b0) / dt)
}

// ETA is the remaining time for left bytes at rate bytes/s (0 if unknown).
func ETA(left, rate int64) time.Duration {
	if rate <= 0 || left <= 0 {
		return 0
	}
	return time.Duration(float64(left) / float64(rate) * float64(time.Second))
}

// waitCtx sleeps d or until ctx ends.
func waitCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
