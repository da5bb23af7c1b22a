// Package pace is the resync controller's arithmetic: how fast resync and
// verify may go (Budget, Bucket) and how fast they went (Meter, ETA). Logic
// only: no locks, no clock reads (the caller passes the time), no sleeping.
package pace

import "time"

// AppBusyWindow: application writes within this long make resync yield to
// its minimum rate.
const AppBusyWindow = 200 * time.Millisecond

// Budget is the rate resync may use now (bytes/s, 0 = unlimited), given the
// configured maximum and minimum and whether application writes are
// active. While the application writes, resync yields down to minRate
// (DRBD's c-min-rate); otherwise it may use maxRate.
func Budget(maxRate, minRate int64, appBusy bool) int64 {
	if appBusy && minRate > 0 && (maxRate == 0 || minRate < maxRate) {
		return minRate
	}
	return maxRate
}

// Bucket paces resync and verify traffic: a token bucket holding at most
// 100ms of traffic, so a burst after an idle period is bounded. Not safe
// for concurrent use; each session's resync goroutine owns one.
type Bucket struct {
	tokens float64
	last   time.Time
}

// Delay takes n bytes at rate (bytes/s; 0 = unlimited) and says how long to
// wait before sending them.
func (b *Bucket) Delay(now time.Time, rate, n int64) time.Duration {
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

// Meter estimates a transfer rate from progress samples: a moving window of
// about two seconds.
type Meter struct {
	t0, t1 time.Time
	b0, b1 int64
}

// Sample records done bytes at now and returns the rate in bytes/s.
func (m *Meter) Sample(now time.Time, done int64) int64 {
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
