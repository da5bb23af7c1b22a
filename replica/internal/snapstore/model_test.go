package snapstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// msnap is the model of one snapshot.
type msnap struct {
	id      int // model's creation counter
	name    string
	img     []byte // the device at Create
	created int64
	valid   bool
	// first[x]: op clock of the first write into chunk x after the
	// snapshot (while it was valid); absent if none.
	first map[int64]int64
	// since: blocks written after the snapshot, until now.
	since map[int64]bool
	// at[id]: blocks written after this snapshot and before the later
	// snapshot id was created.
	at map[int]map[int64]bool
	// maybe: the Create or Delete of this snapshot failed; it may or may
	// not exist after a crash.
	maybe bool
	// vanish: taken with CreateLazy while the durable header said
	// unsynced and every valid snapshot was lazy: its header was
	// written without a sync, so a power loss may leave no trace of it
	// (every snapshot is invalid after one then). Cleared once a header
	// is durable again.
	vanish bool
	// lazy: taken with CreateLazy.
	lazy bool
}

// harness runs random operations against a Store and a model of it.
type harness struct {
	t      testing.TB
	r      *rand.Rand
	seed   uint64
	opt    Options
	f      *crashFile
	s      *Store
	live   *memLive
	clock  int64
	nextID int
	snaps  map[string]*msnap // existing in the model (valid or invalid)
	gone   map[string]bool   // deleted for sure
	// ghosts: deleted while the durable header said unsynced; a power
	// loss may bring them back, invalid. Cleared when a header is durable.
	ghosts map[string]*msnap
	inv    []Info // OnInvalidate calls not yet applied
	// widened: a crash happened; the changed blocks of the epoch current
	// then are known per chunk.
	widened bool
	// loose: an operation failed; a merge of changed blocks it began may
	// have reached the disk, so "changed between A and B" may hold blocks
	// written after B (never fewer than written in between).
	loose bool
	// faulty: an operation failed; stop and check after a crash.
	faulty bool
	// failedWrites: writes whose Preserve failed (not issued); their
	// copies may have become durable all the same.
	failedWrites [][3]int64 // off, n, clock
	// maybeChunks: chunks of failed writes: reported changed or not.
	maybeChunks map[int64]bool
	// boot is the system's boot the store sees (a crash is a reboot);
	// lazyAtCrash: every valid snapshot was lazy when the system went
	// down, so a power loss may invalidate them.
	boot        byte
	lazyAtCrash bool
	// counts of what the story did, to show it covers the ground
	n struct{ writes, creates, deletes, reads, diffs, reopens, invalidated, crashes, kills, lost int }
}

func newHarness(t testing.TB, seed uint64, opt Options, f *crashFile) *harness {
	h, err := tryHarness(t, seed, opt, f)
	if err != nil {
		t.Fatalf("seed %d: open: %v", seed, err)
	}
	return h
}

func tryHarness(t testing.TB, seed uint64, opt Options, f *crashFile) (*harness, error) {
	h := &harness{t: t, seed: seed, r: rand.New(rand.NewPCG(seed, 77)), opt: opt, f: f,
		snaps: make(map[string]*msnap), gone: make(map[string]bool), ghosts: make(map[string]*msnap), maybeChunks: make(map[int64]bool)}
	h.opt.OnInvalidate = func(in Info) { h.inv = append(h.inv, in) }
	h.opt.bootID = func() [16]byte { return [16]byte{0: 1, 1: h.boot} }
	h.opt.lazySync = -1 // the story flushes (step)
	h.live = newLive(opt.DeviceSize, h.r)
	s, err := openOn(f, "mem", h.opt)
	if err != nil {
		return nil, err
	}
	h.s = s
	return h, nil
}

