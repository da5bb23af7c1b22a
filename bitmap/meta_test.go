package bitmap

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

func testID() Identity {
	return Identity{
		Resource:     "r0",
		Size:         64<<20 + 4096*3, // a partial last extent
		Granularity:  4096,
		NodeID:       1,
		MaxPeers:     2,
		ALExtentSize: 1 << 20,
		ALExtents:    8,
	}
}

func mustCreate(t testing.TB, id Identity) (*Meta, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r0.meta")
	m, err := Create(path, id)
	if err != nil {
		t.Fatal(err)
	}
	return m, path
}

// crashClose drops the meta file without flushing anything, as a SIGKILL
// would (the page cache keeps what was written).
func crashClose(t testing.TB, m *Meta) {
	t.Helper()
	m.closeMu.Lock()
	m.closed = true
	m.closeMu.Unlock()
	if err := m.f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCreateOpenRoundTrip(t *testing.T) {
	id := testID()
	m, path := mustCreate(t, id)
	sb := m.Superblock()
	if sb.Disk != DiskInconsistent || sb.GI.Current != 0 || sb.Seq != 1 || len(sb.GI.Bitmap) != 2 || len(sb.Peers) != 2 {
		t.Fatalf("fresh superblock = %+v", sb)
	}
	if m.Bitmap(0).Count() != 0 || m.Bitmap(1).Count() != 0 || m.Bitmap(2) != nil {
		t.Fatal("fresh bitmaps wrong")
	}
	var slot int
	err := m.UpdateSuperblock(func(sb *Superblock) {
		sb.GI.Current = 0xabc
		sb.GI.Bitmap[1] = 0xdef
		sb.GI.History = [2]uint64{1, 2}
		sb.Disk = DiskUpToDate
		sb.Flags |= FlagPrimary
		sb.BootID = [16]byte{0: 0x6e, 7: 0x4c, 15: 0xa2}
		slot, _ = sb.AssignSlot(7)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.Activate(ctx, 3<<20, 8192); err != nil {
		t.Fatal(err)
	}
	m.Bitmap(slot).Set(3<<20, 8192)
	m.Bitmap(1).Set(id.Size-1, 1)
	m.Complete(3<<20, 8192)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal("second Close:", err)
	}

	m2, err := Open(path, id)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	sb2 := m2.Superblock()
	if sb2.GI.Current != 0xabc || sb2.GI.Bitmap[1] != 0xdef || sb2.GI.History != [2]uint64{1, 2} ||
		sb2.Disk != DiskUpToDate || sb2.Flags != FlagPrimary || sb2.Seq != 2 || sb2.SlotOf(7) != slot ||
		sb2.BootID != [16]byte{0: 0x6e, 7: 0x4c, 15: 0xa2} {
		t.Fatalf("reopened superblock = %+v", sb2)
	}
	if got := m2.HotExtents(); !slices.Equal(got, []int64{3}) {
		t.Fatalf("HotExtents = %v", got)
	}
	if m2.Bitmap(0).Count() != 2 || !m2.Bitmap(1).TestBlock(m2.Bitmap(1).Blocks()-1) || m2.Bitmap(1).Count() != 1 {
		t.Fatalf("bitmaps: %v %v", m2.Bitmap(0), m2.Bitmap(1))
	}
	// Defaults: zero layout fields accept the file's.
	m2.Close()
	m3, err := Open(path, Identity{Resource: "r0", Size: id.Size, NodeID: 1})
	if err != nil {
		t.Fatal(err)
	}
	m3.Close()
	if sb, err := ReadSuperblock(path); err != nil || sb.GI.Current != 0xabc {
		t.Fatalf("ReadSuperblock = %+v, %v", sb, err)
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	id := testID()
	m, path := mustCreate(t, id)
	m.Close()
	if _, err := Create(path, id); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a meta file: %v", err)
	}
	m, err := CreateForce(path, id)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()

	other := filepath.Join(t.TempDir(), "data")
	os.WriteFile(other, []byte("an ext4 superblock, say"), 0o600)
	if _, err := Create(other, id); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over other data: %v", err)
	}
	zero := filepath.Join(t.TempDir(), "zero")
	os.WriteFile(zero, make([]byte, 1<<16), 0o600)
	m, err = Create(zero, id)
	if err != nil {
		t.Fatalf("Create over zeros: %v", err)
	}
	// A second open of a file in use is refused.
	if _, err := Open(zero, id); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("Open of a locked file: %v", err)
	}
	m.Close()
	bad := id
	bad.Granularity = 3000
	if _, err := Create(filepath.Join(t.TempDir(), "x"), bad); err == nil {
		t.Fatal("bad granularity accepted")
	}
}

