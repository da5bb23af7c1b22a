package faultnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestNetwork(t *testing.T) {
	base := runtime.NumGoroutine()
	n := NewNetwork(0)
	t.Logf("faultnet network seed %d", n.Seed())
	ln, err := n.Listen("b")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // b echoes
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); io.Copy(c, c) }()
		}
	}()
	ctx := context.Background()
	connect := func(from string) net.Conn {
		t.Helper()
		c, err := n.Dial(ctx, from, "b")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ab, cb := connect("a"), connect("c")
	for _, c := range []net.Conn{ab, cb} {
		if _, err := ping(c, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Addr("a", "nowhere"); err == nil {
		t.Error("Addr to an unknown node: no error")
	}

	n.Partition("b", "a") // either order
	if _, err := ping(ab, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a→b during partition: %v, want a timeout", err)
	}
	if _, err := ping(cb, 2*time.Second); err != nil {
		t.Errorf("c→b during a|b partition: %v", err)
	}
	n.Heal("a", "b")
	ab.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(ab, make([]byte, 1)); err != nil {
		t.Errorf("held ping after heal: %v", err)
	}

	const delay = 20 * time.Millisecond
	n.SetLink("a", "b", Link{Delay: delay})
	n.SetLink("b", "a", Link{Delay: delay})
	if rtt, err := ping(ab, 2*time.Second); err != nil || rtt < 2*delay {
		t.Errorf("a→b with %v each way: rtt %v, %v", delay, rtt, err)
	}
	if rtt := bestPing(t, cb, 5); rtt >= 2*delay {
		t.Errorf("c→b unshaped: best rtt %v", rtt)
	}

	n.Isolate("b")
	if _, err := ping(cb, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("c→b with b isolated: %v, want a timeout", err)
	}
	n.HealAll()
	cb.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(cb, make([]byte, 1)); err != nil {
		t.Errorf("held ping after HealAll: %v", err)
	}

	n.Cut("b", "a")
	ab.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := ab.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a→b after Cut: %v, want EOF or reset", err)
	}
	if _, err := ping(cb, 2*time.Second); err != nil {
		t.Errorf("c→b after a|b cut: %v", err)
	}
	if s := n.Stats("a", "b"); s.Cut != 1 || s.Accepted != 1 {
		t.Errorf("a→b stats %+v, want 1 accepted, 1 cut", s)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	ab.Close()
	cb.Close()
	wg.Wait()
	if _, err := n.Dial(ctx, "a", "b"); !errors.Is(err, ErrClosed) {
		t.Errorf("Dial after Close: %v, want ErrClosed", err)
	}
	if !eventually(2*time.Second, func() bool { return runtime.NumGoroutine() <= base }) {
		t.Errorf("%d goroutines after Close, %d before", runtime.NumGoroutine(), base)
	}
}