// faultAtCreate checks that a store whose creation failed opens after a
// crash: blank (created afresh) or complete.
func faultAtCreate(t *testing.T, f *crashFile, opt Options, err error) {
	t.Helper()
	if !f.failed || !errors.Is(err, errInjected) {
		t.Fatalf("create: %v (fault injected: %v)", err, f.failed)
	}
	img := f.crash(rand.New(rand.NewPCG(1, 1)))
	s, err := openOn(img, "mem", opt)
	if err != nil {
		t.Fatalf("open after a crash during creation: %v", err)
	}
	if len(s.List()) != 0 {
		t.Fatalf("a store crashed during creation has snapshots: %+v", s.List())
	}
	s.Close()
}

func (h *harness) fatalf(format string, args ...any) {
	h.t.Helper()
	h.t.Fatalf("seed %d clock %d: %s", h.seed, h.clock, fmt.Sprintf(format, args...))
}

func (h *harness) chunkOf(off int64) int64 { return off / h.s.chunk }

// valids returns the valid model snapshots, oldest first.
func (h *harness) valids() []*msnap {
	var v []*msnap
	for _, m := range h.snaps {
		if m.valid {
			v = append(v, m)
		}
	}
	slices.SortFunc(v, func(a, b *msnap) int { return a.id - b.id })
	return v
}

func (h *harness) all() []*msnap {
	var v []*msnap
	for _, m := range h.snaps {
		v = append(v, m)
	}
	slices.SortFunc(v, func(a, b *msnap) int { return a.id - b.id })
	return v
}

// needed is how many slots the model says the store must hold: per chunk,
// one copy per distinct first-write among the valid snapshots.
func (h *harness) needed() int64 {
	per := make(map[int64]map[int64]bool)
	for _, m := range h.valids() {
		for x, c := range m.first {
			if per[x] == nil {
				per[x] = make(map[int64]bool)
			}
			per[x][c] = true
		}
	}
	var n int64
	for _, s := range per {
		n += int64(len(s))
	}
	return n
}

// copiesFor is how many new copies a write of [off, off+n) needs.
func (h *harness) copiesFor(off, n int64) int64 {
	var k int64
	for x := h.chunkOf(off); x <= h.chunkOf(off+n-1); x++ {
		for _, m := range h.valids() {
			if _, ok := m.first[x]; !ok {
				k++
				break
			}
		}
	}
	return k
}

// step runs one random operation. It returns an error only for injected
// faults (h.faulty set); everything else is checked here.
func (h *harness) step() error {
	err := h.op()
	if !h.faulty && !h.f.failed && !h.s.Stats().Unsynced {
		for _, m := range h.snaps {
			m.vanish = false // the header that cleared the flag is durable
		}
		clear(h.ghosts)
	}
	return err
}

func (h *harness) op() error {
	switch op := h.r.IntN(100); {
	case op < 50:
		return h.write()
	case op < 60:
		return h.create()
	case op < 66:
		return h.delete()
	case op < 82:
		h.read()
	case op < 92:
		h.changed()
	case op < 94:
		h.list()
	case op < 96:
		h.inv = h.inv[:0]
		h.s.flushLazy()
		if h.f.failed {
			h.faulty = true // an I/O error: every snapshot is invalid
			h.applyInv()
			return errInjected
		}
		h.applyInv()
	case op < 97:
		h.kill()
	default:
		return h.reopen()
	}
	return nil
}

// kill abandons the store as a crash of the process would (the system's
// page cache keeps every write) and opens it again: every snapshot,
// lazy or not, is still valid.
func (h *harness) kill() {
	if h.faulty || h.f.failed {
		return
	}
	h.inv = h.inv[:0]
	s, err := openOn(h.f, "mem", h.opt)
	if err != nil {
		if h.f.failed {
			h.faulty = true // the story stops here, and crashes
			return
		}
		h.fatalf("open after a kill: %v", err)
	}
	h.s = s
	h.n.kills++
	h.widened = true
	for _, in := range s.List() {
		if m := h.snaps[in.Name]; m != nil && m.valid && !in.Valid {
			h.fatalf("after a kill %q (lazy %v) is invalid: %s", in.Name, m.lazy, in.Reason)
		}
	}
	h.checkAll()
}

