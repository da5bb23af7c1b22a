package pace

import (
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		max, min int64
		busy     bool
		want     int64
	}{
		{0, 0, false, 0},
		{0, 0, true, 0},
		{100, 10, false, 100},
		{100, 10, true, 10},
		{0, 10, true, 10},
		{0, 10, false, 0},
		{5, 10, true, 5}, // the maximum wins
	} {
		if got := Budget(tc.max, tc.min, tc.busy); got != tc.want {
			t.Errorf("Budget(%d, %d, %v) = %d, want %d", tc.max, tc.min, tc.busy, got, tc.want)
		}
	}
}

func TestBucket(t *testing.T) {
	var b Bucket
	now := time.Now()
	if d := b.Delay(now, 1000, 100); d != 0 {
		t.Fatalf("first 100 bytes of a 1000 B/s bucket wait %v", d)
	}
	if d := b.Delay(now, 1000, 1000); d < 900*time.Millisecond || d > 1100*time.Millisecond {
		t.Fatalf("1000 more bytes at 1000 B/s wait %v, want ~1s", d)
	}
	// After a long idle spell the bucket holds at most 100ms of traffic.
	later := now.Add(time.Hour)
	b.Delay(later, 1000, 0)
	if d := b.Delay(later, 1000, 300); d < 150*time.Millisecond {
		t.Fatalf("a burst after idling waits %v: the bucket kept more than 100ms", d)
	}
	if d := b.Delay(later, 0, 1<<30); d != 0 {
		t.Fatalf("unlimited rate waits %v", d)
	}
}

func TestMeterAndETA(t *testing.T) {
	var m Meter
	t0 := time.Unix(1000, 0)
	m.Sample(t0, 0)
	if r := m.Sample(t0.Add(time.Second), 100<<20); r < 99<<20 || r > 101<<20 {
		t.Fatalf("rate %d, want 100 MiB/s", r)
	}
	if r := m.Sample(t0.Add(3*time.Second), 300<<20); r < 99<<20 || r > 101<<20 {
		t.Fatalf("rate after the window moved %d, want 100 MiB/s", r)
	}
	if ETA(100, 10) != 10*time.Second || ETA(100, 0) != 0 || ETA(0, 10) != 0 {
		t.Fatal("ETA")
	}
}
