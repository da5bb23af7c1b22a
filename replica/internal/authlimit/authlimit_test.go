package authlimit

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var l Limiter
	now := time.Unix(1000, 0)
	if d, ok := l.Enter("10.0.0.1", time.Second, now); !ok || d != 0 {
		t.Fatalf("a fresh address waits %v (ok %v)", d, ok)
	}
	l.Leave("10.0.0.1", true, false, now)
	var delays []time.Duration
	for range 5 {
		d, ok := l.Enter("10.0.0.1", 500*time.Millisecond, now)
		if !ok {
			t.Fatal("a penalized address was refused outright")
		}
		// Only one handshake of a penalized address runs at a time.
		if _, ok := l.Enter("10.0.0.1", time.Second, now); ok {
			t.Fatal("a second concurrent handshake of a penalized address was let in")
		}
		delays = append(delays, d)
		l.Leave("10.0.0.1", true, false, now)
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", delays, want)
		}
	}
	// Other addresses are not affected; a success forgets; so does quiet.
	if d, ok := l.Enter("10.0.0.2", time.Second, now); !ok || d != 0 {
		t.Fatalf("another address waits %v", d)
	}
	l.Leave("10.0.0.2", false, true, now)
	if d, _ := l.Enter("10.0.0.1", time.Second, now.Add(Forget+time.Second)); d != 0 {
		t.Fatalf("an address quiet for longer than Forget still waits %v", d)
	}
	d, _ := l.Enter("10.0.0.3", time.Second, now)
	l.Leave("10.0.0.3", true, false, now)
	d, _ = l.Enter("10.0.0.3", time.Second, now)
	l.Leave("10.0.0.3", false, true, now)
	if d, _ = l.Enter("10.0.0.3", time.Second, now); d != 0 {
		t.Fatalf("a success did not forget the address: %v", d)
	}
}

// The table of failing addresses is bounded.
func TestLimiterBounded(t *testing.T) {
	var l Limiter
	now := time.Unix(1000, 0)
	for i := range MaxIPs + 100 {
		ip := time.Duration(i).String()
		l.Enter(ip, time.Second, now)
		l.Leave(ip, true, false, now)
	}
	if len(l.m) > MaxIPs {
		t.Fatalf("%d addresses remembered, bound %d", len(l.m), MaxIPs)
	}
}
