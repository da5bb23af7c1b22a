package snapstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/internal/bootid"
	"github.com/repd/repd/internal/durable"
)

// ReadFunc reads len(p) bytes of the live device at off. It must read the
// backing store directly: the store may hold a write's Preserve until a
// ReadFunc returns, so a ReadFunc that waits for writes in flight (or for
// the caller's snapshot barrier) can deadlock.
type ReadFunc func(p []byte, off int64) error

// Options configure a store. DeviceSize and Capacity are required.
type Options struct {
	// DeviceSize is the size of the live device in bytes.
	DeviceSize int64
	// BlockSize is the changed-block granularity (the resource's bitmap
	// block): a power of two from 512 B to 1 MiB, at most ChunkSize. Zero
	// takes the store file's, or 4 KiB for a new store.
	BlockSize int64
	// ChunkSize is the copy-on-write unit: a power of two from 4 KiB to
	// 4 MiB. Zero takes the store file's, or 64 KiB for a new store.
	ChunkSize int64
	// Capacity is how many bytes of preserved chunks the store may hold
	// (rounded down to whole chunks). It may change between opens: the
	// file grows, or shrinks if the chunks beyond the new capacity are
	// free. The file also holds MaxSnapshots changed-block areas of
	// DeviceSize/BlockSize/8 bytes each (sparse until used).
	Capacity int64
	// Logger receives what the store has to say; nil discards it.
	Logger *slog.Logger
	// OnInvalidate is called, after the fact is durable and without any
	// store lock held, for every snapshot the store invalidates (full
	// store, I/O error, damaged metadata found at Open). It runs in the
	// goroutine that caused it (often inside Preserve) and must not block
	// for long.
	OnInvalidate func(Info)
	// SyncLive makes every completed write of the live device durable
	// (its fdatasync). The store calls it before a header that clears
	// flagUnsynced, so a snapshot taken by CreateLazyUnsynced is on disk
	// whole before a power loss stops invalidating it. Nil: the live
	// device is always synced before a snapshot, and
	// CreateLazyUnsynced refuses.
	SyncLive func() error
	// Prewrite: a store Open creates is written once with zeroes in the
	// background (prewrite.go), so that copies do not pay for the
	// file system's first write into reserved space. PrewritePace, if
	// set, says how long to wait before writing n more bytes (the node's
	// pacing of background reads and writes).
	Prewrite     bool
	PrewritePace func(n int64) time.Duration

	// version is the format of a new store; 0 is FormatVersion (tests
	// make formatV1 stores with it).
	version uint32
	// bootID, if set, replaces bootid.ID (tests simulate reboots).
	bootID func() [16]byte
	// lazySync is how often lazy copies are synced and, once no copy
	// came meanwhile, the header's flagUnsynced cleared: 0 is
	// DefaultLazySync, negative never (tests call flushLazy).
	lazySync time.Duration
}

// DefaultLazySync is how long the store waits without a new lazy copy
// before it syncs them: a power loss within twice that of a lazy
// snapshot's last copy may still invalidate it (see Lazy snapshots).
// ext4's default commit interval, the window a power loss already has over
// a file system's own unsynced changes.
const DefaultLazySync = 5 * time.Second

// Info describes one snapshot.
type Info struct {
	Name        string
	Seq         uint64    // creation order: a later snapshot has a larger Seq
	Created     time.Time // the time passed to Create
	Valid       bool
	Lazy        bool      // its copies are synced in the background (CreateLazy)
	Reason      string    // why it is invalid
	Invalidated time.Time // when it became invalid
	// Bytes is the preserved data this snapshot reads from the store (its
	// chunks overwritten since it was taken), shared copies included.
	Bytes int64
	// Exclusive is the part of Bytes no other valid snapshot uses: what
	// deleting this one gives back.
	Exclusive int64
}

// Stats describe the store as a whole.
type Stats struct {
	Capacity  int64 // bytes of chunks the store may hold
	Used      int64 // bytes of chunks held
	ChunkSize int64
	BlockSize int64
	Snapshots int    // valid and invalid
	Failed    string // after an I/O error on the store file: what happened
	// FormatVersion of the store file (1: two fdatasyncs per copy).
	Format int
	// Copies is how many chunk copies were committed since Open, in
	// CommitRounds rounds of the group commit (each one fdatasync, unless
	// every valid snapshot is lazy); LazyCopies of them without one.
	Copies, CommitRounds, LazyCopies int64
	// Unsynced: lazy copies may not be durable yet (a power loss now
	// would invalidate the snapshots).
	Unsynced bool
	// PrewriteLeft: bytes of the new store's slot groups the background
	// pre-writing has yet to write or give up (prewrite.go); 0 once it
	// ended, or if there is none.
	PrewriteLeft int64
}

// Store is an open snapshot store. It is safe for concurrent use by many
// writers (Preserve) and readers (ReadAt, Changed, List); Create, Delete and
// Close wait for the calls in progress.
type Store struct {
	path    string
	f       file
	log     *slog.Logger
	onInv   func(Info)
	size    int64
	block   int64
	chunk   int64
	bShift  uint // log2(block)
	cShift  uint // log2(chunk)
	nchunks int64
	version uint32 // the file's format: formatV1 or FormatVersion

	// mu orders the structural changes (Create, Delete, invalidation,
	// Close: exclusive) against the data path (Preserve, ReadAt,
	// Changed, List: shared).
	mu      sync.RWMutex
	closed  bool
	lay     layout
	hdr     header // as last written (durable unless written by putHeaderUnsynced)
	durSlot int    // slot holding the newest durable header; writes go to the other
	hdrBuf  []byte
	newest  int // table index of the newest valid snapshot, -1 if none
	// After an I/O error (s.failure()), recovered is set once a header
	// invalidating every snapshot is durable; broken holds the error while
	// that could not be done.
	recovered bool
	broken    error
	// shrinkTo is the file length to truncate to once the header with a
	// smaller capacity is durable (0: none).
	shrinkTo int64

	// fast has a bit per chunk: set when the chunk has a durable copy for
	// the newest valid snapshot, so a write there needs nothing.
	fast []atomic.Uint64
	// cur has a bit per block: blocks written since the newest valid
	// snapshot (its epoch). Older epochs are on disk.
	cur []atomic.Uint64

	// stripes order a reader that reads a chunk from the live device
	// against the Preserve that publishes the chunk's copy.
	stripes [64]sync.RWMutex

	// tab guards the slot table.
	tab      sync.RWMutex
	slots    []slotInfo
	heads    map[int64]int32 // chunk -> its copies, ascending tags
	free     []int32         // free slots, lowest last
	inflight map[int64]*pending
	// Pre-writing (prewrite.go), under tab: allocHW is one past the
	// highest slot allocated since Open; slots [preLo, preHi) are being
	// written with zeroes (copies wait on preCond for them).
	allocHW      int32
	preLo, preHi int32
	preCond      *sync.Cond
	pre          *prewriter // nil: no pre-writing

	c       committer
	bufPool sync.Pool
	syncs   atomic.Int64 // fdatasyncs of the commit path, for tests

	// Lazy snapshots: bootID is this boot of the system (zero: unknown,
	// every copy is synced). lazy (s.mu) is set while every valid
	// snapshot is lazy and at least one is: copies then skip their
	// fdatasync once the durable header has flagUnsynced. lazyCopies
	// counts those copies; the flusher (lazySync) syncs them and clears
	// the flag when none came meanwhile.
	bootID     [16]byte
	lazy       bool
	lazyCopies atomic.Int64 // and snapshots taken with the live device unsynced
	syncLive   func() error
	// liveDirty (s.mu) is set while the flag covers a snapshot taken
	// with the live device unsynced (or may: a header read with the flag
	// set): clearing the flag then syncs the live device first.
	liveDirty bool
	stopFlush chan struct{}
	flushDone chan struct{}
	closeOnce sync.Once
}