func (h *harness) randRange(max int64) (int64, int64) {
	size := h.opt.DeviceSize
	off := h.r.Int64N(size)
	if h.r.IntN(3) == 0 {
		off = off / h.s.chunk * h.s.chunk
	}
	n := 1 + h.r.Int64N(min(max, size-off))
	return off, n
}

func (h *harness) write() error {
	h.clock++
	off, n := h.randRange(3 * h.s.chunk)
	if h.r.IntN(4) == 0 {
		n = min(n, 512)
	}
	data := randBytes(h.r, n)
	before, slots := h.needed(), h.s.lay.slots
	want := h.copiesFor(off, n)
	h.inv = h.inv[:0]
	err := h.s.Preserve(context.Background(), off, n, h.live.read)
	if err != nil {
		if h.f.failed {
			h.faulty = true
			h.failedWrites = append(h.failedWrites, [3]int64{off, n, h.clock})
			for x := h.chunkOf(off); x <= h.chunkOf(off+n-1); x++ {
				h.maybeChunks[x] = true
			}
			h.applyInv()
			return err
		}
		h.fatalf("preserve %d+%d: %v", off, n, err)
	}
	// Invalidations: only when the copies could not all fit, and only of
	// snapshots that needed a copy; or all of them after an I/O error.
	ioFail := h.s.failure() != nil
	if len(h.inv) > 0 && !ioFail && before+want <= slots {
		h.fatalf("write %d+%d invalidated %v though %d+%d copies fit in %d slots", off, n, h.inv, before, want, slots)
	}
	for _, in := range h.inv {
		m := h.snaps[in.Name]
		if m == nil || !m.valid {
			h.fatalf("invalidated %q, which the model has not as valid", in.Name)
		}
		if strings.Contains(in.Reason, "full") {
			lacked := false
			for x := h.chunkOf(off); x <= h.chunkOf(off+n-1); x++ {
				if _, ok := m.first[x]; !ok {
					lacked = true
				}
			}
			if !lacked {
				h.fatalf("invalidated %q, which had a copy of every chunk of %d+%d", in.Name, off, n)
			}
		}
	}
	h.n.writes++
	h.applyInv()
	for _, m := range h.valids() {
		for x := h.chunkOf(off); x <= h.chunkOf(off+n-1); x++ {
			if _, ok := m.first[x]; !ok {
				m.first[x] = h.clock
			}
		}
	}
	for _, m := range h.snaps {
		for b := off / h.s.block; b <= (off+n-1)/h.s.block; b++ {
			m.since[b] = true
		}
	}
	h.live.write(data, off)
	h.checkUsed()
	return nil
}

// applyInv marks the snapshots the store reported invalid, checking the
// reason.
func (h *harness) applyInv() {
	ioFail := h.s.failure() != nil
	for _, in := range h.inv {
		m := h.snaps[in.Name]
		if m == nil || !m.valid {
			h.fatalf("invalidated %q, which the model has not as valid", in.Name)
		}
		switch {
		case ioFail && !strings.Contains(in.Reason, "I/O") && !strings.Contains(in.Reason, "full"):
			h.fatalf("invalidated %q for %q after an I/O error", in.Name, in.Reason)
		case !ioFail && !strings.Contains(in.Reason, "full"):
			h.fatalf("invalidated %q for %q, not a full store", in.Name, in.Reason)
		}
		m.valid, m.first = false, nil
		h.n.invalidated++
	}
	h.inv = h.inv[:0]
}

func (h *harness) checkUsed() {
	if h.faulty || h.f.failed {
		return
	}
	st := h.s.Stats()
	if want := h.needed() * h.s.chunk; st.Used != want {
		h.fatalf("store holds %d bytes, the model needs %d", st.Used, want)
	}
	if st.Used > st.Capacity {
		h.fatalf("store holds %d bytes, capacity %d", st.Used, st.Capacity)
	}
}

func (h *harness) newName() string {
	switch h.r.IntN(10) {
	case 0: // a deleted name again
		for _, n := range slices.Sorted(maps.Keys(h.gone)) {
			if h.snaps[n] == nil {
				return n
			}
		}
	case 1: // a duplicate
		if m := h.pick(); m != nil {
			return m.name
		}
	}
	h.nextID++
	return fmt.Sprintf("snap-%d.x_%d", h.nextID, h.r.IntN(1000))
}

