package bitmap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// faultyFile fails the failAt-th mutating operation (WriteAt, Sync,
// Truncate), counting from 0, and every one after it, as a disk that went
// away would. A failing WriteAt writes the first half of its buffer first.
type faultyFile struct {
	File
	mu     sync.Mutex
	ops    int
	failAt int
	failed bool
}

var errInjected = errors.New("injected I/O error")

func (f *faultyFile) fail() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ops >= f.failAt {
		f.failed = true
		return true
	}
	f.ops++
	return false
}

func (f *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	if f.fail() {
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, errInjected
	}
	return f.File.WriteAt(p, off)
}

func (f *faultyFile) Sync() error {
	if f.fail() {
		return errInjected
	}
	return f.File.Sync()
}

func (f *faultyFile) Truncate(size int64) error {
	if f.fail() {
		return errInjected
	}
	return f.File.Truncate(size)
}

// crashFile is an in-memory file that keeps only what was synced when it
// crashes. Reads see every write.
type crashFile struct {
	mu      sync.Mutex
	cur     []byte
	durable []byte
	pending []pendingOp
}

type pendingOp struct {
	off  int64
	data []byte
	size int64 // truncate to size if data == nil
}

func resize(b []byte, n int64) []byte {
	if int64(len(b)) >= n {
		return b[:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

func (f *crashFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.cur)) {
		return 0, io.EOF
	}
	n := copy(p, f.cur[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *crashFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(f.cur)) {
		f.cur = resize(f.cur, end)
	}
	copy(f.cur[off:], p)
	f.pending = append(f.pending, pendingOp{off: off, data: slices.Clone(p)})
	return len(p), nil
}

func (f *crashFile) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cur = resize(f.cur, size)
	f.pending = append(f.pending, pendingOp{size: size})
	return nil
}

func (f *crashFile) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.durable = slices.Clone(f.cur)
	f.pending = nil
	return nil
}

func (f *crashFile) Close() error { return nil }

// crash returns what the disk might hold after power loss: the synced image
// plus, in order, some of the unsynced operations; a write that survives may
// be torn at a 512-byte sector boundary.
func (f *crashFile) crash(r *rand.Rand) *crashFile {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := slices.Clone(f.durable)
	for _, op := range f.pending {
		switch r.IntN(10) {
		case 0, 1, 2, 3, 4: // lost
			continue
		case 5, 6: // torn: some leading sectors only
			if op.data != nil && len(op.data) > 512 {
				cut := 512 * (1 + r.IntN(len(op.data)/512-1+1))
				cut = min(cut, len(op.data)/2)
				if cut == 0 {
					continue
				}
				op.data = op.data[:cut]
			}
		}
		if op.data == nil {
			img = resize(img, op.size)
			continue
		}
		if end := op.off + int64(len(op.data)); end > int64(len(img)) {
			img = resize(img, end)
		}
		copy(img[op.off:], op.data)
	}
	return &crashFile{cur: img, durable: slices.Clone(img)}
}

// crashID is a small layout with several bitmap pages and a tiny AL, so
// evictions are frequent.
func crashID() Identity {
	return Identity{
		Resource:     "crash",
		Size:         512<<20 + 12345,
		Granularity:  4096,
		NodeID:       3,
		MaxPeers:     2,
		ALExtentSize: 16 << 20,
		ALExtents:    3,
	}
}

// harness drives a Meta with random operations and remembers what the meta
// file has promised.
type harness struct {
	t        testing.TB
	m        *Meta
	r        *rand.Rand
	inflight [][2]int64 // activated (bits set), not completed
	flushed  []*Bitmap  // bits set at the last good FlushBitmaps, not cleared since
	sbOK     Superblock // last durable superblock
	sbTry    *Superblock
}

func newHarness(t testing.TB, m *Meta, r *rand.Rand) *harness {
	h := &harness{t: t, m: m, r: r, sbOK: m.Superblock()}
	for s := range m.sb.MaxPeers {
		h.flushed = append(h.flushed, mustNew(t, m.sb.Size, m.sb.Granularity))
		// Whatever was loaded is on disk.
		h.flushed[s].Or(m.Bitmap(s))
	}
	return h
}

