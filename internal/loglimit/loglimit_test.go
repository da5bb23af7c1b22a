package loglimit

import (
	"bytes"
	"log/slog"
	"strings"
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

// Log writes the first line and then none within a second, and the next
// line counts the occurrences since the last written, itself included.
func TestLog(t *testing.T) {
	var buf bytes.Buffer
	lg := slog.New(slog.NewTextHandler(&buf, nil))
	var l Limiter
	for range 5 {
		l.Log(lg, slog.LevelWarn, "refused_since_last_log", "refused", "k", "v")
	}
	if n := strings.Count(buf.String(), "msg=refused"); n != 1 || !strings.Contains(buf.String(), "k=v refused_since_last_log=1") {
		t.Fatalf("5 calls at once wrote %d lines:\n%s", n, buf.String())
	}
	l.mu.Lock()
	l.last = l.last.Add(-Every)
	l.mu.Unlock()
	l.Log(lg, slog.LevelWarn, "refused_since_last_log", "refused")
	if !strings.Contains(buf.String(), "refused_since_last_log=5") {
		t.Fatalf("the line a second later does not count the 4 left out and itself:\n%s", buf.String())
	}
}
