package snapstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// zeroRec is a store file that records the ranges written with zeroes.
// hold, if set, is called before each zero write.
type zeroRec struct {
	file
	hold  func()
	mu    sync.Mutex
	zeros [][2]int64
}

func (z *zeroRec) WriteAt(p []byte, off int64) (int, error) {
	if len(p) > 0 && !bytes.ContainsFunc(p, func(r rune) bool { return r != 0 }) {
		if z.hold != nil {
			z.hold()
		}
		z.mu.Lock()
		z.zeros = append(z.zeros, [2]int64{off, off + int64(len(p))})
		z.mu.Unlock()
	}
	return z.file.WriteAt(p, off)
}

// covered reports whether zero writes covered [lo, hi).
func (z *zeroRec) covered(lo, hi int64) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	for lo < hi {
		next := lo
		for _, r := range z.zeros {
			if r[0] <= lo && r[1] > next {
				next = r[1]
			}
		}
		if next == lo {
			return false
		}
		lo = next
	}
	return true
}

// openPrewriting creates a store file in a temporary directory with
// pre-writing on, paced by pace, through a zeroRec.
func openPrewriting(t *testing.T, opt Options, pace func(int64) time.Duration, hold func()) (*Store, *zeroRec, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store")
	f, _, err := openOS(path)
	if err != nil {
		t.Fatal(err)
	}
	z := &zeroRec{file: f, hold: hold}
	opt.Prewrite, opt.PrewritePace = true, pace
	s, err := openOn(z, path, opt)
	if err != nil {
		t.Fatal(err)
	}
	return s, z, path
}

// A new store is pre-written while copies are made into it: every slot
// group is either written with zeroes whole or reached by a copy first,
// the pre-writing ends by itself, no copy is clobbered (every snapshot
// reads back as it was, before and after a reopen), and a reopened store
// is not pre-written again.
func TestPrewriteBesideCopies(t *testing.T) {
	const size, chunk = 8 << 20, DefaultChunkSize
	opt := Options{DeviceSize: size, Capacity: 4 * size} // 512 slots: 4 groups
	// Slow enough that copies overtake it: 30 ms before each 8 MiB group.
	s, z, path := openPrewriting(t, opt, func(int64) time.Duration { return 30 * time.Millisecond }, nil)
	r := rand.New(rand.NewPCG(7, 7))
	live := newLive(size, r)
	ctx := context.Background()
	images := map[string][]byte{}
	for i, name := range []string{"a", "b", "c"} {
		if err := s.Create(name, time.Now()); err != nil {
			t.Fatal(err)
		}
		images[name] = live.clone()
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				wr := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				for range 40 {
					off := wr.Int64N(size/chunk) * chunk
					p := randBytes(wr, 4096)
					if err := s.Preserve(ctx, off, 4096, live.read); err != nil {
						t.Error(err)
						return
					}
					live.write(p, off)
				}
			}()
		}
		wg.Wait()
	}
	select {
	case <-s.pre.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the pre-writing did not end")
	}
	if left := s.Stats().PrewriteLeft; left != 0 {
		t.Errorf("pre-writing ended with %d bytes left in Stats", left)
	}
	s.tab.Lock()
	hw := int64(s.allocHW)
	s.tab.Unlock()
	if hw == 0 {
		t.Fatal("no copy was made")
	}
	lay := s.lay
	written := 0
	for lo := int64(0); lo < lay.slots; lo += descPerPage {
		g0, g1 := lay.groupsOff+lo/descPerPage*lay.groupBytes, lay.groupEnd(min(lo+descPerPage, lay.slots))
		switch {
		case z.covered(g0, g1):
			written++
		case lo >= hw:
			t.Errorf("slot group from slot %d (%d-%d) was neither pre-written nor reached by a copy (copies reached slot %d)", lo, g0, g1, hw)
		}
	}
	t.Logf("%d of %d slot groups pre-written; copies reached slot %d", written, (lay.slots+descPerPage-1)/descPerPage, hw)
	if written == 0 {
		t.Errorf("no slot group was pre-written (copies reached slot %d of %d)", hw, lay.slots)
	}
	check := func(s *Store) {
		t.Helper()
		for name, img := range images {
			got := make([]byte, size)
			if err := s.ReadAt(ctx, name, got, 0, live.read); err != nil {
				t.Fatalf("read %s: %v", name, err)
			}
			if !bytes.Equal(got, img) {
				t.Fatalf("snapshot %s does not read back as it was taken", name)
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.pre != nil {
		t.Error("a reopened store is pre-written again")
	}
	check(s2)
}

// A copy that needs a slot of the group being pre-written waits for the
// zero write in progress, the pre-writing gives that group up (its
// copies write it) and goes on above it; Close stops it.
func TestPrewriteGivesWay(t *testing.T) {
	const size = 4 << 20
	opt := Options{DeviceSize: size, Capacity: 4 * size} // 1024 slots: 8 groups
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	s, z, _ := openPrewriting(t, opt, nil, func() {
		once.Do(func() {
			close(entered)
			<-release // the first group's first zero write waits here
		})
	})
	<-entered
	r := rand.New(rand.NewPCG(1, 2))
	live := newLive(size, r)
	if err := s.Create("a", time.Now()); err != nil {
		t.Fatal(err)
	}
	img := live.clone()
	done := make(chan error, 1)
	go func() { done <- s.Preserve(context.Background(), 0, 4096, live.read) }()
	select {
	case err := <-done:
		t.Fatalf("the copy took a slot of the group being pre-written (err %v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the copy still waits after the zero write in progress")
	}
	live.write(randBytes(r, 4096), 0)
	got := make([]byte, 4096)
	if err := s.ReadAt(context.Background(), "a", got, 0, live.read); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img[:4096]) {
		t.Fatal("the copy made after the pre-writing gave way does not read back")
	}
	select {
	case <-s.pre.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the pre-writing did not end")
	}
	lay := s.lay
	if z.covered(lay.groupsOff, lay.groupEnd(descPerPage)) {
		t.Error("the first slot group was written whole: the pre-writing did not give it up")
	}
	if !z.covered(lay.groupsOff+lay.groupBytes, lay.total) {
		t.Error("the groups above the given-up one were not pre-written")
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
}

// Close stops the pre-writing in the middle of the store.
func TestPrewriteStopsAtClose(t *testing.T) {
	const size = 4 << 20
	opt := Options{DeviceSize: size, Capacity: 16 * size}
	s, z, _ := openPrewriting(t, opt, func(int64) time.Duration { return time.Hour }, nil)
	if left, want := s.Stats().PrewriteLeft, s.lay.total-s.lay.groupsOff; left != want {
		t.Errorf("Stats: %d bytes left to pre-write, want the slot groups' %d", left, want)
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with the pre-writing waiting for its pace", d)
	}
	if z.covered(s.lay.groupsOff, s.lay.groupsOff+1) {
		t.Error("a group was written although the pace said to wait an hour")
	}
}