// step runs one random operation and returns the meta file's error, if any.
func (h *harness) step() error {
	m, r := h.m, h.r
	size := m.sb.Size
	ctx := context.Background()
	switch op := r.IntN(12); {
	case op < 5: // a write
		if len(h.inflight) >= 2 {
			w := h.inflight[0]
			h.inflight = h.inflight[1:]
			m.Complete(w[0], w[1])
		}
		off := r.Int64N(size)
		n := 1 + r.Int64N(64<<10)
		if err := m.Activate(ctx, off, n); err != nil {
			return err
		}
		m.Bitmap(0).Set(off, n)
		if r.IntN(2) == 0 {
			m.Bitmap(1).Set(off, n)
		}
		if r.IntN(2) == 0 {
			m.Complete(off, n)
		} else {
			h.inflight = append(h.inflight, [2]int64{off, n})
		}
	case op < 7:
		if err := m.FlushBitmaps(); err != nil {
			return err
		}
		for s, b := range h.flushed {
			b.ClearAll()
			b.Or(m.Bitmap(s))
		}
	case op < 9:
		try := h.sbOK.clone()
		try.GI.Current = r.Uint64()
		try.GI.Bitmap[r.IntN(len(try.GI.Bitmap))] = r.Uint64()
		try.Flags ^= FlagPrimary
		try.Disk = DiskState(r.IntN(5))
		try.Seq++
		h.sbTry = &try
		err := m.UpdateSuperblock(func(sb *Superblock) {
			sb.GI, sb.Flags, sb.Disk = try.GI, try.Flags, try.Disk
			sb.GI.Bitmap = slices.Clone(try.GI.Bitmap)
		})
		if err != nil {
			return err
		}
		h.sbOK, h.sbTry = m.Superblock(), nil
	case op < 10: // resync cleared a range
		s := r.IntN(len(h.flushed))
		off, n := r.Int64N(size), r.Int64N(32<<20)
		for _, w := range h.inflight {
			if off < w[0]+w[1]+m.sb.Granularity && w[0] < off+n+m.sb.Granularity {
				return nil // never clear under a write in flight
			}
		}
		m.Bitmap(s).Clear(off, n)
		h.flushed[s].Clear(off, n)
	case op < 11:
		if len(h.inflight) > 0 {
			w := h.inflight[0]
			h.inflight = h.inflight[1:]
			m.Complete(w[0], w[1])
		}
	default:
		if err := m.ReleaseIdle(ctx); err != nil {
			return err
		}
	}
	return nil
}

// crashState is what the harness knew when the node died.
type crashState struct {
	mem     []*Bitmap
	flushed []*Bitmap
	active  []int64 // extents with writes in flight
	sbOK    Superblock
	sbTry   *Superblock
}

func (h *harness) snapshot() crashState {
	cs := crashState{sbOK: h.sbOK.clone(), sbTry: h.sbTry}
	for s := range h.flushed {
		cs.mem = append(cs.mem, h.m.Bitmap(s).Clone())
		cs.flushed = append(cs.flushed, h.flushed[s].Clone())
	}
	for _, w := range h.inflight {
		lo, hi := h.m.al.extents(w[0], w[1], h.m.sb.Size)
		for e := lo; e < hi; e++ {
			cs.active = append(cs.active, e)
		}
	}
	return cs
}

// check verifies a reopened meta file against what was promised before the
// crash, then applies the AL as the engine does after a primary crash and
// checks no set bit was lost.
func (cs crashState) check(t testing.TB, m *Meta, what string) {
	t.Helper()
	sb := m.Superblock()
	same := func(a Superblock) bool {
		return a.Seq == sb.Seq && a.GI.Current == sb.GI.Current && a.Flags == sb.Flags &&
			a.Disk == sb.Disk && slices.Equal(a.GI.Bitmap, sb.GI.Bitmap)
	}
	if !same(cs.sbOK) && (cs.sbTry == nil || !same(*cs.sbTry)) {
		t.Fatalf("%s: superblock is neither the old nor the new one:\n got %+v\n old %+v\n new %+v", what, sb, cs.sbOK, cs.sbTry)
	}
	hot := m.HotExtents()
	for _, e := range cs.active {
		if _, ok := slices.BinarySearch(hot, e); !ok {
			t.Fatalf("%s: extent %d had writes in flight but is not hot after reopen (hot %v)", what, e, hot)
		}
	}
	extOf := func(block int64) int64 { return block * m.sb.Granularity / m.sb.ALExtentSize }
	for s := range cs.mem {
		disk := m.Bitmap(s)
		for i, ok := cs.flushed[s].NextSet(0); ok; i, ok = cs.flushed[s].NextSet(i + 1) {
			if !disk.TestBlock(i) {
				t.Fatalf("%s: peer %d block %d was flushed but is clear after reopen", what, s, i)
			}
		}
		for i, ok := cs.mem[s].NextSet(0); ok; i, ok = cs.mem[s].NextSet(i + 1) {
			if _, hotExt := slices.BinarySearch(hot, extOf(i)); !disk.TestBlock(i) && !hotExt {
				t.Fatalf("%s: peer %d block %d was set, is clear on disk and its extent %d is not hot (hot %v)", what, s, i, extOf(i), hot)
			}
		}
	}
	m.MarkHotOutOfSync()
	for s := range cs.mem {
		for i, ok := cs.mem[s].NextSet(0); ok; i, ok = cs.mem[s].NextSet(i + 1) {
			if !m.Bitmap(s).TestBlock(i) {
				t.Fatalf("%s: peer %d block %d lost after applying the AL", what, s, i)
			}
		}
	}
}