// slotInfo is the in-memory descriptor of a slot.
type slotInfo struct {
	chunk int64  // -1: free
	tag   uint64 // seq of the newest valid snapshot when it was copied
	next  int32  // next copy of the same chunk (higher tag), -1: none
}

// check validates what the caller gave; the full geometry is checked
// against the store file's (an existing store) or the defaults (a new one).
func (o Options) check() error {
	switch {
	case o.DeviceSize <= 0:
		return errors.New("Options.DeviceSize must be the device size in bytes")
	case o.Capacity <= 0:
		return errors.New("Options.Capacity must be set: the bytes of preserved data the store may hold")
	}
	block, chunk := o.geometry()
	if o.BlockSize != 0 && o.ChunkSize == 0 {
		chunk = MaxChunkSize // whichever the file has, at most this
	}
	if o.ChunkSize == 0 {
		return checkGeometry(o.DeviceSize, block, chunk, max(o.Capacity, chunk))
	}
	return checkGeometry(o.DeviceSize, block, chunk, o.Capacity)
}

// geometry is the block and chunk size of a new store: 4 KiB blocks and
// 64 KiB chunks unless given (a larger block makes the chunk at least as
// large).
func (o Options) geometry() (block, chunk int64) {
	block, chunk = o.BlockSize, o.ChunkSize
	if block == 0 {
		block = DefaultBlockSize
		if chunk != 0 {
			block = min(block, chunk)
		}
	}
	if chunk == 0 {
		chunk = max(DefaultChunkSize, block)
	}
	return block, chunk
}

// unfinished reports whether raw (the header area of a file) is a store
// creation that never completed: the first slot is not a valid header (a
// torn first write), the second was never written, and the file has
// exactly the length the creation gave it.
func unfinished(f file, raw []byte, opt Options) bool {
	if _, _, st := decodeHeader(raw[:hdrSlotBytes]); st == slotValid || st == slotNewVersion {
		return false
	}
	if slices.ContainsFunc(raw[hdrSlotBytes:], func(b byte) bool { return b != 0 }) {
		return false
	}
	block, chunk := opt.geometry()
	total := layoutOf(opt.DeviceSize, block, chunk, opt.Capacity/chunk*chunk).total
	var b [1]byte
	if durable.ReadFull(f, b[:], total-1) != nil {
		return false
	}
	n, _ := f.ReadAt(b[:], total)
	return n == 0
}

// Open opens the store file at path, creating it when it does not exist or
// is empty or all zero, or is a creation that never completed (the first
// header slot torn, the second blank, the length what the creation set). An existing
// store must be for the same device size, and for opt's block and chunk
// size where they are given, else a *MismatchError naming the field. A file
// holding anything else is refused with ErrNotStore.
//
// A store that was not closed cleanly comes back with every snapshot that
// was valid still valid; the changed blocks of the newest valid snapshot are
// then known at chunk granularity only (its finer record was in memory).
func Open(path string, opt Options) (*Store, error) {
	if err := opt.check(); err != nil {
		return nil, fmt.Errorf("open snapshot store %s: %w", path, err)
	}
	f, _, err := openOS(path)
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	s, err := openOn(f, path, opt)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// openOn opens the store on f. opt has passed check.
func openOn(f file, path string, opt Options) (*Store, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("store", path)
	raw := make([]byte, headerBytes)
	n, err := f.ReadAt(raw, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read snapshot store %s: %w", path, err)
	}
	blank := !slices.ContainsFunc(raw[:n], func(b byte) bool { return b != 0 })
	if !blank && n == len(raw) && unfinished(f, raw, opt) {
		log.Warn("the snapshot store's creation never completed: creating it again")
		blank = true
	}
	if blank {
		block, chunk := opt.geometry()
		if err := checkGeometry(opt.DeviceSize, block, chunk, opt.Capacity); err != nil {
			return nil, fmt.Errorf("create snapshot store %s: %w", path, err)
		}
		h, err := initFile(f, path, opt, log)
		if err != nil {
			return nil, err
		}
		s := newStore(f, path, h, 0, opt, log)
		log.Info("created snapshot store", "capacity", h.capacity, "chunk", h.chunk, "block", h.block)
		if opt.Prewrite {
			s.pre = startPrewriter(f, s.lay, log, opt.PrewritePace, s.claimGroup, s.releaseGroup)
		}
		return s, nil
	}
	h, slot, err := pickHeader(path, raw)
	if err != nil {
		return nil, err
	}
	mm := func(field string, have, want int64) error {
		return &MismatchError{Path: path, Field: field, Have: fmt.Sprint(have), Want: fmt.Sprint(want)}
	}
	switch {
	case h.devSize != opt.DeviceSize:
		return nil, mm("device size", h.devSize, opt.DeviceSize)
	case opt.BlockSize != 0 && h.block != opt.BlockSize:
		return nil, mm("block size", h.block, opt.BlockSize)
	case opt.ChunkSize != 0 && h.chunk != opt.ChunkSize:
		return nil, mm("chunk size", h.chunk, opt.ChunkSize)
	}
	if err := checkGeometry(h.devSize, h.block, h.chunk, opt.Capacity); err != nil {
		return nil, fmt.Errorf("open snapshot store %s: %w", path, err)
	}
	if h.version == formatV1 && opt.version != formatV1 && !slices.ContainsFunc(h.entries[:], func(e entry) bool { return e.state != stateFree }) {
		// No snapshot to keep: start over in the current format (one
		// fdatasync per copy instead of two). A crash during the
		// creation leaves a blank or unfinished file, created again.
		log.Info("the snapshot store holds no snapshots: recreating it in the current format", "from", formatV1, "to", FormatVersion)
		opt.BlockSize, opt.ChunkSize = h.block, h.chunk
		h, err := initFile(f, path, opt, log)
		if err != nil {
			return nil, err
		}
		return newStore(f, path, h, 0, opt, log), nil
	}
	lay := layoutOf(h.devSize, h.block, h.chunk, h.capacity)
	// Check the length before allocating anything the header sizes.
	var last [1]byte
	if err := durable.ReadFull(f, last[:], lay.total-1); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("snapshot store %s: %w: shorter than its layout (%d bytes)", path, ErrCorrupt, lay.total)
		}
		return nil, fmt.Errorf("read snapshot store %s: %w", path, err)
	}
	s := newStore(f, path, h, slot, opt, log)
	if err := s.load(opt.Capacity); err != nil {
		return nil, err
	}
	return s, nil
}

