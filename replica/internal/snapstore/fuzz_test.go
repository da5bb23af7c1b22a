package snapstore

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// fuzzBase is a store after a short story, closed cleanly: three
// snapshots (one invalidated by a full store), copies, changed blocks.
func fuzzBase(t testing.TB) (*crashFile, Options, *memLive) {
	const size, chunk = 16 * 4096, 4096
	r := rand.New(rand.NewPCG(1, 2))
	f := newCrashFile()
	opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 512, Capacity: 6 * chunk}
	s := openMem(t, f, opt)
	live := newLive(size, r)
	for _, name := range []string{"a", "b", "c"} {
		s.Create(name, time.Unix(1, 0))
		for range 3 {
			off := r.Int64N(size - 100)
			if err := s.Preserve(ctx, off, 100, live.read); err != nil {
				t.Fatal(err)
			}
			live.write(randBytes(r, 100), off)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return f.image(), opt, live
}

// patch encodes one fuzz patch: offset, length, bytes.
func patch(off uint32, b []byte) []byte {
	p := binary.LittleEndian.AppendUint32(nil, off)
	return append(append(p, byte(len(b))), b...)
}

// FuzzOpen opens damaged store files: patches at any offset, with the
// header and descriptor checksums fixed up or not so that the field checks
// behind them are reached. Open must fail cleanly or give a store whose
// every operation works or fails cleanly.
func FuzzOpen(f *testing.F) {
	base, opt, live := fuzzBase(f)
	lay := layoutOf(opt.DeviceSize, opt.BlockSize, opt.ChunkSize, opt.Capacity)
	f.Add([]byte{0})
	f.Add(append([]byte{1}, patch(hOffEntries+eOffNameLen, []byte{70})...))
	f.Add(append([]byte{1}, patch(hOffEntries+entryBytes+eOffSeq, []byte{9, 9})...))
	f.Add(append([]byte{1}, patch(hOffCapacity, []byte{0, 0, 0, 0, 1})...))
	f.Add(append([]byte{1}, patch(hdrSlotBytes+hOffNextSeq, []byte{1})...))
	f.Add(append([]byte{2}, patch(uint32(lay.groupsOff), []byte{200})...))
	f.Add(append([]byte{2}, patch(uint32(lay.groupsOff+8), []byte{7})...))
	f.Add(append([]byte{0}, patch(uint32(lay.groupsOff+40), []byte{1})...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		img := base.image()
		flags := data[0]
		data = data[1:]
		for len(data) >= 5 {
			off := int64(binary.LittleEndian.Uint32(data)) % int64(len(img.cur))
			n := min(int(data[4]), len(data)-5)
			copy(img.cur[off:], data[5:5+n])
			data = data[5+n:]
		}
		if flags&1 != 0 {
			for sl := range int64(hdrSlots) {
				p := img.cur[sl*hdrSlotBytes : (sl+1)*hdrSlotBytes]
				binary.LittleEndian.PutUint64(p[hOffChecksum:], xxhash.Sum64(p[:hOffChecksum]))
			}
		}
		if flags&2 != 0 {
			for k := range int32(lay.slots) {
				p := img.cur[lay.descOff(k):]
				binary.LittleEndian.PutUint64(p[24:], xxhash.Sum64(p[:24]))
			}
		}
		img.durable = slices.Clone(img.cur)
		s, err := openOn(img, "fuzz", opt)
		if err != nil {
			return
		}
		defer s.Close()
		p := make([]byte, opt.DeviceSize)
		for _, in := range s.List() {
			if in.Valid {
				s.ReadAt(ctx, in.Name, p, 0, live.read)
				s.Changed(in.Name, "")
			}
		}
		s.Preserve(ctx, 0, opt.DeviceSize, live.read)
		s.Create("z", time.Now())
		if st := s.Stats(); st.Used > st.Capacity || st.Used < 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}
