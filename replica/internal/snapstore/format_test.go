package snapstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// unsyncedImages runs one Preserve of chunk 0 and returns what the disk
// may hold after power loss during the sync that commits it, in the
// cases a descriptor alone cannot tell from a finished copy: the
// descriptor written, the data not (the slot's old content), and the data
// torn (its first half written).
func unsyncedImages(t *testing.T, f *crashFile, s *Store, live *memLive) map[string][]byte {
	t.Helper()
	imgs := map[string][]byte{}
	f.gate = func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		var data *pendingOp
		for i := range f.pending {
			if int64(len(f.pending[i].data)) == s.chunk {
				data = &f.pending[i]
			}
		}
		if data == nil || len(imgs) > 0 {
			return
		}
		old, torn := slices.Clone(f.durable), slices.Clone(f.durable)
		for _, op := range f.pending {
			if &op.data[0] == &data.data[0] {
				continue
			}
			old, torn = apply(old, op), apply(torn, op)
		}
		h := len(data.data) / 2
		torn = apply(torn, pendingOp{off: data.off + int64(h), data: data.data[h:]})
		imgs["data lost"], imgs["data torn"] = old, torn
	}
	if err := s.Preserve(ctx, 100, 200, live.read); err != nil {
		t.Fatal(err)
	}
	f.gate = nil
	if len(imgs) == 0 {
		t.Fatal("no sync committed the copy")
	}
	return imgs
}

// TestUnsyncedCopyData: in FormatVersion a copy's data and descriptor
// are written before the one sync that commits them, so a crash can leave
// the descriptor durable and the data old or torn. Open must take such a
// copy as unfinished (its slot free, its descriptor cleared) and the
// snapshot must read the chunk from the live device, which the write
// behind the Preserve never reached. The slot's old content here is a
// stale copy of the same chunk (a plausible image of it), the worst case
// for a descriptor that points at it.
func TestUnsyncedCopyData(t *testing.T) {
	const size, chunk = 16 * 4096, 4096
	r := rand.New(rand.NewPCG(21, 21))
	f := newCrashFile()
	opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 512, Capacity: 8 * chunk}
	s := openMem(t, f, opt)
	live := newLive(size, r)
	// A stale copy of chunk 0 in slot 0: copied for "old", then freed.
	if err := s.Create("old", time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	writeMem(t, s, live, randBytes(r, 300), 50)
	if err := s.Delete("old"); err != nil {
		t.Fatal(err)
	}
	if err := s.Create("a", time.Unix(2, 0)); err != nil {
		t.Fatal(err)
	}
	want := live.clone() // "a"'s image, and the live device's after the crash
	imgs := unsyncedImages(t, f, s, live)
	if s.slots[0].chunk != 0 {
		t.Fatalf("the new copy is not in the stale copy's slot: %+v", s.slots[:2])
	}
	lay := s.lay
	for name, img := range imgs {
		t.Run(name, func(t *testing.T) {
			if d := img[lay.descOff(0) : lay.descOff(0)+descBytes]; bytes.Equal(d, make([]byte, descBytes)) {
				t.Fatal("the crash image has no descriptor for the copy: the case is not tested")
			}
			cf := &crashFile{cur: slices.Clone(img), durable: slices.Clone(img), failAt: -1}
			var told []Info
			o := opt
			o.OnInvalidate = func(in Info) { told = append(told, in) }
			s2 := openMem(t, cf, o)
			defer s2.Close()
			if l := s2.List(); len(l) != 1 || !l[0].Valid || len(told) != 0 {
				t.Fatalf("after the crash: list %+v, invalidated %+v", l, told)
			}
			if st := s2.Stats(); st.Used != 0 {
				t.Fatalf("the unfinished copy's slot is not free: used %d, slots %+v", st.Used, s2.slots)
			}
			if d := cf.cur[lay.descOff(0) : lay.descOff(0)+descBytes]; !bytes.Equal(d, make([]byte, descBytes)) {
				t.Fatalf("the unfinished copy's descriptor was not cleared: %x", d)
			}
			crashed := &memLive{b: slices.Clone(want)}
			got := make([]byte, size)
			if err := s2.ReadAt(ctx, "a", got, 0, crashed.read); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("snapshot a differs at %d after the crash", i)
			}
			// The write goes through now: the copy is made again, right.
			writeMem(t, s2, crashed, randBytes(r, 300), 100)
			if err := s2.ReadAt(ctx, "a", got, 0, crashed.read); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("snapshot a differs at %d after the rewrite", i)
			}
		})
	}
}