// initFile writes a fresh store: an empty table, all slots free.
func initFile(f file, path string, opt Options, log *slog.Logger) (header, error) {
	v := opt.version
	if v == 0 {
		v = FormatVersion
	}
	h := header{
		version:  v,
		seq:      1,
		instance: rand.Uint64() | 1,
		devSize:  opt.DeviceSize,
		block:    opt.BlockSize,
		chunk:    opt.ChunkSize,
		capacity: opt.Capacity,
		nextSeq:  1,
	}
	h.block, h.chunk = opt.geometry()
	h.capacity = h.capacity / h.chunk * h.chunk
	lay := layoutOf(h.devSize, h.block, h.chunk, h.capacity)
	if err := f.Truncate(0); err != nil {
		return h, fmt.Errorf("create snapshot store %s: %w", path, err)
	}
	if err := f.Truncate(lay.total); err != nil {
		return h, fmt.Errorf("create snapshot store %s: %w", path, err)
	}
	if err := reserve(f, lay.groupsOff, lay.total-lay.groupsOff, log); err != nil {
		return h, fmt.Errorf("create snapshot store %s: reserve %d bytes: %w", path, lay.total-lay.groupsOff, err)
	}
	// The length is durable before the header is written, so that a torn
	// header write is recognizable as an unfinished creation.
	if err := f.Sync(); err != nil {
		return h, fmt.Errorf("create snapshot store %s: sync: %w", path, err)
	}
	buf := make([]byte, hdrSlotBytes)
	h.encode(buf)
	if err := durable.WriteFull(f, buf, 0); err != nil {
		return h, fmt.Errorf("create snapshot store %s: write header: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return h, fmt.Errorf("create snapshot store %s: sync: %w", path, err)
	}
	return h, nil
}

// reserve allocates disk space so that writes there cannot fail for lack of
// it; a file system that cannot is logged once and let be.
func reserve(f file, off, n int64, log *slog.Logger) error {
	if n <= 0 {
		return nil
	}
	err := f.Allocate(off, n)
	if errors.Is(err, errNoAllocate) {
		log.Warn("the file system cannot reserve space: a full file system may fail snapshot copies", "bytes", n)
		return nil
	}
	return err
}

func newStore(f file, path string, h header, slot int, opt Options, log *slog.Logger) *Store {
	s := &Store{
		path:    path,
		f:       f,
		log:     log,
		onInv:   opt.OnInvalidate,
		size:    h.devSize,
		block:   h.block,
		chunk:   h.chunk,
		bShift:  uint(bits.TrailingZeros64(uint64(h.block))),
		cShift:  uint(bits.TrailingZeros64(uint64(h.chunk))),
		version: h.version,
		hdr:     h,
		durSlot: slot,
		hdrBuf:  make([]byte, hdrSlotBytes),
		newest:  -1,
	}
	s.nchunks = (s.size + s.chunk - 1) >> s.cShift
	s.lay = layoutOf(h.devSize, h.block, h.chunk, h.capacity)
	s.fast = make([]atomic.Uint64, (s.nchunks+63)/64)
	s.cur = make([]atomic.Uint64, (s.lay.blocks+63)/64)
	s.heads = make(map[int64]int32)
	s.inflight = make(map[int64]*pending)
	s.preCond = sync.NewCond(&s.tab)
	s.setSlots(s.lay.slots)
	s.c.tok = make(chan struct{}, 1)
	s.c.kick = make(chan struct{}, 1)
	chunk := int(s.chunk)
	s.bufPool.New = func() any { b := make([]byte, chunk); return &b }
	s.newest = s.newestValid(&s.hdr)
	s.syncLive = opt.SyncLive
	s.liveDirty = h.unsynced() // a snapshot may have been taken unsynced
	if opt.bootID != nil {
		s.bootID = opt.bootID()
	} else {
		// A lazy copy's page-cache write survives a crash of repd but
		// not of the system: the boot ID tells which one happened
		// (zero where unknown: every copy is synced).
		s.bootID = bootid.ID()
	}
	s.lazy = s.lazyMode(&s.hdr)
	s.stopFlush, s.flushDone = make(chan struct{}), make(chan struct{})
	every := opt.lazySync
	if every == 0 {
		every = DefaultLazySync
	}
	if every > 0 && s.bootID != ([16]byte{}) {
		go s.flusher(every)
	} else {
		close(s.flushDone)
	}
	return s
}

// lazyMode reports whether copies under header h may skip their
// fdatasync: every valid snapshot is lazy (one at least), the format has
// data hashes, and the boot ID is known.
func (s *Store) lazyMode(h *header) bool {
	if s.bootID == ([16]byte{}) || h.version == formatV1 {
		return false
	}
	some := false
	for i := range h.entries {
		if e := &h.entries[i]; e.valid() {
			if !e.lazy() {
				return false
			}
			some = true
		}
	}
	return some
}

// setSlots sizes the slot table to n slots, all free.
func (s *Store) setSlots(n int64) {
	s.slots = make([]slotInfo, n)
	s.free = make([]int32, 0, n)
	for k := n - 1; k >= 0; k-- {
		s.slots[k] = slotInfo{chunk: -1, next: -1}
		s.free = append(s.free, int32(k))
	}
}

// load reads the slot descriptors and the newest snapshot's changed blocks
// of an existing store, applies a capacity change and marks the store open
// (not clean) on disk.
func (s *Store) load(capacity int64) error {
	h := s.hdr
	clean := h.flags&flagClean != 0
	var torn, wrong []int32
	type copyRec struct {
		slot int32
		d    desc
	}
	var copies []copyRec
	page := make([]byte, pageBytes)
	for g := int64(0); g*descPerPage < s.lay.slots; g++ {
		first := int32(g * descPerPage)
		cnt := min(descPerPage, s.lay.slots-g*descPerPage)
		if err := durable.ReadFull(s.f, page[:cnt*descBytes], s.lay.descOff(first)); err != nil {
			return fmt.Errorf("read snapshot store %s: descriptors: %w", s.path, err)
		}
		for i := range int32(cnt) {
			d, st := decodeDesc(page[i*descBytes:], s.version, h.instance, s.nchunks, h.nextSeq)
			switch st {
			case descTorn:
				torn = append(torn, first+i)
			case descWrong:
				wrong = append(wrong, first+i)
			case descInUse:
				copies = append(copies, copyRec{first + i, d})
			}
		}
	}
	// Link every copy in ascending tag order per chunk; the GC below drops
	// the stale ones (copies no valid snapshot needs any more).
	sort.Slice(copies, func(i, j int) bool {
		a, b := copies[i].d, copies[j].d
		return a.chunk < b.chunk || a.chunk == b.chunk && a.tag < b.tag
	})
	// In FormatVersion a descriptor may be durable while its data is not
	// (both are written before the one sync that commits them): after an
	// unclean shutdown, a copy whose data fails its descriptor's hash is
	// one whose commit never completed, as a torn descriptor is. Only
	// copies tagged with the newest valid snapshot can be such: copies
	// are tagged with the newest valid snapshot, and every header change
	// that makes another one the newest waits for the copies in flight.
	// Such a copy is its chunk's last (highest tag); one below another
	// copy that fails is damage.
	unfinished := 0
	if s.version != formatV1 && !clean {
		var top uint64
		if i := s.newestValid(&h); i >= 0 {
			top = h.entries[i].seq
		}
		buf := make([]byte, s.chunk)
		keep := copies[:0]
		for i, c := range copies {
			if top == 0 || c.d.tag < top {
				keep = append(keep, c)
				continue
			}
			b := buf[:min(s.chunk, s.size-c.d.chunk<<s.cShift)]
			if err := durable.ReadFull(s.f, b, s.lay.slotOff(c.slot)); err != nil {
				return fmt.Errorf("read snapshot store %s: copy in slot %d: %w", s.path, c.slot, err)
			}
			switch last := i == len(copies)-1 || copies[i+1].d.chunk != c.d.chunk; {
			case dataSum(b, h.instance) == c.d.sum:
				keep = append(keep, c)
			case last:
				torn = append(torn, c.slot)
				unfinished++
			default:
				wrong = append(wrong, c.slot)
			}
		}
		copies = keep
	}
	for i, c := range copies {
		if i > 0 && copies[i-1].d.chunk == c.d.chunk && copies[i-1].d.tag == c.d.tag {
			wrong = append(wrong, c.slot) // two copies of one chunk for one snapshot
			continue
		}
		s.linkTail(c.d.chunk, c.slot, c.d.tag)
	}
	s.free = s.free[:0]
	for k := int32(len(s.slots)) - 1; k >= 0; k-- {
		if s.slots[k].chunk < 0 {
			s.free = append(s.free, k)
		}
	}
	// A descriptor that fails its checksum is one whose write never
	// completed: its Preserve never returned, so its chunk was not
	// overwritten and the slot's old content was free or stale. After a
	// clean close there is none, and one that checksums but makes no sense
	// is never a crash's doing: damage that may have hit a needed copy.
	var inv []int
	// Lazy copies may have been in the page cache only. After a crash of
	// the process on this same boot they are all there (the header
	// written below syncs them first); after a power loss or kernel crash
	// a live write may have reached the disk and its copy not. Then
	// copies may also be tagged with a snapshot whose header (written
	// without a sync under the flag) did not reach the disk: no damage,
	// every snapshot is invalidated for the power loss anyway.
	lost := !clean && h.unsynced() && (s.bootID == [16]byte{} || h.bootID != s.bootID)
	damaged := len(wrong) > 0 && !lost || clean && len(torn) > 0
	if lost && !damaged {
		s.log.Error("the system went down while copies of lazy snapshots were not synced: they are invalidated")
		for i := range h.entries {
			if h.entries[i].valid() {
				inv = append(inv, i)
				h.entries[i] = invalidEntry(h.entries[i], reasonPowerLoss, 0, time.Now())
			}
		}
	} else if !clean && h.unsynced() {
		s.log.Info("repd stopped while lazy copies were not synced; this boot's page cache holds them: syncing")
	}
	if damaged {
		s.log.Error("snapshot store metadata is damaged: every snapshot is invalidated",
			"bad_descriptors", len(wrong)+len(torn), "clean", clean)
		for i := range h.entries {
			if h.entries[i].valid() {
				inv = append(inv, i)
				h.entries[i] = invalidEntry(h.entries[i], reasonDamaged, 0, time.Now())
			}
		}
	} else if len(torn) > 0 {
		s.log.Info("unclean shutdown: discarded copies whose commit never completed", "slots", len(torn), "data_unsynced", unfinished)
	}
	for _, k := range append(torn, wrong...) {
		if err := durable.WriteFull(s.f, make([]byte, descBytes), s.lay.descOff(k)); err != nil {
			return fmt.Errorf("snapshot store %s: clear descriptor: %w", s.path, err)
		}
	}
	s.newest = s.newestValid(&h)
	s.hdr.entries = h.entries // the GC needs the valid set
	s.gcLocked()
	// Every valid snapshot but the newest must have a complete area on disk
	// (Create seals it). Should one not, rebuild it at chunk granularity.
	for i := range h.entries {
		if e := &h.entries[i]; e.valid() && i != s.newest && !e.sealed() {
			s.log.Warn("snapshot has no complete changed-block record: rebuilt at chunk granularity", "snapshot", e.name)
			if err := s.writeArea(i, s.fallback(&h, i)); err != nil {
				return fmt.Errorf("snapshot store %s: %w", s.path, err)
			}
			e.flags |= entrySealed
		}
	}
	if s.newest >= 0 {
		var words []uint64
		if clean {
			var err error
			if words, err = s.readArea(s.newest); err != nil {
				return fmt.Errorf("snapshot store %s: %w", s.path, err)
			}
		} else {
			words = s.fallback(&h, s.newest)
			s.log.Info("unclean shutdown: blocks changed since the newest snapshot are known per chunk",
				"snapshot", h.entries[s.newest].name, "chunk", s.chunk)
		}
		for i := range s.cur {
			s.cur[i].Store(words[i])
		}
	}
	if err := s.resize(&h, capacity); err != nil {
		return err
	}
	h.flags &^= flagClean | flagUnsynced // writeHeader syncs first if set
	if err := s.writeHeader(&h); err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	s.rebuildFast()
	infos := make([]Info, 0, len(inv))
	for _, i := range inv {
		infos = append(infos, s.infoOf(i))
	}
	s.report(infos)
	return nil
}

// resize applies a new capacity to h (written by the caller) and the file.
func (s *Store) resize(h *header, capacity int64) error {
	capacity = capacity / s.chunk * s.chunk
	if capacity == h.capacity {
		return nil
	}
	newSlots := capacity / s.chunk
	old := s.lay
	if newSlots < old.slots {
		var used int64
		for k := newSlots; k < old.slots; k++ {
			if s.slots[k].chunk >= 0 {
				used++
			}
		}
		if used > 0 {
			return fmt.Errorf("snapshot store %s: cannot shrink to %d bytes: %d chunks beyond that hold preserved data; delete snapshots first or keep the capacity at %d bytes",
				s.path, capacity, used, h.capacity)
		}
	}
	next := layoutOf(h.devSize, h.block, h.chunk, capacity)
	if newSlots > old.slots {
		if err := s.f.Truncate(next.total); err != nil {
			return fmt.Errorf("snapshot store %s: grow to %d bytes: %w", s.path, next.total, err)
		}
		if err := reserve(s.f, old.total, next.total-old.total, s.log); err != nil {
			return fmt.Errorf("snapshot store %s: reserve %d bytes: %w", s.path, next.total-old.total, err)
		}
		// The new descriptors read as zero: free.
	}
	// A shrunk file is truncated after the header saying so is durable;
	// until then the tail is only unused.
	grown := make([]slotInfo, newSlots)
	copy(grown, s.slots)
	for k := old.slots; k < newSlots; k++ {
		grown[k] = slotInfo{chunk: -1, next: -1}
	}
	s.slots = grown
	s.free = s.free[:0]
	for k := int32(newSlots) - 1; k >= 0; k-- {
		if s.slots[k].chunk < 0 {
			s.free = append(s.free, k)
		}
	}
	s.log.Info("snapshot store capacity changed", "from", h.capacity, "to", capacity)
	h.capacity = capacity
	s.lay = next
	if newSlots < old.slots {
		s.shrinkTo = next.total
	}
	return nil
}

// writeHeader writes h, with the next sequence number, to the slot that
// does not hold the newest durable header, and syncs. On success it is
// the store's header.
func (s *Store) writeHeader(h *header) error {
	if !h.unsynced() && s.hdr.unsynced() {
		// The lazy copies made under the old header, and the live
		// writes before a snapshot taken with the live device unsynced,
		// must be durable before a header that no longer says they may
		// not be.
		if s.liveDirty {
			if err := s.syncLiveDevice(); err != nil {
				return err
			}
		}
		if err := s.f.Sync(); err != nil {
			return s.fail(fmt.Errorf("sync lazy copies: %w", err))
		}
	}
	return s.writeHeaderSynced(h)
}

// syncLiveDevice calls Options.SyncLive. Its failure is not the store's:
// the flag stays set (the caller's header is not written), so a power
// loss still invalidates the lazy snapshots.
func (s *Store) syncLiveDevice() error {
	if s.syncLive == nil {
		return nil
	}
	if err := s.syncLive(); err != nil {
		return fmt.Errorf("sync the live device: %w", err)
	}
	return nil
}

// writeHeaderSynced is writeHeader once everything the old header's
// flagUnsynced covered is known durable (or h keeps the flag).
func (s *Store) writeHeaderSynced(h *header) error {
	if !h.unsynced() {
		h.bootID = [16]byte{}
	}
	return s.putHeader(h, func(p []byte, off int64) error {
		if err := durable.WriteFull(s.f, p, off); err != nil {
			return err
		}
		return s.f.Sync()
	})
}

// writeHeaderSettingUnsynced writes h with flagUnsynced and this boot's ID,
// durably by itself (O_DSYNC): the old header has no flag, so every copy so
// far is durable and the rest of the file need not be synced first.
func (s *Store) writeHeaderSettingUnsynced(h *header) error {
	h.flags |= flagUnsynced
	h.bootID = s.bootID
	return s.putHeader(h, s.f.WriteSync)
}

// underFlag reports whether the newest durable header has flagUnsynced and
// h keeps it: whatever of h reaches the disk, a power loss invalidates
// every snapshot (the flag is set only while every valid snapshot is
// lazy, and a durable Create clears it), and a kill of repd leaves the
// page cache. Syncs of changed-block areas and headers can then be
// skipped (writeHeaderUnsynced).
func (s *Store) underFlag(h *header) bool {
	return s.hdr.unsynced() && h.unsynced()
}

// writeHeaderUnsynced writes h, which keeps flagUnsynced, without
// syncing: the newest durable header has the flag already, so a power
// loss invalidates every snapshot whichever slot it leaves on disk, and a
// kill of repd leaves h in the page cache. A sync here would cost a
// journal commit that waits for the writeback of the lazy copies (0.5 s
// under the bench's 4k QD32 load, with every replicated write held behind
// the snapshot's barrier). It goes to the slot that does not hold the
// durable header, as every header write does until one is durable, so
// the durable one is never overwritten by one that may not reach the
// disk whole.
func (s *Store) writeHeaderUnsynced(h *header) error {
	if !s.underFlag(h) {
		return fmt.Errorf("snapstore: writeHeaderUnsynced without flagUnsynced (a bug)")
	}
	return s.putHeaderAs(h, func(p []byte, off int64) error { return durable.WriteFull(s.f, p, off) }, false)
}

// putHeader writes h to the slot that does not hold the newest durable
// header, with the next sequence number, durably by write, and makes it
// the store's header.
func (s *Store) putHeader(h *header, write func(p []byte, off int64) error) error {
	return s.putHeaderAs(h, write, true)
}

func (s *Store) putHeaderAs(h *header, write func(p []byte, off int64) error, synced bool) error {
	h.seq = s.hdr.seq + 1
	slot := 1 - s.durSlot
	h.encode(s.hdrBuf)
	if err := write(s.hdrBuf, int64(slot)*hdrSlotBytes); err != nil {
		return s.fail(fmt.Errorf("write header: %w", err))
	}
	s.hdr = *h
	if synced {
		s.durSlot = slot
		if !h.unsynced() {
			s.liveDirty = false
		}
	}
	s.lazy = s.lazyMode(&s.hdr)
	if s.shrinkTo > 0 {
		if err := s.f.Truncate(s.shrinkTo); err != nil {
			s.log.Warn("could not shrink the snapshot store file", "err", err)
		}
		s.shrinkTo = 0
	}
	return nil
}

// newestValid is the table index of the valid snapshot with the highest
// seq in h, or -1.
func (s *Store) newestValid(h *header) int {
	best := -1
	for i := range h.entries {
		if h.entries[i].valid() && (best < 0 || h.entries[i].seq > h.entries[best].seq) {
			best = i
		}
	}
	return best
}

// validSeqs returns the seqs of the valid snapshots in h, ascending.
func validSeqs(h *header) []uint64 {
	var v []uint64
	for i := range h.entries {
		if h.entries[i].valid() {
			v = append(v, h.entries[i].seq)
		}
	}
	slices.Sort(v)
	return v
}

// find returns the table index of the snapshot called name, or -1.
func (s *Store) find(name string) int {
	for i := range s.hdr.entries {
		if e := &s.hdr.entries[i]; e.state != stateFree && e.name == name {
			return i
		}
	}
	return -1
}

func invalidEntry(e entry, reason uint8, detail uint64, now time.Time) entry {
	e.state, e.flags, e.reason, e.detail, e.invalidated = stateInvalid, 0, reason, detail, now.UnixNano()
	return e
}

// ---- the slot table (s.tab held, or no one else can see the store) ----

// linkTail appends slot k holding chunk x with tag to x's copies. The tag is
// higher than every tag x has.
func (s *Store) linkTail(x int64, k int32, tag uint64) {
	s.slots[k] = slotInfo{chunk: x, tag: tag, next: -1}
	head, ok := s.heads[x]
	if !ok {
		s.heads[x] = k
		return
	}
	for s.slots[head].next >= 0 {
		head = s.slots[head].next
	}
	s.slots[head].next = k
}

// maxTag is the highest tag of x's copies, 0 if none.
func (s *Store) maxTag(x int64) uint64 {
	k, ok := s.heads[x]
	if !ok {
		return 0
	}
	for s.slots[k].next >= 0 {
		k = s.slots[k].next
	}
	return s.slots[k].tag
}

// lookup returns the slot holding chunk x as the snapshot with seq saw it:
// the copy with the smallest tag >= seq. -1: the chunk was not overwritten
// since, the live device has it.
func (s *Store) lookup(x int64, seq uint64) int32 {
	k, ok := s.heads[x]
	if !ok {
		return -1
	}
	for ; k >= 0; k = s.slots[k].next {
		if s.slots[k].tag >= seq {
			return k
		}
	}
	return -1
}

// alloc takes a free slot (the lowest, in a store whose free list was
// never reordered); s.tab held. The caller first waits while nextBusy.
func (s *Store) alloc() (int32, bool) {
	if len(s.free) == 0 {
		return -1, false
	}
	k := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	s.allocHW = max(s.allocHW, k+1)
	return k, true
}

// nextBusy reports whether the slot alloc would take is being pre-written
// (prewrite.go); s.tab held. If so, the pre-writing is told to give its
// group up; the caller waits on preCond.
func (s *Store) nextBusy() bool {
	if len(s.free) == 0 {
		return false
	}
	k := s.free[len(s.free)-1]
	if k < s.preLo || k >= s.preHi {
		return false
	}
	s.pre.abort.Store(true)
	return true
}

// claimGroup gives slots [lo, hi) to the pre-writing unless a copy was
// ever allocated one of them (or above).
func (s *Store) claimGroup(lo, hi int64) bool {
	s.tab.Lock()
	defer s.tab.Unlock()
	if int64(s.allocHW) > lo {
		return false
	}
	s.preLo, s.preHi = int32(lo), int32(hi)
	return true
}

// releaseGroup ends the pre-writing's claim and wakes the copies waiting
// for it.
func (s *Store) releaseGroup() {
	s.tab.Lock()
	s.preLo, s.preHi = 0, 0
	s.preCond.Broadcast()
	s.tab.Unlock()
}

func (s *Store) release(k int32) {
	s.slots[k] = slotInfo{chunk: -1, next: -1}
	s.free = append(s.free, k)
}

// gcLocked frees every copy no valid snapshot reads. A copy with tag t
// whose next lower copy of the same chunk has tag p serves the snapshots
// with seq in (p, t]. Called with s.mu held exclusively (or during Open).
func (s *Store) gcLocked() {
	valid := validSeqs(&s.hdr)
	needed := func(p, t uint64) bool {
		i, _ := slices.BinarySearch(valid, p+1)
		return i < len(valid) && valid[i] <= t
	}
	s.tab.Lock()
	defer s.tab.Unlock()
	// In chunk order, so that the free list (and so the slot each later
	// copy takes) is the same every time the same story runs.
	chunks := make([]int64, 0, len(s.heads))
	for x := range s.heads {
		chunks = append(chunks, x)
	}
	slices.Sort(chunks)
	for _, x := range chunks {
		k := s.heads[x]
		prev := int32(-1)
		p := uint64(0)
		for k >= 0 {
			next := s.slots[k].next
			if t := s.slots[k].tag; needed(p, t) {
				prev, p = k, t
			} else {
				if prev < 0 {
					s.heads[x] = next
				} else {
					s.slots[prev].next = next
				}
				s.release(k)
			}
			k = next
		}
		if s.heads[x] < 0 {
			delete(s.heads, x)
		}
	}
}

// rebuildFast sets the fast bit of every chunk that has a copy for the
// newest valid snapshot. s.mu held exclusively (or during Open).
func (s *Store) rebuildFast() {
	for i := range s.fast {
		s.fast[i].Store(0)
	}
	if s.newest < 0 {
		return
	}
	n := s.hdr.entries[s.newest].seq
	s.tab.RLock()
	defer s.tab.RUnlock()
	for x := range s.heads {
		if s.maxTag(x) >= n {
			s.setFast(x)
		}
	}
}

func (s *Store) testFast(x int64) bool { return s.fast[x>>6].Load()&(1<<(x&63)) != 0 }
func (s *Store) setFast(x int64)       { s.fast[x>>6].Or(1 << (x & 63)) }

// ---- changed-block areas ----

// fallback is the changed-block record of snapshot i rebuilt from the copies
// alone: every block of every chunk first overwritten after i and before the
// next valid snapshot. A superset of the truth, exact at chunk granularity.
func (s *Store) fallback(h *header, i int) []uint64 {
	words := make([]uint64, len(s.cur))
	seq := h.entries[i].seq
	end := uint64(1<<64 - 1)
	for j := range h.entries {
		if e := &h.entries[j]; e.valid() && e.seq > seq && e.seq < end {
			end = e.seq
		}
	}
	s.tab.RLock()
	defer s.tab.RUnlock()
	per := s.chunk >> s.bShift
	for x := range s.heads {
		k := s.lookup(x, seq)
		if k < 0 || s.slots[k].tag >= end {
			continue
		}
		lo := x * per
		hi := min(lo+per, s.lay.blocks)
		setBits(words, lo, hi)
	}
	return words
}

// setBits sets bits [lo, hi).
func setBits(w []uint64, lo, hi int64) {
	for lo < hi {
		i, b := lo>>6, uint(lo&63)
		n := min(64-int64(b), hi-lo)
		mask := ^uint64(0)
		if n < 64 {
			mask = (1<<uint(n) - 1) << b
		}
		w[i] |= mask
		lo += n
	}
}

// readArea reads table entry i's changed-block area.
func (s *Store) readArea(i int) ([]uint64, error) {
	buf := make([]byte, len(s.cur)*8)
	if err := durable.ReadFull(s.f, buf, s.lay.areaOff(i)); err != nil {
		return nil, fmt.Errorf("read changed blocks of snapshot %q: %w", s.hdr.entries[i].name, err)
	}
	words := make([]uint64, len(s.cur))
	for j := range words {
		words[j] = binary.LittleEndian.Uint64(buf[8*j:])
	}
	return words, nil
}

// writeArea writes table entry i's changed-block area, whole. Not synced.
func (s *Store) writeArea(i int, words []uint64) error {
	if err := durable.WriteFull(s.f, s.areaBytes(words), s.lay.areaOff(i)); err != nil {
		return s.fail(fmt.Errorf("write changed blocks: %w", err))
	}
	return nil
}

func (s *Store) areaBytes(words []uint64) []byte {
	buf := make([]byte, s.lay.areaBytes)
	for j, w := range words {
		binary.LittleEndian.PutUint64(buf[8*j:], w)
	}
	return buf
}

func (s *Store) curWords() []uint64 {
	w := make([]uint64, len(s.cur))
	for i := range s.cur {
		w[i] = s.cur[i].Load()
	}
	return w
}

// mergeEpochs folds the changed blocks of the valid snapshots drop (table
// indices, still valid in h) into the valid snapshot before each, so that
// "changed since P" stays whole when the snapshots after P go. Areas of
// sealed receivers are rewritten and synced. If the newest valid snapshot is
// dropped, the newest remaining one becomes the current epoch: its merged
// bits are returned (nil if none remains) and its sealed flag cleared in h.
// s.mu held exclusively.
func (s *Store) mergeEpochs(h *header, drop []int) (newCur []uint64, err error) {
	dropped := make(map[int]bool, len(drop))
	for _, d := range drop {
		dropped[d] = true
	}
	var remain []int
	for i := range h.entries {
		if h.entries[i].valid() && !dropped[i] {
			remain = append(remain, i)
		}
	}
	sort.Slice(remain, func(a, b int) bool { return h.entries[remain[a]].seq < h.entries[remain[b]].seq })
	target := func(d int) int {
		t := -1
		for _, r := range remain {
			if h.entries[r].seq < h.entries[d].seq {
				t = r
			}
		}
		return t
	}
	groups := make(map[int][]int)
	for _, d := range drop {
		if t := target(d); t >= 0 {
			groups[t] = append(groups[t], d)
		}
	}
	curDropped := dropped[s.newest]
	wrote := false
	for t, g := range groups {
		acc, err := s.readArea(t)
		if err != nil {
			return nil, err
		}
		for _, d := range g {
			var w []uint64
			if d == s.newest {
				w = s.curWords()
			} else if w, err = s.readArea(d); err != nil {
				return nil, err
			}
			for j := range acc {
				acc[j] |= w[j]
			}
		}
		if curDropped && t == remain[len(remain)-1] {
			newCur = acc
			h.entries[t].flags &^= entrySealed
			continue
		}
		if err := s.writeArea(t, acc); err != nil {
			return nil, err
		}
		wrote = true
	}
	if curDropped && len(remain) > 0 && newCur == nil {
		// Cannot happen: the newest remaining snapshot precedes the
		// dropped current one, so it receives its epoch.
		return nil, fmt.Errorf("internal error: no snapshot received the current epoch")
	}
	if wrote && !s.underFlag(h) {
		if err := s.f.Sync(); err != nil {
			return nil, s.fail(fmt.Errorf("sync changed blocks: %w", err))
		}
	}
	return newCur, nil
}

// applyHeader makes the in-memory state follow s.hdr after a durable change
// of the valid set: newest, the current epoch, the slot table, fast bits.
func (s *Store) applyHeader(curChanged bool, newCur []uint64) {
	s.newest = s.newestValid(&s.hdr)
	if curChanged {
		for i := range s.cur {
			var w uint64
			if newCur != nil {
				w = newCur[i]
			}
			s.cur[i].Store(w)
		}
	}
	s.gcLocked()
	s.rebuildFast()
}

// ---- the API ----

// Create takes snapshot name: from now on its image is the live device as
// it is at this instant. The caller guarantees the instant is a barrier: no
// write is between its Preserve and its completion, and the live device is
// flushed, so every acknowledged write is in the image and none after it.
// now is recorded as the creation time. It writes the previous newest
// snapshot's changed blocks and the table, with two fdatasyncs.
func (s *Store) Create(name string, now time.Time) error {
	return s.createAs(name, now, false, true)
}

// CreateLazy is Create for a lazy snapshot: while every valid snapshot is
// lazy, copies return before their fdatasync (a background flush syncs
// them once DefaultLazySync passes without one), which takes that wait off
// every first write into a chunk. A crash of the process loses nothing (the copies are
// in the page cache); a power loss or kernel crash while copies were not
// yet synced invalidates the snapshots at the next Open. Meant for
// snapshots whose loss costs only time, such as a backup's (the next
// backup is then a full one). Where no boot ID is known (not Linux) a
// lazy snapshot's copies are synced like any other's.
func (s *Store) CreateLazy(name string, now time.Time) error {
	return s.createAs(name, now, true, true)
}

// CreateLazyUnsynced is CreateLazy for a caller that has not made the live
// device's writes durable (no fdatasync at the snapshot's point, which
// would hold up every write behind it): the snapshot is in the page cache
// as the lazy copies are, and a power loss before the flusher has synced
// the live device (Options.SyncLive) and the store invalidates it. The
// header gets flagUnsynced with the snapshot, durably. It returns
// ErrLiveUnsynced, having changed nothing, where that cannot be (a durable
// snapshot is valid, whose loss it would risk; no boot ID; no SyncLive;
// format 1): sync the live device and call CreateLazy.
func (s *Store) CreateLazyUnsynced(name string, now time.Time) error {
	return s.createAs(name, now, true, false)
}

func (s *Store) createAs(name string, now time.Time, lazy, liveSynced bool) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	s.mu.Lock()
	err := s.create(name, now, lazy, liveSynced)
	infos := s.afterError(err)
	s.mu.Unlock()
	s.report(infos)
	return err
}

