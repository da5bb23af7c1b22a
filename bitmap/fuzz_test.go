package bitmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// memFile is a read-only meta file of vlen bytes: data, then zeros.
type memFile struct {
	data []byte
	vlen int64
}

var errReadOnly = errors.New("read-only")

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= f.vlen {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.vlen-off))
	clear(p[:n])
	if off < int64(len(f.data)) {
		copy(p[:n], f.data[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) { return 0, errReadOnly }
func (f *memFile) Sync() error                              { return nil }
func (f *memFile) Truncate(int64) error                     { return errReadOnly }
func (f *memFile) Close() error                             { return nil }

func fuzzID() Identity {
	return Identity{Resource: "fuzz", Size: 1<<20 + 512, Granularity: 4096, NodeID: 2,
		MaxPeers: 2, ALExtentSize: 64 << 10, ALExtents: 8}
}

// fuzzSeeds returns meta file images: fresh, and after some use.
func fuzzSeeds(t testing.TB) [][]byte {
	f := &crashFile{}
	m, err := createOn(f, "seed", fuzzID(), false)
	if err != nil {
		t.Fatal(err)
	}
	fresh := bytes.Clone(f.cur[:headerBytes])
	m.UpdateSuperblock(func(sb *Superblock) {
		sb.GI.Current, sb.Disk, sb.Flags = 0x1234, DiskUpToDate, FlagPrimary
		sb.AssignSlot(5)
	})
	if err := m.Activate(context.Background(), 100<<10, 200<<10); err != nil { // extents 1..4
		t.Fatal(err)
	}
	used := bytes.TrimRight(f.cur[:headerBytes+4096], "\x00")
	return [][]byte{fresh, bytes.Clone(used), []byte("REPDMETA")}
}

// fixChecksums recomputes the checksums of both superblock slots and, if one
// then decodes, of the AL records, so the fuzzer reaches the field checks.
func fixChecksums(p []byte) {
	le := binary.LittleEndian
	for s := 0; s < sbSlots && len(p) >= (s+1)*sbSlotBytes; s++ {
		slot := p[s*sbSlotBytes : (s+1)*sbSlotBytes]
		le.PutUint64(slot[sbOffChecksum:], xxhash.Sum64(slot[:sbOffChecksum]))
	}
	sb, _, _, err := readHeader(&memFile{data: p, vlen: int64(len(p))}, "fuzz")
	if err != nil {
		return
	}
	lay := layoutOf(sb.Identity)
	for i := int64(0); i < alRing; i++ {
		lo, hi := lay.alOff+i*lay.alRecBytes, lay.alOff+(i+1)*lay.alRecBytes
		if hi > int64(len(p)) {
			return
		}
		le.PutUint64(p[hi-8:], xxhash.Sum64(p[lo:hi-8]))
	}
}

// FuzzOpen feeds arbitrary bytes to the meta file decoder: superblock slots,
// AL records and bitmaps. It must never panic nor allocate beyond the file.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix {
			data = bytes.Clone(data)
			fixChecksums(data)
		}
		mf := &memFile{data: data, vlen: max(int64(len(data)), 1<<20)}
		sb, _, _, err := readHeader(mf, "fuzz")
		if err != nil {
			if !errors.Is(err, errNotMeta) && !errors.Is(err, errCorrupt) && !errors.Is(err, errMismatch) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if err := sb.Identity.validate(); err != nil {
			t.Fatalf("decoded an invalid identity: %v", err)
		}
		m, err := openOn(mf, "fuzz", &sb.Identity)
		if err != nil {
			return
		}
		hot := m.HotExtents()
		if len(hot) > sb.ALExtents {
			t.Fatalf("%d hot extents in a log of %d", len(hot), sb.ALExtents)
		}
		for i, e := range hot {
			if e < 0 || e*sb.ALExtentSize >= sb.Size || (i > 0 && e <= hot[i-1]) {
				t.Fatalf("bad hot set %v", hot)
			}
		}
		for s := range sb.MaxPeers {
			b := m.Bitmap(s)
			var n int64
			for i, ok := b.NextSet(0); ok; i, ok = b.NextSet(i + 1) {
				n++
			}
			if n != b.Count() || b.DirtyBytes() > sb.Size {
				t.Fatalf("peer %d: %d bits, count %d, %d dirty bytes", s, n, b.Count(), b.DirtyBytes())
			}
		}
		if _, err := openOn(mf, "fuzz", &Identity{Resource: sb.Resource + "x", Size: sb.Size}); !errors.Is(err, errMismatch) {
			t.Fatalf("other resource accepted: %v", err)
		}
	})
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzOpen when
// REPD_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("REPD_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set REPD_WRITE_FUZZ_SEEDS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds(t) {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbool(%v)\n", s, i == 1)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
