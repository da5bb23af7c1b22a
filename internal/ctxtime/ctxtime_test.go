package ctxtime

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	start := time.Now()
	if err := Sleep(context.Background(), 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("slept %v, want at least 30ms", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	if err := Sleep(ctx, time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sleep past its context's end: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Sleep outlived its context by %v", d)
	}
	if err := Sleep(ctx, -time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sleep(<=0) on an ended context: %v", err)
	}
	if err := Sleep(context.Background(), 0); err != nil {
		t.Fatalf("Sleep(0): %v", err)
	}
}