// afterError runs recovery if err left the store file failed. s.mu held
// exclusively.
func (s *Store) afterError(err error) []Info {
	if err == nil || s.closed || s.failure() == nil {
		return nil
	}
	return s.recoverLocked()
}

func (s *Store) create(name string, now time.Time, lazy, liveSynced bool) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("create snapshot %q: %w", name, err)
	}
	if err := s.failure(); err != nil {
		return fmt.Errorf("create snapshot %q: %w (reopen the store to use it again)", name, err)
	}
	free := -1
	for i := range s.hdr.entries {
		e := &s.hdr.entries[i]
		if e.state == stateFree {
			if free < 0 {
				free = i
			}
			continue
		}
		if e.name == name {
			return fmt.Errorf("create snapshot %q: %w; delete it first or choose another name", name, ErrExists)
		}
	}
	if free < 0 {
		return fmt.Errorf("create snapshot %q: %w: the store holds %d (valid or invalid), the most it can; delete one first", name, ErrTooMany, MaxSnapshots)
	}
	if !liveSynced {
		probe := s.hdr
		probe.entries[free] = entry{state: stateValid, flags: entryLazy}
		if s.syncLive == nil || !s.lazyMode(&probe) {
			return fmt.Errorf("create snapshot %q: %w", name, ErrLiveUnsynced)
		}
	}
	// Reserve the new snapshot's area, so sealing it later cannot fail for
	// lack of space. Nothing has changed yet if this fails.
	if err := reserve(s.f, s.lay.areaOff(free), s.lay.areaBytes, s.log); err != nil {
		return fmt.Errorf("create snapshot %q: reserve %d bytes for its changed-block record: %w", name, s.lay.areaBytes, err)
	}
	h := s.hdr
	// A lazy snapshot after lazy ones whose copies may be unsynced keeps
	// them so (the flag stays): its area and header are written without a
	// sync (writeHeaderUnsynced says why). One taken with the live device
	// unsynced sets the flag with its entry.
	keep := lazy && s.lazy && s.hdr.unsynced()
	unsynced := keep || !liveSynced
	if s.newest >= 0 {
		// Seal the epoch that ends here: its area must be durable before
		// the table says it is complete.
		if unsynced {
			// Under flagUnsynced, made durable by the header below
			// if it is not already, a power loss invalidates every
			// snapshot and a kill leaves the area in the page cache:
			// it need not be synced. Syncing it would cost a journal
			// commit (its range was reserved unwritten), and with it
			// the writeback of the lazy copies: 0.44 s under the
			// bench's 4k QD32 load, every write held behind it.
			if err := s.writeArea(s.newest, s.curWords()); err != nil {
				return fmt.Errorf("create snapshot %q: %w", name, err)
			}
		} else {
			if err := s.writeArea(s.newest, s.curWords()); err != nil {
				return fmt.Errorf("create snapshot %q: %w", name, err)
			}
			if err := s.f.Sync(); err != nil {
				return fmt.Errorf("create snapshot %q: %w", name, s.fail(fmt.Errorf("sync changed blocks: %w", err)))
			}
		}
		h.entries[s.newest].flags |= entrySealed
	}
	h.entries[free] = entry{state: stateValid, seq: h.nextSeq, created: now.UnixNano(), name: name}
	if lazy {
		h.entries[free].flags |= entryLazy
	}
	h.nextSeq++
	var err error
	switch {
	case keep:
		err = s.writeHeaderUnsynced(&h)
	case unsynced:
		// The first unsynced thing under this header: the flag becomes
		// durable with the entry.
		err = s.writeHeaderSettingUnsynced(&h)
	default:
		// Every copy so far becomes durable with this header
		// (writeHeader syncs first); a lazy snapshot's own copies set
		// the flag again.
		h.flags &^= flagUnsynced
		err = s.writeHeader(&h)
	}
	if err != nil {
		return fmt.Errorf("create snapshot %q: %w", name, err)
	}
	if !liveSynced {
		s.liveDirty = true
		s.lazyCopies.Add(1) // a flush that began before this must not clear the flag
	}
	s.newest = free
	for i := range s.cur {
		s.cur[i].Store(0)
	}
	for i := range s.fast {
		s.fast[i].Store(0)
	}
	s.log.Info("snapshot created", "snapshot", name, "seq", h.entries[free].seq)
	return nil
}

