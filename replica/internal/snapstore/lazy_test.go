package snapstore

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A lazy snapshot's copies skip the commit's fdatasync (on a real file),
// a durable snapshot beside it brings the syncs back, and the flusher
// syncs the lazy copies and clears the header's flag by itself.
func TestLazyCopiesSkipSync(t *testing.T) {
	const size = 4 << 20
	r := rand.New(rand.NewPCG(5, 1))
	live := newFileLive(t, size, r)
	opt := Options{DeviceSize: size, Capacity: 2 << 20, bootID: func() [16]byte { return [16]byte{1} }, lazySync: -1}
	s := mustOpen(t, filepath.Join(t.TempDir(), "lazy.snap"), opt)
	defer s.Close()
	if err := s.CreateLazy("l", time.Now()); err != nil {
		t.Fatal(err)
	}
	img := live.image(t, size)
	syncs := s.syncs.Load()
	for i := range 8 {
		writeLive(t, s, live, randBytes(r, 4096), int64(i)*DefaultChunkSize)
	}
	st := s.Stats()
	if got := s.syncs.Load() - syncs; got != 0 || st.LazyCopies != 8 || !st.Unsynced {
		t.Fatalf("8 lazy copies: %d commit syncs, stats %+v; want 0 syncs, 8 lazy copies, unsynced", got, st)
	}
	if in := s.List(); len(in) != 1 || !in[0].Lazy || !in[0].Valid {
		t.Fatalf("list: %+v", in)
	}
	if !bytes.Equal(readSnap(t, s, "l", live, size), img) {
		t.Fatal("the lazy snapshot reads wrong")
	}
	s.flushLazy()
	if st := s.Stats(); st.Unsynced {
		t.Fatalf("after a flush with no copy meanwhile: %+v", st)
	}

	// A durable snapshot: every copy is synced again (it serves both).
	if err := s.Create("d", time.Now()); err != nil {
		t.Fatal(err)
	}
	syncs = s.syncs.Load()
	for i := range 4 {
		writeLive(t, s, live, randBytes(r, 4096), int64(8+i)*DefaultChunkSize)
	}
	if got := s.syncs.Load() - syncs; got < 1 || s.Stats().LazyCopies != 8 || s.Stats().Unsynced {
		t.Fatalf("copies with a durable snapshot: %d commit syncs, %+v", got, s.Stats())
	}
	// Deleted: lazy again.
	if err := s.Delete("d"); err != nil {
		t.Fatal(err)
	}
	syncs = s.syncs.Load()
	writeLive(t, s, live, randBytes(r, 4096), 20*DefaultChunkSize)
	if got := s.syncs.Load() - syncs; got != 0 || !s.Stats().Unsynced {
		t.Fatalf("after deleting the durable one: %d syncs, %+v", got, s.Stats())
	}

	// The flusher, on a timer.
	s2 := mustOpen(t, filepath.Join(t.TempDir(), "lazy2.snap"), Options{DeviceSize: size, Capacity: 1 << 20,
		bootID: opt.bootID, lazySync: 10 * time.Millisecond})
	defer s2.Close()
	if err := s2.CreateLazy("l", time.Now()); err != nil {
		t.Fatal(err)
	}
	writeLive(t, s2, live, randBytes(r, 4096), 0)
	for deadline := time.Now().Add(10 * time.Second); s2.Stats().Unsynced; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the flusher never cleared the flag")
		}
	}
}

