package snapstore

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// Abandon invalidates every snapshot durably (a reopened store, even
// after a crash, still has them invalid) and the store takes no new
// snapshot until it is reopened; if even the invalidation cannot be
// written, Abandon says so.
func TestAbandon(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var mu sync.Mutex
	var told []Info
	opt := Options{DeviceSize: 1 << 20, Capacity: 256 << 10, OnInvalidate: func(in Info) { mu.Lock(); told = append(told, in); mu.Unlock() }}
	f := newCrashFile()
	s := openMem(t, f, opt)
	live := newLive(1<<20, r)
	for _, name := range []string{"a", "b"} {
		if err := s.Create(name, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Abandon(errors.New("read live device: injected")); err != nil {
		t.Fatal(err)
	}
	for _, in := range s.List() {
		if in.Valid || !strings.Contains(in.Reason, "could not be preserved") {
			t.Fatalf("after Abandon: %+v", in)
		}
	}
	if len(told) != 2 {
		t.Fatalf("OnInvalidate told %d snapshots", len(told))
	}
	if err := s.Create("c", time.Now()); !errors.Is(err, ErrFailed) {
		t.Fatalf("create after Abandon: %v", err)
	}
	// Writes need nothing any more.
	if err := s.Preserve(t.Context(), 0, 4096, live.read); err != nil {
		t.Fatal(err)
	}
	s2 := openMem(t, f.crash(r), opt)
	for _, in := range s2.List() {
		if in.Valid {
			t.Fatalf("after a crash: %+v valid again", in)
		}
	}
	if err := s2.Create("c", time.Now()); err != nil {
		t.Fatalf("create on the reopened store: %v", err)
	}

	// The disk went away: the invalidation cannot be recorded.
	f = newCrashFile()
	s = openMem(t, f, opt)
	if err := s.Create("a", time.Now()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.failAt = f.ops
	f.mu.Unlock()
	if err := s.Abandon(errors.New("injected")); err == nil || !strings.Contains(err.Error(), "marking its snapshots invalid failed too") {
		t.Fatalf("Abandon on a dead disk: %v", err)
	}
}