// Delete removes snapshot name, valid or not, and frees the copies only it
// used. Its changed blocks are folded into the snapshot before it.
func (s *Store) Delete(name string) error {
	s.mu.Lock()
	err := s.delete(name)
	infos := s.afterError(err)
	s.mu.Unlock()
	s.report(infos)
	return err
}

func (s *Store) delete(name string) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	i := s.find(name)
	if i < 0 {
		return fmt.Errorf("delete snapshot %q: %w", name, ErrNotFound)
	}
	h := s.hdr
	var newCur []uint64
	curChanged := i == s.newest
	if h.entries[i].valid() {
		var err error
		if newCur, err = s.mergeEpochs(&h, []int{i}); err != nil {
			return fmt.Errorf("delete snapshot %q: %w", name, err)
		}
	}
	h.entries[i] = entry{}
	var err error
	if s.underFlag(&h) {
		// Under the flag: a deleted snapshot may be back after a power
		// loss, invalid as every other; with a sync here, deleting the
		// last backup's snapshot under load held every copy (so, on a
		// Secondary, the Primary's writes) for 1.1 s.
		err = s.writeHeaderUnsynced(&h)
	} else {
		err = s.writeHeader(&h)
	}
	if err != nil {
		return fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	s.applyHeader(curChanged, newCur)
	s.log.Info("snapshot deleted", "snapshot", name)
	return nil
}