// What a lazy snapshot survives: a crash of the process (same boot: the
// page cache holds its copies) always; the system going down only once its
// copies were flushed. Otherwise it comes back invalid, with the reason,
// and the caller is told.
func TestLazyPowerLoss(t *testing.T) {
	const size = 1 << 20
	var boot byte = 1
	var told []Info
	opt := Options{DeviceSize: size, Capacity: 512 << 10, lazySync: -1,
		bootID:       func() [16]byte { return [16]byte{0: boot} },
		OnInvalidate: func(in Info) { told = append(told, in) }}
	r := rand.New(rand.NewPCG(6, 1))

	// setup: a lazy snapshot and writes into 4 chunks after it.
	setup := func() (*crashFile, *Store, *memLive, []byte) {
		f := newCrashFile()
		live := newLive(size, r)
		s := openMem(t, f, opt)
		if err := s.CreateLazy("l", time.Now()); err != nil {
			t.Fatal(err)
		}
		img := live.clone()
		for i := range 4 {
			off := int64(i) * DefaultChunkSize
			if err := s.Preserve(ctx, off, 4096, live.read); err != nil {
				t.Fatal(err)
			}
			live.write(randBytes(r, 4096), off)
		}
		if !s.Stats().Unsynced {
			t.Fatalf("lazy copies made, but the header does not say so: %+v", s.Stats())
		}
		return f, s, live, img
	}
	check := func(what string, s *Store, live *memLive, img []byte) {
		t.Helper()
		in := s.List()
		if len(in) != 1 || !in[0].Valid {
			t.Fatalf("%s: %+v, want l valid", what, in)
		}
		p := make([]byte, size)
		if err := s.ReadAt(ctx, "l", p, 0, live.read); err != nil || !bytes.Equal(p, img) {
			t.Fatalf("%s: l reads wrong (err %v)", what, err)
		}
	}

	// The process dies; same boot.
	f, _, live, img := setup()
	check("after a kill", openMem(t, f, opt), live, img)
	// and then the system goes down: the reopen synced them.
	boot++
	check("after a kill, then a power loss", openMem(t, f.crash(r), opt), live, img)

	// The system goes down with the copies unsynced.
	f, _, _, _ = setup()
	boot++
	told = nil
	s := openMem(t, f.crash(r), opt)
	in := s.List()
	if len(in) != 1 || in[0].Valid || !strings.Contains(in[0].Reason, "power loss") {
		t.Fatalf("after a power loss with lazy copies unsynced: %+v", in)
	}
	if len(told) != 1 || told[0].Name != "l" {
		t.Fatalf("OnInvalidate told %+v", told)
	}
	if err := s.CreateLazy("m", time.Now()); err != nil {
		t.Fatalf("a new snapshot after the loss: %v", err)
	}

	// The same after a flush: nothing is lost.
	f, s, live, img = setup()
	s.flushLazy()
	boot++
	check("after a flush, then a power loss", openMem(t, f.crash(r), opt), live, img)

	// A durable snapshot taken meanwhile syncs everything first.
	f, s, live, img = setup()
	if err := s.Create("d", time.Now()); err != nil {
		t.Fatal(err)
	}
	boot++
	s = openMem(t, f.crash(r), opt)
	if in := s.List(); len(in) != 2 || !in[0].Valid || !in[1].Valid {
		t.Fatalf("a durable snapshot after lazy copies, then a power loss: %+v", in)
	}
	p := make([]byte, size)
	if err := s.ReadAt(ctx, "l", p, 0, live.read); err != nil || !bytes.Equal(p, img) {
		t.Fatalf("l reads wrong (err %v)", err)
	}
}

