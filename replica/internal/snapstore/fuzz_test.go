package snapstore

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// fuzzBase is a store of the given format after a short story, closed
// cleanly: three snapshots (one invalidated by a full store), copies,
// changed blocks.
func fuzzBase(t testing.TB, version uint32) (*crashFile, Options, *memLive) {
	const size, chunk = 16 * 4096, 4096
	r := rand.New(rand.NewPCG(1, 2))
	f := newCrashFile()
	opt := Options{DeviceSize: size, ChunkSize: chunk, BlockSize: 512, Capacity: 6 * chunk, version: version}
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

// FuzzOpen opens damaged store files of either format (flag 4: formatV1),
// closed cleanly or not (flag 8: the clean flag cleared, so that Open
// checks the newest copies' data against their descriptors): patches at
// any offset, with the header and descriptor checksums fixed up or not
// so that the field checks behind them are reached. Open must fail
// cleanly or give a store whose every operation works or fails cleanly.
func FuzzOpen(f *testing.F) {
	bases := map[bool]*crashFile{}
	var opt Options
	var live *memLive
	bases[false], opt, live = fuzzBase(f, FormatVersion)
	bases[true], _, _ = fuzzBase(f, formatV1)
	lay := layoutOf(opt.DeviceSize, opt.BlockSize, opt.ChunkSize, opt.Capacity)
	f.Add([]byte{0})
	f.Add(append([]byte{1}, patch(hOffEntries+eOffNameLen, []byte{70})...))
	f.Add(append([]byte{1}, patch(hOffEntries+entryBytes+eOffSeq, []byte{9, 9})...))
	f.Add(append([]byte{1}, patch(hOffCapacity, []byte{0, 0, 0, 0, 1})...))
	f.Add(append([]byte{1}, patch(hdrSlotBytes+hOffNextSeq, []byte{1})...))
	f.Add(append([]byte{2}, patch(uint32(lay.groupsOff), []byte{200})...))
	f.Add(append([]byte{2}, patch(uint32(lay.groupsOff+8), []byte{7})...))
	f.Add(append([]byte{0}, patch(uint32(lay.groupsOff+40), []byte{1})...))
	f.Add(append([]byte{8}, patch(uint32(lay.slotOff(0)+9), []byte{1})...))
	f.Add(append([]byte{10}, patch(uint32(lay.groupsOff+16), []byte{3})...))
	f.Add(append([]byte{12}, patch(uint32(lay.slotOff(1)), []byte{5})...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		flags := data[0]
		img := bases[flags&4 != 0].image()
		data = data[1:]
		instance := binary.LittleEndian.Uint64(img.cur[hOffInstance:])
		if flags&8 != 0 {
			for sl := range int64(hdrSlots) {
				p := img.cur[sl*hdrSlotBytes : (sl+1)*hdrSlotBytes]
				p[hOffFlags] &^= flagClean
				binary.LittleEndian.PutUint64(p[hOffChecksum:], xxhash.Sum64(p[:hOffChecksum]))
			}
		}
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
				if flags&4 != 0 {
					binary.LittleEndian.PutUint64(p[24:], xxhash.Sum64(p[:24]))
				} else {
					binary.LittleEndian.PutUint64(p[24:], descSum(p, instance))
				}
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