// List returns every snapshot, oldest first.
func (s *Store) List() []Info {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var idx []int
	for i := range s.hdr.entries {
		if s.hdr.entries[i].state != stateFree {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return s.hdr.entries[idx[a]].seq < s.hdr.entries[idx[b]].seq })
	bytes, excl := s.usage()
	out := make([]Info, 0, len(idx))
	for _, i := range idx {
		in := s.infoOf(i)
		in.Bytes, in.Exclusive = bytes[i], excl[i]
		out = append(out, in)
	}
	return out
}

// Get returns snapshot name's Info, or ErrNotFound: what an NBD handshake
// for RESOURCE@NAME asks.
func (s *Store) Get(name string) (Info, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.usable(); err != nil {
		return Info{}, err
	}
	i := s.find(name)
	if i < 0 {
		return Info{}, fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	in := s.infoOf(i)
	if in.Valid {
		bytes, excl := s.usage()
		in.Bytes, in.Exclusive = bytes[i], excl[i]
	}
	return in, nil
}

// usage returns, per table index, the bytes of copies each valid snapshot
// reads and those only it reads. s.mu held (shared is enough).
func (s *Store) usage() (bytes, excl [MaxSnapshots]int64) {
	type vs struct {
		seq uint64
		i   int
	}
	var valid []vs
	for i := range s.hdr.entries {
		if s.hdr.entries[i].valid() {
			valid = append(valid, vs{s.hdr.entries[i].seq, i})
		}
	}
	sort.Slice(valid, func(a, b int) bool { return valid[a].seq < valid[b].seq })
	s.tab.RLock()
	defer s.tab.RUnlock()
	for _, k := range s.heads {
		p := uint64(0)
		for ; k >= 0; k = s.slots[k].next {
			t := s.slots[k].tag
			lo := sort.Search(len(valid), func(j int) bool { return valid[j].seq > p })
			hi := sort.Search(len(valid), func(j int) bool { return valid[j].seq > t })
			for j := lo; j < hi; j++ {
				bytes[valid[j].i] += s.chunk
			}
			if hi-lo == 1 {
				excl[valid[lo].i] += s.chunk
			}
			p = t
		}
	}
	return bytes, excl
}

func (s *Store) infoOf(i int) Info {
	e := &s.hdr.entries[i]
	in := Info{Name: e.name, Seq: e.seq, Created: time.Unix(0, e.created), Valid: e.valid(), Lazy: e.lazy()}
	if !in.Valid {
		in.Reason = s.reasonText(e)
		in.Invalidated = time.Unix(0, e.invalidated)
	}
	return in
}

func (s *Store) reasonText(e *entry) string {
	switch e.reason {
	case reasonFull:
		return fmt.Sprintf("the snapshot store was full (capacity %d bytes) when the chunk at offset %d was first overwritten; raise the capacity or delete older snapshots",
			s.hdr.capacity, e.detail)
	case reasonIO:
		return "an I/O error on the snapshot store file, or a change of the device that could not be preserved (see the log)"
	case reasonDamaged:
		return "the snapshot store's metadata failed its checksums"
	case reasonPowerLoss:
		return "the system went down (power loss or kernel crash) while copies of this lazy snapshot were not yet synced"
	}
	return fmt.Sprintf("reason %d", e.reason)
}

// Stats returns the store's capacity and use.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := Stats{Capacity: s.hdr.capacity, ChunkSize: s.chunk, BlockSize: s.block}
	for i := range s.hdr.entries {
		if s.hdr.entries[i].state != stateFree {
			st.Snapshots++
		}
	}
	s.tab.RLock()
	st.Used = (int64(len(s.slots)) - int64(len(s.free))) * s.chunk
	s.tab.RUnlock()
	if err := s.failure(); err != nil {
		st.Failed = err.Error()
	}
	st.Format = int(s.version)
	s.c.mu.Lock()
	st.Copies, st.CommitRounds = s.c.copies, s.c.rounds
	s.c.mu.Unlock()
	st.LazyCopies = s.lazyCopies.Load()
	st.Unsynced = s.hdr.unsynced()
	if s.pre != nil {
		st.PrewriteLeft = s.pre.left.Load()
	}
	return st
}