func TestOpenMismatch(t *testing.T) {
	id := testID()
	m, path := mustCreate(t, id)
	m.Close()
	cases := []struct {
		field string
		mod   func(*Identity)
	}{
		{"resource", func(id *Identity) { id.Resource = "r1" }},
		{"size", func(id *Identity) { id.Size *= 2 }},
		{"granularity", func(id *Identity) { id.Granularity = 8192 }},
		{"node id", func(id *Identity) { id.NodeID = 2 }},
		{"max peers", func(id *Identity) { id.MaxPeers = 3 }},
		{"AL extent size", func(id *Identity) { id.ALExtentSize = 4 << 20 }},
		{"AL extents", func(id *Identity) { id.ALExtents = 9 }},
	}
	for _, c := range cases {
		want := id
		c.mod(&want)
		_, err := Open(path, want)
		var me *mismatchError
		if !errors.Is(err, errMismatch) || !errors.As(err, &me) || me.Field != c.field ||
			!strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), "create-md") {
			t.Errorf("%s: %v", c.field, err)
		}
	}
	_, err := Open(path, Identity{Resource: "r1", Size: id.Size, NodeID: 1})
	if want := `is for resource "r0", not "r1"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("message %q lacks %q", err, want)
	}
	// A newer format version in one slot (checksum good) beats ours in the
	// other: ours is stale.
	raw, _ := os.ReadFile(path)
	conv := slices.Clone(raw)
	slot1 := conv[sbSlotBytes : 2*sbSlotBytes]
	copy(slot1, raw[:sbSlotBytes])
	slot1[sbOffVersion] = 2
	binary.LittleEndian.PutUint64(slot1[sbOffChecksum:], xxhash.Sum64(slot1[:sbOffChecksum]))
	os.WriteFile(path, conv, 0o600)
	if _, err := Open(path, id); !errors.Is(err, errMismatch) || !strings.Contains(err.Error(), "format version 2") {
		t.Errorf("newer version in one slot: %v", err)
	}
	// Another format version, in both slots, checksums unverifiable.
	for s := 0; s < 2; s++ {
		raw[s*sbSlotBytes+sbOffVersion] = 2
	}
	os.WriteFile(path, raw, 0o600)
	_, err = Open(path, id)
	var me *mismatchError
	if !errors.As(err, &me) || me.Field != "format version" || !strings.Contains(err.Error(), "format version 2, not 1") {
		t.Errorf("version: %v", err)
	}
}

func TestOpenDamaged(t *testing.T) {
	id := testID()
	m, path := mustCreate(t, id)
	if err := m.UpdateSuperblock(func(sb *Superblock) { sb.GI.Current = 42 }); err != nil {
		t.Fatal(err)
	}
	m.Close()
	good, _ := os.ReadFile(path)
	write := func(raw []byte) {
		t.Helper()
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The newer slot (1) torn: the older one (0) wins.
	raw := slices.Clone(good)
	clear(raw[sbSlotBytes+2048 : 2*sbSlotBytes])
	write(raw)
	m, err := Open(path, id)
	if err != nil {
		t.Fatal(err)
	}
	if sb := m.Superblock(); sb.Seq != 1 || sb.GI.Current != 0 {
		t.Fatalf("after tearing slot 1: %+v", sb)
	}
	// The next write goes to the torn slot, not over the good one.
	if err := m.UpdateSuperblock(func(sb *Superblock) { sb.GI.Current = 43 }); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m, err = Open(path, id)
	if err != nil || m.Superblock().GI.Current != 43 || m.sbSlot != 1 {
		t.Fatalf("after rewrite: %v %+v", err, m.Superblock())
	}
	m.Close()

	raw = slices.Clone(good)
	raw[100]++
	raw[sbSlotBytes+100]++
	write(raw)
	if _, err := Open(path, id); !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("both slots bad: %v", err)
	}

	write(make([]byte, len(good)))
	if _, err := Open(path, id); !errors.Is(err, errNotMeta) {
		t.Fatalf("zeros: %v", err)
	}
	write([]byte("short"))
	if _, err := Open(path, id); !errors.Is(err, errNotMeta) {
		t.Fatalf("short file: %v", err)
	}
	write(good[:len(good)-1])
	if _, err := Open(path, id); !errors.Is(err, errCorrupt) {
		t.Fatalf("truncated: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none"), id); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
}

func TestOpenOrCreate(t *testing.T) {
	id := testID()
	path := filepath.Join(t.TempDir(), "m")
	m, created, err := openOrCreate(path, id)
	if err != nil || !created {
		t.Fatal(created, err)
	}
	m.Bitmap(0).SetBlock(9)
	m.Close()
	m, created, err = openOrCreate(path, id)
	if err != nil || created || !m.Bitmap(0).TestBlock(9) {
		t.Fatal(created, err)
	}
	m.Close()
	bad := id
	bad.Resource = "other"
	if _, _, err := openOrCreate(path, bad); !errors.Is(err, errMismatch) {
		t.Fatal(err)
	}
}

func TestUpdateSuperblockRejects(t *testing.T) {
	m, _ := mustCreate(t, testID())
	defer m.Close()
	for name, fn := range map[string]func(*Superblock){
		"identity": func(sb *Superblock) { sb.Size++ },
		"GI len":   func(sb *Superblock) { sb.GI.Bitmap = nil },
		"disk":     func(sb *Superblock) { sb.Disk = 9 },
	} {
		if err := m.UpdateSuperblock(fn); err == nil {
			t.Errorf("%s change accepted", name)
		}
	}
	if m.Superblock().Seq != 1 {
		t.Fatal("rejected update was written")
	}
	err := m.UpdateSuperblock(func(sb *Superblock) { sb.Seq = 99; sb.GI.Bitmap[0] = 5 })
	if err != nil || m.Superblock().Seq != 2 || m.Superblock().GI.Bitmap[0] != 5 {
		t.Fatal(err, m.Superblock())
	}
}

func TestSlots(t *testing.T) {
	sb := Superblock{Identity: Identity{NodeID: 1}, Peers: make([]Peer, 2)}
	if s, err := sb.AssignSlot(3); s != 0 || err != nil {
		t.Fatal(s, err)
	}
	if s, err := sb.AssignSlot(0); s != 1 || err != nil {
		t.Fatal(s, err)
	}
	if s, _ := sb.AssignSlot(3); s != 0 {
		t.Fatal("reassigned")
	}
	if _, err := sb.AssignSlot(4); err == nil {
		t.Fatal("third peer fitted in two slots")
	}
	if _, err := sb.AssignSlot(1); err == nil {
		t.Fatal("self as peer")
	}
	if sb.SlotOf(0) != 1 || sb.SlotOf(9) != -1 {
		t.Fatal("SlotOf")
	}
}

func TestDiskState(t *testing.T) {
	for d := DiskDiskless; d <= DiskFailed; d++ {
		p, err := parseDiskState(strings.ToLower(d.String()))
		if err != nil || p != d {
			t.Errorf("%v: %v %v", d, p, err)
		}
		txt, _ := d.MarshalText()
		var u DiskState
		if u.UnmarshalText(txt) != nil || u != d {
			t.Errorf("text round trip of %v", d)
		}
	}
	if DiskUpToDate.String() != "UpToDate" || DiskState(9).String() != "DiskState(9)" {
		t.Error("String")
	}
	if _, err := parseDiskState("Consistent"); err == nil {
		t.Error("parsed an unknown state")
	}
}

func TestActivateEvictsLRUAndFlushes(t *testing.T) {
	id := testID()
	id.ALExtents = 2
	m, path := mustCreate(t, id)
	ctx := context.Background()
	write := func(ext int64) {
		t.Helper()
		off := ext<<20 + 4096
		if err := m.Activate(ctx, off, 4096); err != nil {
			t.Fatal(err)
		}
		m.Bitmap(0).Set(off, 4096)
		m.Complete(off, 4096)
	}
	write(0)
	write(1)
	write(0) // 1 is now least recently used
	write(2) // evicts 1
	if got := m.HotExtents(); !slices.Equal(got, []int64{0, 2}) {
		t.Fatalf("hot = %v, want [0 2]", got)
	}
	crashClose(t, m)
	m, err := Open(path, id)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.Bitmap(0).TestBlock((1<<20 + 4096) / 4096) {
		t.Fatal("bit of the evicted extent not on disk")
	}
	if got := m.HotExtents(); !slices.Equal(got, []int64{0, 2}) {
		t.Fatalf("hot after reopen = %v", got)
	}
	// A write spanning more extents than the AL holds is refused.
	if err := m.Activate(ctx, 0, 3<<20); err == nil {
		t.Fatal("activate of 3 extents in a 2-extent AL succeeded")
	}
	// Writes outside the device touch nothing.
	if err := m.Activate(ctx, id.Size, 4096); err != nil {
		t.Fatal(err)
	}
}

func TestActivateWaitsForIdleExtent(t *testing.T) {
	id := testID()
	id.ALExtents = 1
	m, _ := mustCreate(t, id)
	defer m.Close()
	bg := context.Background()
	if err := m.Activate(bg, 0, 4096); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancel()
	if err := m.Activate(ctx, 1<<20, 4096); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("activate with every extent busy: %v", err)
	}
	done := make(chan error)
	go func() { done <- m.Activate(bg, 1<<20, 4096) }()
	time.Sleep(10 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("activate returned while the AL was busy: %v", err)
	default:
	}
	m.Complete(0, 4096)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := m.HotExtents(); !slices.Equal(got, []int64{1}) {
		t.Fatalf("hot = %v", got)
	}
	if m.ActiveWrites() != 1 {
		t.Fatalf("active writes = %d", m.ActiveWrites())
	}
	m.Complete(1<<20, 4096)
	if m.ActiveWrites() != 0 {
		t.Fatal("Complete did not release")
	}
}

func TestActivateHotDoesNotAllocate(t *testing.T) {
	m, _ := mustCreate(t, testID())
	defer m.Close()
	ctx := context.Background()
	if err := m.Activate(ctx, 1<<20-4096, 8192); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := m.Activate(ctx, 1<<20-4096, 8192); err != nil {
			t.Fatal(err)
		}
		m.Complete(1<<20-4096, 8192)
	})
	if allocs != 0 {
		t.Fatalf("hot Activate allocates %.1f times", allocs)
	}
}

func TestMarkHotOutOfSync(t *testing.T) {
	id := testID()
	m, path := mustCreate(t, id)
	ctx := context.Background()
	last := (id.Size - 1) >> 20
	for _, off := range []int64{5 << 20, id.Size - 100} {
		if err := m.Activate(ctx, off, 100); err != nil {
			t.Fatal(err)
		}
	}
	m.UpdateSuperblock(func(sb *Superblock) { sb.Flags |= FlagPrimary })
	crashClose(t, m) // writes in flight, nothing marked

	m, err := Open(path, id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Superblock().Flags&FlagPrimary == 0 {
		t.Fatal("crash flag lost")
	}
	if got := m.HotExtents(); !slices.Equal(got, []int64{5, last}) {
		t.Fatalf("hot = %v", got)
	}
	want := int64(1<<20) + id.Size - last<<20
	if got := m.MarkHotOutOfSync(); got != want {
		t.Fatalf("marked %d bytes, want %d", got, want)
	}
	for s := 0; s < 2; s++ {
		if got := m.Bitmap(s).DirtyBytes(); got != want {
			t.Fatalf("peer %d: %d bytes out of sync, want %d", s, got, want)
		}
	}
	crashClose(t, m) // MarkHotOutOfSync persisted
	m, err = Open(path, id)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Bitmap(1).DirtyBytes() != want {
		t.Fatal("marks not persisted")
	}
	if err := m.ReleaseIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if got := m.HotExtents(); len(got) != 0 {
		t.Fatalf("hot after ReleaseIdle = %v", got)
	}
}

func BenchmarkActivateHot(b *testing.B) {
	m, _ := mustCreate(b, testID())
	defer m.Close()
	ctx := context.Background()
	if err := m.Activate(ctx, 0, 4096); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.Activate(ctx, 0, 4096)
		m.Complete(0, 4096)
	}
}

// An AL record that drops an extent is written only after the data written
// into it is durable (SyncDataBeforeEvict): a crash then resyncs only the
// extents of the last record. No sync when nothing is evicted; a failed
// sync fails the Activate and writes no record.
func TestEvictSyncsDataFirst(t *testing.T) {
	id := testID()
	id.ALExtents = 2
	m, _ := mustCreate(t, id)
	defer m.Close()
	ctx := context.Background()
	var syncs int
	var failSync error
	m.SyncDataBeforeEvict(func() error {
		syncs++
		return failSync
	})
	write := func(ext int64) error {
		off := ext << 20
		if err := m.Activate(ctx, off, 4096); err != nil {
			return err
		}
		m.Complete(off, 4096)
		return nil
	}
	for _, e := range []int64{0, 1, 0} {
		if err := write(e); err != nil {
			t.Fatal(err)
		}
	}
	if syncs != 0 {
		t.Fatalf("%d data syncs without an eviction", syncs)
	}
	if err := write(2); err != nil || syncs != 1 {
		t.Fatalf("eviction of extent 1: err %v, %d data syncs (want 1)", err, syncs)
	}
	before := m.HotExtents()
	failSync = errors.New("EIO")
	if err := write(3); err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("eviction with a failing data sync: %v", err)
	}
	if got := m.HotExtents(); !slices.Equal(got, before) {
		t.Fatalf("a record was written after the data sync failed: hot %v, was %v", got, before)
	}
}