// TestFailEachWrite fails the i-th write, sync or truncate of a fixed story,
// for every i, reopens the real file and checks what was promised is there.
func TestFailEachWrite(t *testing.T) {
	id := crashID()
	dir := t.TempDir()
	const steps = 60
	for i := 0; ; i++ {
		path := filepath.Join(dir, fmt.Sprintf("m%d", i))
		real, err := openOS(path, true)
		if err != nil {
			t.Fatal(err)
		}
		ff := &faultyFile{File: real, failAt: i}
		r := rand.New(rand.NewPCG(7, 7))
		m, err := createOn(ff, path, id, false)
		var cs crashState
		if err == nil {
			h := newHarness(t, m, r)
			for k := 0; k < steps && err == nil; k++ {
				err = h.step()
			}
			cs = h.snapshot()
		}
		if !ff.failed {
			if err != nil {
				t.Fatalf("fail at %d: error without a fault: %v", i, err)
			}
			m.Close()
			if i < 20 {
				t.Fatalf("only %d operations; the story is too short", i)
			}
			t.Logf("failed each of %d operations in turn", i)
			return
		}
		if !errors.Is(err, errInjected) {
			t.Fatalf("fail at %d: error %v does not wrap the injected fault", i, err)
		}
		real.Close()
		m2, err := Open(path, id)
		if m == nil {
			// Create failed: the file is blank, torn (ErrCorrupt) or
			// complete; a blank one is created by OpenOrCreate, a torn
			// one needs a forced create.
			switch {
			case err == nil:
				m2.Close()
			case errors.Is(err, errNotMeta):
				m3, created, err := openOrCreate(path, id)
				if err != nil || !created {
					t.Fatalf("fail at %d during create: OpenOrCreate: %v %v", i, created, err)
				}
				m3.Close()
			case errors.Is(err, errCorrupt):
				m3, err := CreateForce(path, id)
				if err != nil {
					t.Fatalf("fail at %d during create: CreateForce: %v", i, err)
				}
				m3.Close()
			default:
				t.Fatalf("fail at %d during create: reopen: %v", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("fail at %d: reopen: %v", i, err)
		}
		cs.check(t, m2, fmt.Sprintf("fail at %d", i))
		m2.Close()
	}
}

// TestCrashDropsUnsynced runs random stories on a file that loses (or
// tears) everything not synced at a random crash, several crashes per story.
func TestCrashDropsUnsynced(t *testing.T) {
	id := crashID()
	seeds := 40
	if testing.Short() || raceEnabled {
		seeds = 12
	}
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		f := &crashFile{}
		m, err := createOn(f, "crashfile", id, false)
		if err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 5; round++ {
			h := newHarness(t, m, r)
			n := r.IntN(80)
			for k := 0; k < n; k++ {
				if err := h.step(); err != nil {
					t.Fatalf("seed %d round %d: %v", seed, round, err)
				}
			}
			cs := h.snapshot()
			f = f.crash(r)
			what := fmt.Sprintf("seed %d round %d", seed, round)
			m, err = openOn(f, "crashfile", &id)
			if err != nil {
				t.Fatalf("%s: reopen: %v", what, err)
			}
			cs.check(t, m, what)
		}
	}
}

// TestActivateConcurrent hammers a small AL from several goroutines so
// Activate evicts and waits, then checks the crash invariant.
func TestActivateConcurrent(t *testing.T) {
	id := crashID()
	path := filepath.Join(t.TempDir(), "m")
	m, err := Create(path, id)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 3))
			for k := 0; k < 150; k++ {
				off, n := r.Int64N(id.Size), 1+r.Int64N(1<<20)
				if err := m.Activate(context.Background(), off, n); err != nil {
					t.Error(err)
					return
				}
				m.Bitmap(g%2).Set(off, n)
				if k%20 == 0 {
					if err := m.FlushBitmaps(); err != nil {
						t.Error(err)
					}
				}
				m.Complete(off, n)
			}
		}()
	}
	wg.Wait()
	if m.ActiveWrites() != 0 || len(m.HotExtents()) > id.ALExtents {
		t.Fatalf("active %d, hot %v", m.ActiveWrites(), m.HotExtents())
	}
	cs := crashState{sbOK: m.Superblock()}
	for s := 0; s < 2; s++ {
		cs.mem = append(cs.mem, m.Bitmap(s).Clone())
		cs.flushed = append(cs.flushed, mustNew(t, id.Size, id.Granularity))
	}
	crashClose(t, m)
	m, err = Open(path, id)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cs.check(t, m, "after concurrent writes")
}