func (h *harness) create() error {
	h.clock++
	name := h.newName()
	failedBefore := h.s.failure() != nil
	lazy := h.r.IntN(2) == 0
	create := h.s.Create
	if lazy {
		create = h.s.CreateLazy
	}
	v := h.valids()
	vanish := lazy && h.s.Stats().Unsynced && len(v) > 0 && !slices.ContainsFunc(v, func(m *msnap) bool { return !m.lazy })
	err := create(name, time.Unix(0, h.clock))
	h.applyInv()
	switch {
	case failedBefore:
		if !errors.Is(err, ErrFailed) {
			h.fatalf("create %q on a failed store: %v, want ErrFailed", name, err)
		}
		return nil
	case h.snaps[name] != nil:
		if !errors.Is(err, ErrExists) {
			h.fatalf("create duplicate %q: %v, want ErrExists", name, err)
		}
		return nil
	case len(h.snaps) >= MaxSnapshots:
		if !errors.Is(err, ErrTooMany) {
			h.fatalf("create %q with %d snapshots: %v, want ErrTooMany", name, len(h.snaps), err)
		}
		return nil
	}
	if err != nil && !h.f.failed {
		h.fatalf("create %q: %v", name, err)
	}
	h.nextID++
	m := &msnap{id: h.nextID, name: name, img: h.live.clone(), created: h.clock, valid: true, lazy: lazy,
		first: make(map[int64]int64), since: make(map[int64]bool), at: make(map[int]map[int64]bool), maybe: err != nil,
		vanish: vanish && err == nil}
	for _, o := range h.snaps {
		o.at[m.id] = cloneSet(o.since)
	}
	h.snaps[name] = m
	h.n.creates++
	delete(h.gone, name)
	if err != nil {
		h.faulty = true
		return err
	}
	h.checkUsed()
	return nil
}

func cloneSet(s map[int64]bool) map[int64]bool {
	c := make(map[int64]bool, len(s))
	for k := range s {
		c[k] = true
	}
	return c
}

func (h *harness) pick() *msnap {
	all := h.all()
	if len(all) == 0 {
		return nil
	}
	return all[h.r.IntN(len(all))]
}

func (h *harness) delete() error {
	h.clock++
	m := h.pick()
	if m == nil || h.r.IntN(8) == 0 {
		if err := h.s.Delete("nonexistent"); !errors.Is(err, ErrNotFound) {
			h.fatalf("delete unknown: %v, want ErrNotFound", err)
		}
		return nil
	}
	underFlag := h.s.Stats().Unsynced
	err := h.s.Delete(m.name)
	h.applyInv()
	if err != nil {
		if h.f.failed {
			m.maybe = true
			h.faulty = true
			return err
		}
		h.fatalf("delete %q: %v", m.name, err)
	}
	delete(h.snaps, m.name)
	h.n.deletes++
	h.gone[m.name] = true
	if underFlag {
		h.ghosts[m.name] = m // its deletion was written without a sync
	}
	h.checkUsed()
	return nil
}

