package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/faultnet"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"512", 512},
		{"100MiB", 100 << 20},
		{"100M", 100 << 20},
		{"1.5GB/s", 1500000000},
		{"800Mbit", 100000000},
		{"64 KiB", 64 << 10},
	} {
		got, err := parseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "fast", "10XB", "-1", "1.2.3M"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q): no error", bad)
		}
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--target", "127.0.0.1:7789", "--delay", "5ms", "--bandwidth", "100MiB",
		"--corrupt", "0.001", "--seed", "9", "--down", "delay=7ms, jitter=1ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	wantUp := faultnet.Link{Delay: 5 * time.Millisecond, Bandwidth: 100 << 20, CorruptProb: 0.001, LossPenalty: faultnet.DefaultLossPenalty}
	wantDown := wantUp
	wantDown.Delay, wantDown.Jitter = 7*time.Millisecond, time.Millisecond
	if o.up != wantUp || o.down != wantDown || o.seed != 9 || o.listen != "127.0.0.1:7001" {
		t.Errorf("parsed %+v", o)
	}
	for _, bad := range [][]string{
		{},
		{"--target", "x:1", "--corrupt", "2"},
		{"--target", "x:1", "--up", "speed=1"},
		{"--target", "x:1", "--control", "0.0.0.0:80"},
		{"--target", "x:1", "extra"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): no error", bad)
		}
	}
	if _, err := parseFlags([]string{"--help"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

func TestRunControl(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	o := options{listen: "127.0.0.1:0", target: ln.Addr().String(), control: "127.0.0.1:0", seed: 1}
	go func() {
		done <- run(ctx, o, slog.New(slog.DiscardHandler), func(p, c string) { addrs <- [2]string{p, c} })
	}()
	var proxy, control string
	select {
	case a := <-addrs:
		proxy, control = a[0], "http://"+a[1]
	case err := <-done:
		t.Fatal(err)
	}
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(control + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s %s", path, resp.Status, b)
		}
		return string(b)
	}
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping := func(timeout time.Duration) (time.Duration, error) {
		start := time.Now()
		c.SetDeadline(start.Add(timeout))
		if _, err := c.Write([]byte{1}); err != nil {
			return 0, err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return time.Since(start), err
	}
	if _, err := ping(2 * time.Second); err != nil {
		t.Fatal(err)
	}

	get("/partition")
	if _, err := ping(200 * time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ping during /partition: %v, want a timeout", err)
	}
	var st struct {
		faultnet.Stats
		Partitioned, Stalled bool
	}
	if err := json.Unmarshal([]byte(get("/stats")), &st); err != nil || !st.Partitioned || st.Accepted != 1 {
		t.Errorf("/stats: %+v, %v", st, err)
	}
	get("/heal")
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Errorf("held ping after /heal: %v", err)
	}

	if out := get("/link?dir=up&delay=30ms"); !strings.Contains(out, "up: delay=30ms") {
		t.Errorf("/link: %q", out)
	}
	if rtt, err := ping(2 * time.Second); err != nil || rtt < 30*time.Millisecond {
		t.Errorf("ping after /link delay=30ms: %v, %v", rtt, err)
	}
	resp, err := http.Get(control + "/link?dir=sideways&delay=1ms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad /link: %s", resp.Status)
	}

	get("/cut")
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read after /cut: %v, want EOF or reset", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}