// writeMem preserves then writes p at off of the live device.
func writeMem(t *testing.T, s *Store, live *memLive, p []byte, off int64) {
	t.Helper()
	if err := s.Preserve(ctx, off, int64(len(p)), live.read); err != nil {
		t.Fatal(err)
	}
	live.write(p, off)
}

// TestSyncsPerCopy: a copy alone costs one fdatasync in FormatVersion,
// two in formatV1.
func TestSyncsPerCopy(t *testing.T) {
	for _, tc := range []struct {
		version uint32
		syncs   int64
	}{{FormatVersion, 1}, {formatV1, 2}} {
		const size, chunk = 16 * 4096, 4096
		s := openMem(t, newCrashFile(), Options{DeviceSize: size, ChunkSize: chunk, Capacity: 8 * chunk, version: tc.version})
		live := newLive(size, rand.New(rand.NewPCG(3, 3)))
		s.Create("a", time.Now())
		for i := range int64(4) {
			base := s.syncs.Load()
			writeMem(t, s, live, []byte{1}, i*chunk)
			if n := s.syncs.Load() - base; n != tc.syncs {
				t.Fatalf("format %d: a copy took %d fdatasyncs, want %d", tc.version, n, tc.syncs)
			}
		}
		if st := s.Stats(); st.Format != int(tc.version) || st.Copies != 4 || st.CommitRounds != 4*tc.syncs {
			t.Fatalf("format %d: stats %+v", tc.version, st)
		}
		s.Close()
	}
}

// TestFormatV1Store: a formatV1 store with snapshots is kept in its
// format (read and written right) by a repd that creates FormatVersion
// stores; once it holds no snapshot, Open recreates it in FormatVersion.
func TestFormatV1Store(t *testing.T) {
	const size, chunk = 16 * 4096, 4096
	r := rand.New(rand.NewPCG(5, 5))
	f := newCrashFile()
	opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 512, Capacity: 8 * chunk}
	v1 := opt
	v1.version = formatV1
	s := openMem(t, f, v1)
	live := newLive(size, r)
	s.Create("a", time.Now())
	want := live.clone()
	writeMem(t, s, live, randBytes(r, 5000), 3000)
	s.Close()
	f = f.image()
	s = openMem(t, f, opt)
	if st := s.Stats(); st.Format != formatV1 || st.Used != 2*chunk {
		t.Fatalf("reopened: %+v", st)
	}
	writeMem(t, s, live, randBytes(r, 5000), 9000)
	got := make([]byte, size)
	if err := s.ReadAt(ctx, "a", got, 0, live.read); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("formatV1 snapshot differs at %d", i)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	f2 := f.image()
	s = openMem(t, f2, opt)
	if st := s.Stats(); st.Format != FormatVersion || st.Used != 0 || st.Snapshots != 0 {
		t.Fatalf("an empty formatV1 store was not recreated in format %d: %+v", FormatVersion, st)
	}
	s.Create("b", time.Now())
	want = live.clone()
	writeMem(t, s, live, randBytes(r, 5000), 3000)
	s.Close()
	s = openMem(t, f2.image(), opt)
	defer s.Close()
	if err := s.ReadAt(ctx, "b", got, 0, live.read); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("snapshot of the recreated store differs at %d", i)
	}
}

// TestFutureFormat: a store of an unknown format version is refused with
// the versions this repd reads and what to do.
func TestFutureFormat(t *testing.T) {
	const size, chunk = 16 * 4096, 4096
	f := newCrashFile()
	opt := Options{DeviceSize: size, ChunkSize: chunk, Capacity: 8 * chunk}
	s := openMem(t, f, opt)
	s.Close()
	img := f.image()
	for sl := range int64(hdrSlots) {
		p := img.cur[sl*hdrSlotBytes : (sl+1)*hdrSlotBytes]
		if !bytes.HasPrefix(p, []byte(hdrMagic)) {
			continue
		}
		binary.LittleEndian.PutUint32(p[hOffVersion:], FormatVersion+1)
		binary.LittleEndian.PutUint64(p[hOffChecksum:], xxhash.Sum64(p[:hOffChecksum]))
	}
	_, err := openOn(img, "future", opt)
	var me *MismatchError
	if !errors.As(err, &me) || me.Field != "format version" || !strings.Contains(err.Error(), "1 or 2") || !strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("open of a format %d store: %v", FormatVersion+1, err)
	}
}