func (h *harness) read() {
	m := h.pick()
	if m == nil {
		return
	}
	off, n := h.randRange(3 * h.s.chunk)
	p := make([]byte, n)
	err := h.s.ReadAt(context.Background(), m.name, p, off, h.live.read)
	if !m.valid {
		if !errors.Is(err, ErrInvalid) {
			h.fatalf("read invalid %q: %v, want ErrInvalid", m.name, err)
		}
		return
	}
	if err != nil {
		h.fatalf("read %q %d+%d: %v", m.name, off, n, err)
	}
	h.n.reads++
	if !bytes.Equal(p, m.img[off:off+n]) {
		h.fatalf("read %q %d+%d: differs from its image at byte %d", m.name, off, n, firstDiff(p, m.img[off:off+n]))
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// checkImage reads all of m through the store and compares.
func (h *harness) checkImage(m *msnap) {
	p := make([]byte, h.opt.DeviceSize)
	if err := h.s.ReadAt(context.Background(), m.name, p, 0, h.live.read); err != nil {
		h.fatalf("read %q: %v", m.name, err)
	}
	if i := firstDiff(p, m.img); i >= 0 {
		h.fatalf("snapshot %q differs from its image at byte %d (chunk %d)", m.name, i, int64(i)/h.s.chunk)
	}
}

func (h *harness) changed() {
	v := h.valids()
	if len(v) == 0 {
		return
	}
	a := v[h.r.IntN(len(v))]
	var b *msnap
	if i := h.r.IntN(len(v) + 1); i < len(v) && v[i].id > a.id {
		b = v[i]
	}
	h.checkChanged(a, b)
}

// checkChanged compares Changed(a, b) with the model: exactly, or after a
// crash at least the model's blocks and at most their whole chunks.
func (h *harness) checkChanged(a, b *msnap) {
	want := a.since
	to := ""
	if b != nil {
		want, to = a.at[b.id], b.name
	}
	got, err := h.s.Changed(a.name, to)
	if err != nil {
		h.fatalf("changed %q..%q: %v", a.name, to, err)
	}
	h.n.diffs++
	gotSet := make(map[int64]bool)
	var prevEnd int64 = -1
	for _, e := range got {
		if e.Len <= 0 || e.Off <= prevEnd || e.Off%h.s.block != 0 || e.Off+e.Len > h.opt.DeviceSize {
			h.fatalf("changed %q..%q: bad extent %+v after end %d", a.name, to, e, prevEnd)
		}
		if e.Off+e.Len != h.opt.DeviceSize && e.Len%h.s.block != 0 {
			h.fatalf("changed %q..%q: extent %+v is not whole blocks", a.name, to, e)
		}
		prevEnd = e.Off + e.Len
		for o := e.Off; o < e.Off+e.Len; o += h.s.block {
			gotSet[o/h.s.block] = true
		}
	}
	per := h.s.chunk / h.s.block
	for blk := range want {
		if !gotSet[blk] {
			h.fatalf("changed %q..%q misses block %d (written in between)", a.name, to, blk)
		}
	}
	bound := want
	if h.loose {
		bound = a.since
	}
	for blk := range gotSet {
		if bound[blk] {
			continue
		}
		if !h.widened && !h.loose {
			h.fatalf("changed %q..%q reports block %d, not written in between", a.name, to, blk)
		}
		inChunk := h.maybeChunks[blk/per]
		for o := blk / per * per; o < (blk/per+1)*per; o++ {
			inChunk = inChunk || bound[o]
		}
		if !inChunk {
			h.fatalf("changed %q..%q reports block %d, whose chunk was not written in between", a.name, to, blk)
		}
	}
}

func (h *harness) list() {
	got := h.s.List()
	all := h.all()
	if len(got) != len(all) {
		h.fatalf("list has %d snapshots, the model %d", len(got), len(all))
	}
	// Bytes: a copy per chunk with a first write; exclusive: a copy no
	// other valid snapshot shares (same chunk, same first write).
	share := make(map[[2]int64]int)
	for _, m := range h.valids() {
		for x, c := range m.first {
			share[[2]int64{x, c}]++
		}
	}
	for i, in := range got {
		m := all[i]
		if in.Name != m.name || in.Valid != m.valid || in.Created.UnixNano() != m.created {
			h.fatalf("list[%d] = %+v, model %q valid %v created %d", i, in, m.name, m.valid, m.created)
		}
		if i > 0 && in.Seq <= got[i-1].Seq {
			h.fatalf("list not in creation order: %+v", got)
		}
		if !m.valid {
			if in.Reason == "" || in.Bytes != 0 {
				h.fatalf("list[%d] invalid without reason or with bytes: %+v", i, in)
			}
			continue
		}
		var bytes, excl int64
		for x, c := range m.first {
			bytes += h.s.chunk
			if share[[2]int64{x, c}] == 1 {
				excl += h.s.chunk
			}
		}
		if in.Bytes != bytes || in.Exclusive != excl {
			h.fatalf("list %q: bytes %d exclusive %d, model %d %d", m.name, in.Bytes, in.Exclusive, bytes, excl)
		}
	}
}

// reopen closes the store cleanly and opens it again.
func (h *harness) reopen() error {
	if err := h.s.Close(); err != nil {
		if h.f.failed {
			h.faulty = true
			return err
		}
		h.fatalf("close: %v", err)
	}
	s, err := openOn(h.f, "mem", h.opt)
	if err != nil {
		if h.f.failed {
			h.faulty = true
			return err
		}
		h.fatalf("reopen: %v", err)
	}
	h.s = s
	h.n.reopens++
	h.checkAll()
	return nil
}

// crash drops what was not synced and opens the store again on what
// survived, then checks every promise.
func (h *harness) crash() {
	v := h.valids()
	// A snapshot whose Create failed (maybe) is on disk only if that
	// header, which syncs the lazy copies first, is.
	h.lazyAtCrash = len(v) > 0 && !slices.ContainsFunc(v, func(m *msnap) bool { return !m.lazy && !m.maybe })
	img := h.f.crash(h.r)
	h.f = img
	h.boot++ // power loss: the system starts again
	h.inv = h.inv[:0]
	s, err := openOn(h.f, "mem", h.opt)
	if err != nil {
		h.fatalf("open after crash: %v", err)
	}
	h.s = s
	h.n.crashes++
	h.widened = true
	h.reconcile()
	clear(h.ghosts)   // Open wrote a durable header: the deleted stay deleted
	h.inv = h.inv[:0] // Open's invalidations: reconcile judged them
	h.checkAll()
}

// reconcile adopts what the reopened store says where the model allowed
// either (an operation that failed), and checks the rest.
func (h *harness) reconcile() {
	got := make(map[string]Info)
	for _, in := range h.s.List() {
		got[in.Name] = in
		if in.Reason != "" && strings.Contains(in.Reason, "checksums") {
			h.fatalf("after crash %q is invalid for damaged metadata", in.Name)
		}
	}
	for name, m := range h.snaps {
		in, ok := got[name]
		switch {
		case !ok && (m.maybe || m.vanish):
			delete(h.snaps, name)
		case !ok:
			h.fatalf("after crash snapshot %q (valid %v) is gone", name, m.valid)
		case in.Valid && !m.valid:
			h.fatalf("after crash snapshot %q is valid again", name)
		case !in.Valid && m.valid && strings.Contains(in.Reason, "power loss"):
			// Lazy copies may have been lost: allowed only if every
			// valid snapshot was lazy.
			if !h.lazyAtCrash {
				h.fatalf("after crash %q is invalid for a power loss, but not every valid snapshot was lazy (this one: %v)", name, m.lazy)
			}
			m.valid, m.first = false, nil
			h.n.lost++
		case !in.Valid && m.valid:
			// An invalidation whose header write failed may have
			// reached the disk anyway.
			if !h.faulty {
				h.fatalf("after crash snapshot %q is invalid: %s", name, in.Reason)
			}
			m.valid, m.first = false, nil
		}
		m.maybe = false
	}
	for name, in := range got {
		if h.snaps[name] == nil {
			// A snapshot deleted under the unsynced flag may be back
			// after a power loss, invalid (for the power loss, or for
			// whatever made it invalid before it was deleted).
			if g := h.ghosts[name]; g != nil && !in.Valid {
				g.valid, g.first, g.maybe, g.vanish = false, nil, false, false
				h.snaps[name] = g
				delete(h.gone, name)
				continue
			}
			h.fatalf("after crash snapshot %q exists, deleted or never created (%+v)", name, in)
		}
	}
	// A failed write's copy may be durable: then it is the first write
	// into its chunks for the snapshots that had no copy (its content is
	// the live one: the write was not issued).
	for _, fw := range h.failedWrites {
		for x := h.chunkOf(fw[0]); x <= h.chunkOf(fw[0]+fw[1]-1); x++ {
			for _, m := range h.valids() {
				if _, ok := m.first[x]; ok {
					continue
				}
				i := h.s.find(m.name)
				h.s.tab.RLock()
				k := h.s.lookup(x, h.s.hdr.entries[i].seq)
				h.s.tab.RUnlock()
				if k >= 0 {
					m.first[x] = fw[2]
				}
			}
		}
	}
	h.failedWrites = nil
	h.faulty = false
	h.loose = true
}

// checkAll reads every valid snapshot whole and checks Changed of every
// pair and the space held.
func (h *harness) checkAll() {
	v := h.valids()
	for _, m := range v {
		h.checkImage(m)
	}
	// Since each snapshot until now, and to each of the next three: every
	// epoch boundary, and cumulative spans.
	for i, a := range v {
		h.checkChanged(a, nil)
		for _, b := range v[i+1 : min(i+4, len(v))] {
			h.checkChanged(a, b)
		}
	}
	h.list()
	h.checkUsed()
}

// modelOptions is a small geometry with a partial last chunk and block.
// One story in three runs on a formatV1 store (kept across reopens).
func modelOptions(r *rand.Rand) Options {
	o := Options{
		DeviceSize: 32*4096 + 1536 + 100,
		BlockSize:  512,
		ChunkSize:  4096,
		Capacity:   int64(6+r.IntN(40)) * 4096,
	}
	if r.IntN(3) == 0 {
		o.version = formatV1
	}
	return o
}

// TestModel runs random writes, creates, deletes, reads, diffs and clean
// reopens against the model of every snapshot's image and changed blocks.
func TestModel(t *testing.T) {
	seeds, steps := 30, 600
	if testing.Short() || raceEnabled {
		seeds, steps = 4, 300
	}
	var total tally
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		h := newHarness(t, seed, modelOptions(r), newCrashFile())
		for range steps {
			if err := h.step(); err != nil {
				h.fatalf("%v", err)
			}
		}
		h.checkAll()
		if err := h.s.Close(); err != nil {
			t.Fatal(err)
		}
		total.add(h)
	}
	t.Logf("%+v", total)
	total.require(t)
}

// tally sums what the stories did.
type tally struct{ writes, creates, deletes, reads, diffs, reopens, invalidated, crashes, kills, lost int }

func (c *tally) add(h *harness) {
	c.writes += h.n.writes
	c.creates += h.n.creates
	c.deletes += h.n.deletes
	c.reads += h.n.reads
	c.diffs += h.n.diffs
	c.reopens += h.n.reopens
	c.invalidated += h.n.invalidated
	c.crashes += h.n.crashes
	c.kills += h.n.kills
	c.lost += h.n.lost
}

// require fails if the stories missed a kind of operation.
func (c *tally) require(t testing.TB) {
	t.Helper()
	if c.writes == 0 || c.creates == 0 || c.deletes == 0 || c.reads == 0 || c.diffs == 0 || c.reopens == 0 || c.invalidated == 0 || c.kills == 0 {
		t.Fatalf("the stories do not cover every operation: %+v", *c)
	}
}

// TestCrashBetweenOps crashes (dropping or tearing whatever was not synced)
// at random points between operations, several times per story.
func TestCrashBetweenOps(t *testing.T) {
	seeds := 30
	if testing.Short() || raceEnabled {
		seeds = 4
	}
	var total tally
	for seed := uint64(100); seed < 100+uint64(seeds); seed++ {
		r := rand.New(rand.NewPCG(seed, 2))
		h := newHarness(t, seed, modelOptions(r), newCrashFile())
		for range 4 {
			for range h.r.IntN(200) {
				if err := h.step(); err != nil {
					h.fatalf("%v", err)
				}
			}
			h.crash()
		}
		total.add(h)
	}
	// Lazy snapshots were lost to a power loss, and kept through kills.
	t.Logf("%+v", total)
	if total.crashes == 0 || total.lost == 0 || total.kills == 0 {
		t.Fatalf("the stories did not crash with lazy copies unsynced, or kill: %+v", total)
	}
}

// storyOps counts the mutating file operations of a fault-free story.
func storyOps(t *testing.T, seed uint64, steps int) int {
	r := rand.New(rand.NewPCG(seed, 3))
	f := newCrashFile()
	h := newHarness(t, seed, modelOptions(r), f)
	for range steps {
		if err := h.step(); err != nil {
			h.fatalf("%v", err)
		}
	}
	h.s.Close()
	return f.ops
}

// faultPoints picks which operations of a story of total to fail: every
// one of the first head (creation, first snapshots), then about n more,
// evenly.
func faultPoints(total, head, n int) []int {
	var ks []int
	for k := 0; k < total; k++ {
		if k < head || k%max(1, (total-head)/n) == 0 {
			ks = append(ks, k)
		}
	}
	return ks
}

// TestCrashDuringOps crashes inside an operation: from the k-th write,
// sync, truncate or allocation on, the disk is gone; the store sees errors,
// the story stops, the unsynced part is dropped or torn, and the reopened
// store must keep every promise (then the story goes on). k runs over the
// story.
func TestCrashDuringOps(t *testing.T) {
	const steps = 150
	seeds, head, points := 4, 40, 80
	if testing.Short() || raceEnabled {
		seeds, head, points = 1, 10, 12
	}
	for seed := uint64(200); seed < 200+uint64(seeds); seed++ {
		total := storyOps(t, seed, steps)
		ks := faultPoints(total, head, points)
		for _, k := range ks {
			r := rand.New(rand.NewPCG(seed, 3))
			f := newCrashFile()
			f.failAt = k
			opt := modelOptions(r)
			h, err := tryHarness(t, seed, opt, f)
			if err != nil {
				faultAtCreate(t, f, opt, err)
				continue
			}
			for i := 0; i < steps && !h.faulty; i++ {
				h.step()
			}
			if !h.faulty && h.s.Close() != nil {
				h.faulty = true // the fault hit the final close
			}
			if !f.failed {
				h.fatalf("fault at %d of %d never hit", k, total)
			}
			h.crash()
			for range 30 {
				if err := h.step(); err != nil {
					h.fatalf("after recovery: %v", err)
				}
			}
			h.checkAll()
		}
		t.Logf("seed %d: crashed at %d of its %d operations", seed, len(ks), total)
	}
}

// TestTransientFault fails one write, sync, truncate or allocation of the
// story: the store invalidates every snapshot durably and the writes go on;
// the story continues (reopening the store when a close or open failed) and
// ends with a crash, after which everything still checks.
func TestTransientFault(t *testing.T) {
	const steps = 150
	head, points := 40, 80
	if testing.Short() || raceEnabled {
		head, points = 10, 10
	}
	total := storyOps(t, 9, steps)
	ks := faultPoints(total, head, points)
	for _, k := range ks {
		r := rand.New(rand.NewPCG(9, 3))
		f := newCrashFile()
		f.failAt, f.failOnce = k, true
		opt := modelOptions(r)
		h, err := tryHarness(t, 9, opt, f)
		if err != nil {
			faultAtCreate(t, f, opt, err)
			continue
		}
		for range steps {
			if err := h.step(); err != nil {
				if !f.failed {
					h.fatalf("%v", err)
				}
				if h.s.closed {
					s, oerr := openOn(h.f, "mem", h.opt)
					if oerr != nil {
						h.fatalf("reopen after transient fault: %v", oerr)
					}
					h.s = s
					h.widened = true // closed unclean
				}
				h.reconcile()
			}
		}
		if !f.failed {
			if err := h.s.Close(); err != nil {
				h.faulty = true // the fault hit the final close
				s, oerr := openOn(h.f, "mem", h.opt)
				if oerr != nil {
					h.fatalf("reopen after a failed close: %v", oerr)
				}
				h.s = s
				h.widened = true
				h.reconcile()
			}
		}
		if !f.failed {
			h.fatalf("fault at %d of %d never hit", k, total)
		}
		h.crash()
	}
	t.Logf("failed %d of the story's %d operations in turn", len(ks), total)
}
