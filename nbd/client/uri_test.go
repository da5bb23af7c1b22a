package client

import (
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	good := []struct {
		in   string
		want Target
	}{
		{"nbd://127.0.0.1/r0@snap1", Target{Network: "tcp", Address: "127.0.0.1:10809", Export: "r0@snap1"}},
		{"nbd://127.0.0.1:10900/r0", Target{Network: "tcp", Address: "127.0.0.1:10900", Export: "r0"}},
		{"nbd://[::1]:10900/", Target{Network: "tcp", Address: "[::1]:10900"}},
		{"nbds://host/a%20b", Target{Network: "tcp", Address: "host:10809", Export: "a b", TLS: true}},
		{"nbd+unix:///r0@s?socket=/run/repd/r0.nbd", Target{Network: "unix", Address: "/run/repd/r0.nbd", Export: "r0@s"}},
		{"nbds+unix://?socket=/tmp/s", Target{Network: "unix", Address: "/tmp/s", TLS: true}},
	}
	for _, g := range good {
		got, err := ParseURI(g.in)
		if err != nil || got != g.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", g.in, got, err, g.want)
		}
		if back, err := ParseURI(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q through %q: %+v, %v", g.in, got.String(), back, err)
		}
	}
	bad := map[string]string{
		"http://host/x":                           "scheme",
		"nbd:///x":                                "no host",
		"nbd://host/x?socket=/s":                  "takes no query",
		"nbd+unix:///x":                           "socket",
		"nbd+unix://host/x?socket=/s":             "has no host",
		"nbd+unix:///x?socket=/s&tls=on":          "unknown query parameter",
		"nbd://user@host/x":                       "user",
		"nbd://host/" + strings.Repeat("x", 5000): "longer than",
	}
	for in, want := range bad {
		if _, err := ParseURI(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURI(%.40q): %v, want an error containing %q", in, err, want)
		}
	}
}

func TestIntervals(t *testing.T) {
	var s intervals
	for _, r := range [][2]int64{{10, 20}, {30, 40}, {20, 30}, {0, 5}, {5, 10}, {50, 60}} {
		if err := s.add(r[0], r[1]); err != nil {
			t.Fatalf("add %v: %v", r, err)
		}
	}
	if len(s) != 2 || s[0].lo != 0 || s[0].hi != 40 || s.total() != 50 {
		t.Fatalf("intervals %+v", s)
	}
	for _, r := range [][2]int64{{39, 41}, {0, 1}, {45, 55}, {55, 56}, {35, 36}} {
		if err := s.add(r[0], r[1]); err == nil {
			t.Errorf("overlapping %v accepted", r)
		}
	}
	// A range that fills a gap next to a range it would overlap.
	s = nil
	s.add(0, 10)
	s.add(20, 30)
	if err := s.add(10, 25); err == nil {
		t.Fatal("[10,25) overlapping [20,30) accepted")
	}
}
