package snapstore

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

// A Preserve of a long range after a fresh snapshot (what a TRIM or a
// WRITE_ZEROES of the whole device does) holds at most maxOwnPending copies
// that are not yet durable: it settles them as it goes, where it used to
// keep one pending entry per chunk until the end (a 4 GiB range of 64 KiB
// chunks: 65,536 entries, about 13 MiB). Every chunk is still copied, and
// the snapshot still reads what the device held.
func TestPreserveLongRangeBounded(t *testing.T) {
	const chunk, chunks = 4096, 8 * maxOwnPending
	const size = chunk * chunks
	s := openMem(t, newCrashFile(), Options{DeviceSize: size, ChunkSize: chunk, Capacity: size})
	defer s.Close()
	live := newLive(size, rand.New(rand.NewPCG(7, 7)))
	before := live.clone()
	if err := s.Create("a", time.Now()); err != nil {
		t.Fatal(err)
	}
	peak, calls := 0, 0
	read := func(p []byte, off int64) error {
		// Called once per chunk copied, with the copies this call made
		// before it in the store's table until they are durable.
		calls++
		s.tab.Lock()
		peak = max(peak, len(s.inflight))
		s.tab.Unlock()
		return live.read(p, off)
	}
	base := s.Stats()
	if err := s.Preserve(ctx, 0, size, read); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	t.Logf("%d chunks copied in %d commit rounds; at most %d copies pending at once (bound %d)",
		st.Copies-base.Copies, st.CommitRounds-base.CommitRounds, peak, maxOwnPending)
	if calls != chunks || st.Copies-base.Copies != chunks {
		t.Fatalf("%d reads of the live device and %d copies for %d chunks", calls, st.Copies-base.Copies, chunks)
	}
	// The one being copied is in the table with those before it.
	if peak > maxOwnPending+1 {
		t.Fatalf("%d copies pending at once, over the bound of %d", peak, maxOwnPending)
	}
	if s.inflightLen() != 0 {
		t.Fatalf("%d copies still pending after Preserve returned", s.inflightLen())
	}
	live.write(bytes.Repeat([]byte{0}, size), 0)
	got := make([]byte, size)
	if err := s.ReadAt(ctx, "a", got, 0, live.read); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, before) {
		t.Fatal("the snapshot does not read what the device held when it was taken")
	}
}

// inflightLen is the number of copies pending in the store's table.
func (s *Store) inflightLen() int {
	s.tab.Lock()
	defer s.tab.Unlock()
	return len(s.inflight)
}
