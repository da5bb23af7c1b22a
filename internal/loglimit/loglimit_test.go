package loglimit

import (
	"sync"
	"testing"
	"time"
)

func TestAllow(t *testing.T) {
	var l Limiter
	t0 := time.Unix(1000, 0)
	if ok, n := l.Allow(t0); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := range 1000 {
		if ok, _ := l.Allow(t0.Add(time.Duration(i) * time.Millisecond)); ok {
			t.Fatalf("occurrence %d within a second of the last line was written", i)
		}
	}
	if ok, n := l.Allow(t0.Add(Every)); !ok || n != 1000 {
		t.Fatalf("a second later: %v, suppressed %d, want true, 1000", ok, n)
	}
	if ok, n := l.Allow(t0.Add(3 * Every)); !ok || n != 0 {
		t.Fatalf("after a quiet spell: %v, suppressed %d, want true, 0", ok, n)
	}
}

// Under concurrent callers every occurrence is either written or counted
// once.
func TestAllowConcurrent(t *testing.T) {
	var l Limiter
	var mu sync.Mutex
	written, counted := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				ok, n := l.Allow(time.Now())
				mu.Lock()
				if ok {
					written++
					counted += n
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	time.Sleep(Every)
	ok, n := l.Allow(time.Now())
	if !ok {
		t.Fatal("not written after a quiet second")
	}
	if got := written + counted + n; got != 8000 {
		t.Fatalf("%d written + %d counted + %d at the end = %d, want 8000", written, counted, n, got)
	}
}