// A lazy snapshot taken with the live device unsynced (no fdatasync at its
// point) sets flagUnsynced with its entry, durably: a power loss before
// the live device and the store are synced invalidates it, a kill does
// not. Clearing the flag (the flusher, Open, Close) syncs the live device
// first; if that fails the flag stays. Beside a durable snapshot, or with
// no way to sync the live device, it is refused and nothing changes.
func TestLazyUnsyncedCreate(t *testing.T) {
	const size = 1 << 20
	var boot byte = 1
	liveSyncs := 0
	var liveErr error
	opt := Options{DeviceSize: size, Capacity: 512 << 10, lazySync: -1,
		bootID:   func() [16]byte { return [16]byte{0: boot} },
		SyncLive: func() error { liveSyncs++; return liveErr }}
	r := rand.New(rand.NewPCG(7, 1))
	create := func() (*crashFile, *Store) {
		t.Helper()
		f := newCrashFile()
		s := openMem(t, f, opt)
		liveSyncs = 0
		if err := s.CreateLazyUnsynced("l", time.Now()); err != nil {
			t.Fatal(err)
		}
		if st := s.Stats(); !st.Unsynced || liveSyncs != 0 {
			t.Fatalf("after CreateLazyUnsynced: %+v, %d syncs of the live device; want the flag set, none", st, liveSyncs)
		}
		return f, s
	}
	valid := func(what string, s *Store, want bool) {
		t.Helper()
		in := s.List()
		if len(in) != 1 || in[0].Valid != want || !want && !strings.Contains(in[0].Reason, "power loss") {
			t.Fatalf("%s: %+v, want valid %v", what, in, want)
		}
	}

	// A power loss right after: invalid, though no copy was made.
	f, _ := create()
	boot++
	valid("power loss after an unsynced lazy create", openMem(t, f.crash(r), opt), false)

	// A kill: valid; Open synced the live device before clearing the flag,
	// so a power loss after that loses nothing.
	f, _ = create()
	liveSyncs = 0
	s := openMem(t, f, opt)
	valid("kill after an unsynced lazy create", s, true)
	if liveSyncs != 1 || s.Stats().Unsynced {
		t.Fatalf("Open after the kill: %d syncs of the live device, %+v", liveSyncs, s.Stats())
	}
	boot++
	valid("kill, reopen, then a power loss", openMem(t, f.crash(r), opt), true)

	// The flusher: a failing live sync keeps the flag; then it clears it.
	f, s = create()
	liveErr = errors.New("disk gone")
	s.flushLazy()
	if !s.Stats().Unsynced || s.Stats().Failed != "" {
		t.Fatalf("a failed sync of the live device: %+v; want the flag kept, the store fine", s.Stats())
	}
	liveErr = nil
	s.flushLazy()
	if s.Stats().Unsynced || liveSyncs != 2 {
		t.Fatalf("after a flush: %+v, %d syncs of the live device", s.Stats(), liveSyncs)
	}
	boot++
	valid("flush, then a power loss", openMem(t, f.crash(r), opt), true)

	// Under the flag another lazy snapshot and a delete are written
	// without any sync (each one cost a journal commit that wrote back the
	// lazy copies: 0.5 s and 1.1 s under load); after a power loss every
	// snapshot is invalid or gone, a deleted one possibly back, invalid.
	f, s = create()
	syncs := f.syncs
	if err := s.CreateLazy("m", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("l"); err != nil {
		t.Fatal(err)
	}
	if f.syncs != syncs {
		t.Fatalf("a lazy create and a delete under the flag synced the store %d times", f.syncs-syncs)
	}
	if in := s.List(); len(in) != 1 || in[0].Name != "m" || !in[0].Valid {
		t.Fatalf("after the delete: %+v", in)
	}
	boot++
	for _, in := range openMem(t, f.crash(r), opt).List() {
		if in.Valid {
			t.Fatalf("after a power loss under the flag: %+v is valid", in)
		}
	}

	// Close syncs the live device too.
	f, s = create()
	if err := s.Close(); err != nil || liveSyncs != 1 {
		t.Fatalf("Close: %v, %d syncs of the live device", err, liveSyncs)
	}
	boot++
	valid("close, then a power loss", openMem(t, f.crash(r), opt), true)

	// Refused beside a durable snapshot (a power loss would take it too),
	// and with no SyncLive.
	s = openMem(t, newCrashFile(), opt)
	if err := s.Create("d", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateLazyUnsynced("l", time.Now()); !errors.Is(err, ErrLiveUnsynced) || len(s.List()) != 1 || s.Stats().Unsynced {
		t.Fatalf("beside a durable snapshot: %v, %+v", err, s.List())
	}
	noSync := opt
	noSync.SyncLive = nil
	s = openMem(t, newCrashFile(), noSync)
	if err := s.CreateLazyUnsynced("l", time.Now()); !errors.Is(err, ErrLiveUnsynced) || len(s.List()) != 0 {
		t.Fatalf("without SyncLive: %v, %+v", err, s.List())
	}
	if err := s.CreateLazy("l", time.Now()); err != nil {
		t.Fatal(err)
	}
}