// Close writes the newest snapshot's changed blocks, marks the store clean
// and closes the file. Calls in progress finish first; later ones get
// ErrClosed.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.pre != nil {
			s.pre.close()
		}
		close(s.stopFlush)
		<-s.flushDone
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.c.mu.Lock()
	copies, rounds := s.c.copies, s.c.rounds
	s.c.mu.Unlock()
	if copies > 0 {
		s.log.Info("snapshot store closing", "format", s.version, "copies", copies, "commit_rounds", rounds)
	}
	var err error
	if s.failure() == nil {
		if s.newest >= 0 {
			err = s.writeArea(s.newest, s.curWords())
			if err == nil {
				if err = s.f.Sync(); err != nil {
					err = s.fail(fmt.Errorf("sync changed blocks: %w", err))
				}
			}
		}
		if err == nil {
			h := s.hdr
			h.flags |= flagClean
			h.flags &^= flagUnsynced // writeHeader syncs the lazy copies first
			err = s.writeHeader(&h)
		}
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("close snapshot store %s: %w", s.path, err)
	}
	return nil
}

// usable reports ErrClosed. s.mu held.
func (s *Store) usable() error {
	if s.closed {
		return ErrClosed
	}
	return nil
}

// report logs invalidations and tells the caller. No lock held.
func (s *Store) report(infos []Info) {
	for _, in := range infos {
		s.log.Warn("snapshot invalidated", "snapshot", in.Name, "reason", in.Reason)
		if s.onInv != nil {
			s.onInv(in)
		}
	}
}
