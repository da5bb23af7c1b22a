package bitmap

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"github.com/repd/repd/internal/durable"
)

// Meta is an open meta file: the superblock, the activity log and one bitmap
// per peer slot. It is safe for concurrent use.
//
// After any I/O error the on-disk state is still one the file passed through
// (old or new), but the caller should treat the backing disk as failed.
type Meta struct {
	path string
	f    File
	lay  layout

	sbMu     sync.Mutex // serializes superblock writes
	sb       Superblock // as last made durable
	sbSlot   int        // slot holding sb; the next write goes to the other
	instance uint64     // random per Create; AL records carry it
	sbBuf    []byte

	flushMu sync.Mutex // serializes bitmap page writes
	bms     []*Bitmap
	pageBuf []byte

	al activityLog
	// syncData makes the data device's completed writes durable; called
	// before an AL record that evicts extents (SyncDataBeforeEvict).
	syncData func() error

	closeMu sync.Mutex
	closed  bool
}

// Create initializes a fresh meta file at path: disk Inconsistent, no data
// generation (GI zero), empty activity log, all bitmaps clear. Zero
// Granularity, MaxPeers, ALExtentSize and ALExtents take defaults. It refuses
// (ErrExists) to overwrite a valid meta file or a file holding other data;
// see CreateForce.
func Create(path string, id Identity) (*Meta, error) { return create(path, id, false) }

// CreateForce is Create that overwrites whatever is at path.
func CreateForce(path string, id Identity) (*Meta, error) { return create(path, id, true) }

func create(path string, id Identity, force bool) (*Meta, error) {
	id = id.withDefaults()
	if err := id.validate(); err != nil {
		return nil, fmt.Errorf("create meta file %s: %w", path, err)
	}
	f, err := openOS(path, true)
	if err != nil {
		return nil, fmt.Errorf("create meta file: %w", err)
	}
	m, err := createOn(f, path, id, force)
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := durable.SyncDir(filepath.Dir(path)); err != nil {
		m.Close()
		return nil, fmt.Errorf("create meta file %s: sync directory: %w", path, err)
	}
	return m, nil
}

// createOn initializes f. The identity is valid and has its defaults.
func createOn(f File, path string, id Identity, force bool) (*Meta, error) {
	if !force {
		hdr := make([]byte, headerBytes)
		n, _ := f.ReadAt(hdr, 0)
		hdr = hdr[:n]
		if n >= headerBytes {
			if _, _, _, err := pickSuperblock(path, hdr); err == nil || errors.Is(err, errMismatch) {
				return nil, fmt.Errorf("meta file %s: %w; use the force option to overwrite it", path, ErrExists)
			}
		}
		if bytes.ContainsFunc(hdr, func(r rune) bool { return r != 0 }) {
			return nil, fmt.Errorf("meta file %s: %w: it holds data that is not a repd meta file; use the force option to overwrite it", path, ErrExists)
		}
	}
	lay := layoutOf(id)
	sb := Superblock{
		Identity: id,
		GI:       GI{Bitmap: make([]uint64, id.MaxPeers)},
		Disk:     DiskInconsistent,
		Peers:    make([]Peer, id.MaxPeers),
		Seq:      1,
	}
	instance := rand.Uint64() | 1
	if err := f.Truncate(0); err != nil {
		return nil, fmt.Errorf("create meta file %s: %w", path, err)
	}
	if err := f.Truncate(lay.total); err != nil {
		return nil, fmt.Errorf("create meta file %s: %w", path, err)
	}
	buf := make([]byte, sbSlotBytes)
	sb.encode(buf, instance)
	if err := durable.WriteFull(f, buf, 0); err != nil {
		return nil, fmt.Errorf("create meta file %s: write superblock: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("create meta file %s: sync: %w", path, err)
	}
	m := newMeta(f, path, sb, 0, instance)
	return m, nil
}

func newMeta(f File, path string, sb Superblock, slot int, instance uint64) *Meta {
	m := &Meta{
		path:     path,
		f:        f,
		lay:      layoutOf(sb.Identity),
		sb:       sb,
		sbSlot:   slot,
		instance: instance,
		sbBuf:    make([]byte, sbSlotBytes),
		bms:      make([]*Bitmap, sb.MaxPeers),
	}
	for i := range m.bms {
		m.bms[i], _ = newBitmap(sb.Size, sb.Granularity) // geometry validated
	}
	m.al.init(sb.Identity, m.lay)
	return m
}

// Open opens the meta file at path, which must belong to id: same resource,
// size and node id, and the same Granularity, MaxPeers, ALExtentSize and
// ALExtents where id gives them (non-zero), else a *MismatchError
// (errors.Is ErrMismatch) naming the field. A file with no
// superblock is ErrNotMeta; one whose superblocks are all damaged, or that is
// shorter than its layout, is ErrCorrupt. The bitmaps are loaded and the
// activity log holds what was hot when the file was last written.
func Open(path string, id Identity) (*Meta, error) {
	f, err := openOS(path, false)
	if err != nil {
		return nil, fmt.Errorf("open meta file: %w", err)
	}
	m, err := openOn(f, path, &id)
	if err != nil {
		f.Close()
		return nil, err
	}
	return m, nil
}

// openOrCreate opens the meta file at path, or creates it if it does not
// exist, is empty, or its header is all zeros (a Create that never
// completed).
func openOrCreate(path string, id Identity) (*Meta, bool, error) {
	return OpenOrCreateWrapped(path, id, nil)
}

// OpenOrCreateWrapped is OpenOrCreate with the file, once opened and
// locked, passed through wrap (when not nil) before anything is read or
// written: a decorator that injects faults, for tests.
func OpenOrCreateWrapped(path string, id Identity, wrap func(File) File) (*Meta, bool, error) {
	o, err := openOS(path, true)
	if err != nil {
		return nil, false, fmt.Errorf("open meta file: %w", err)
	}
	var f File = o
	if wrap != nil {
		f = wrap(o)
	}
	hdr := make([]byte, headerBytes)
	n, _ := f.ReadAt(hdr, 0)
	if !bytes.ContainsFunc(hdr[:n], func(r rune) bool { return r != 0 }) {
		id = id.withDefaults()
		if err := id.validate(); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("create meta file %s: %w", path, err)
		}
		m, err := createOn(f, path, id, false)
		if err == nil {
			err = durable.SyncDir(filepath.Dir(path))
		}
		if err != nil {
			f.Close()
			return nil, false, err
		}
		return m, true, nil
	}
	m, err := openOn(f, path, &id)
	if err != nil {
		f.Close()
		return nil, false, err
	}
	return m, false, nil
}

// ReadSuperblock returns the superblock of the meta file at path without
// checking its identity or loading anything else (for inspection tools). It
// takes no lock.
func ReadSuperblock(path string) (Superblock, error) {
	f, err := os.Open(path)
	if err != nil {
		return Superblock{}, err
	}
	defer f.Close()
	sb, _, _, err := readHeader(f, path)
	return sb, err
}

func readHeader(f interface {
	ReadAt([]byte, int64) (int, error)
}, path string) (Superblock, uint64, int, error) {
	hdr := make([]byte, headerBytes)
	n, err := f.ReadAt(hdr, 0)
	if n < headerBytes {
		if err == nil || isEOF(err) {
			return Superblock{}, 0, 0, fmt.Errorf("meta file %s: %w (only %d bytes)", path, errNotMeta, n)
		}
		return Superblock{}, 0, 0, fmt.Errorf("read meta file %s: %w", path, err)
	}
	return pickSuperblock(path, hdr)
}

// openOn reads and checks f. id nil skips the identity check.
func openOn(f File, path string, id *Identity) (*Meta, error) {
	sb, instance, slot, err := readHeader(f, path)
	if err != nil {
		return nil, err
	}
	if id != nil {
		if err := checkIdentity(path, sb.Identity, *id); err != nil {
			return nil, err
		}
	}
	lay := layoutOf(sb.Identity)
	// Check the length before allocating anything the superblock sizes.
	var last [1]byte
	if err := durable.ReadFull(f, last[:], lay.total-1); err != nil {
		if isEOF(err) {
			return nil, fmt.Errorf("meta file %s: %w: shorter than its layout (%d bytes)", path, errCorrupt, lay.total)
		}
		return nil, fmt.Errorf("read meta file %s: %w", path, err)
	}
	m := newMeta(f, path, sb, slot, instance)
	if err := m.al.load(f, instance); err != nil {
		return nil, fmt.Errorf("read meta file %s: activity log: %w", path, err)
	}
	if err := m.loadBitmaps(); err != nil {
		return nil, fmt.Errorf("read meta file %s: bitmaps: %w", path, err)
	}
	return m, nil
}

func isEOF(err error) bool {
	return err != nil && (errors.Is(err, errEOF) || errors.Is(err, errUnexpectedEOF))
}

func (m *Meta) loadBitmaps() error {
	const chunk = 256 * pageBytes
	buf := make([]byte, chunk)
	for slot, b := range m.bms {
		np := b.pages()
		base := m.lay.bmOff + int64(slot)*m.lay.bmBytes
		for p := int64(0); p < np; p += chunk / pageBytes {
			k := min(np-p, chunk/pageBytes)
			if err := durable.ReadFull(m.f, buf[:k*pageBytes], base+p*pageBytes); err != nil {
				return err
			}
			for i := int64(0); i < k; i++ {
				b.loadPage(p+i, buf[i*pageBytes:(i+1)*pageBytes])
			}
		}
	}
	return nil
}

// Path is the meta file's path.
func (m *Meta) Path() string { return m.path }

// Superblock returns a copy of the superblock as last made durable.
func (m *Meta) Superblock() Superblock {
	m.sbMu.Lock()
	defer m.sbMu.Unlock()
	return m.sb.clone()
}

// UpdateSuperblock applies fn to a copy of the superblock and writes it to the
// other slot with the next sequence number, then fdatasyncs. The change is
// durable when it returns nil; on error the superblock is unchanged in memory
// and on disk it is either the old or the new one. fn must not change the
// Identity, the lengths of GI.Bitmap and Peers, or Seq.
func (m *Meta) UpdateSuperblock(fn func(*Superblock)) error {
	m.sbMu.Lock()
	defer m.sbMu.Unlock()
	next := m.sb.clone()
	fn(&next)
	switch {
	case next.Identity != m.sb.Identity:
		return fmt.Errorf("meta file %s: the identity cannot be changed (create new meta data instead)", m.path)
	case len(next.GI.Bitmap) != next.MaxPeers || len(next.Peers) != next.MaxPeers:
		return fmt.Errorf("meta file %s: GI.Bitmap and Peers must have MaxPeers (%d) entries", m.path, next.MaxPeers)
	case !next.Disk.valid():
		return fmt.Errorf("meta file %s: invalid disk state %d", m.path, uint8(next.Disk))
	}
	next.Seq = m.sb.Seq + 1
	slot := 1 - m.sbSlot
	next.encode(m.sbBuf, m.instance)
	if err := durable.WriteFull(m.f, m.sbBuf, int64(slot)*sbSlotBytes); err != nil {
		return fmt.Errorf("meta file %s: write superblock: %w", m.path, err)
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("meta file %s: sync superblock: %w", m.path, err)
	}
	m.sb, m.sbSlot = next, slot
	return nil
}

// Bitmap returns the live bitmap of a peer slot (nil if out of range). Bits set
// in it reach disk with FlushBitmaps, Close, or when the activity-log extent
// covering them is evicted. Set the bits of a write before its Complete.
func (m *Meta) Bitmap(peerSlot int) *Bitmap {
	if peerSlot < 0 || peerSlot >= len(m.bms) {
		return nil
	}
	return m.bms[peerSlot]
}

// FlushBitmaps writes every changed bitmap page and fdatasyncs. Every bit set
// before the call is durable when it returns nil. Pages whose write fails stay
// marked changed for the next flush.
func (m *Meta) FlushBitmaps() error {
	return m.flushPages(nil)
}

// flushPages writes changed pages of every peer bitmap, all of them (pages ==
// nil) or those listed (sorted page indices), then syncs.
func (m *Meta) flushPages(pages []int64) error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	const maxRun = 256 // pages per write
	if m.pageBuf == nil {
		m.pageBuf = make([]byte, maxRun*pageBytes)
	}
	type taken struct {
		slot int
		page int64
	}
	var done []taken
	redirty := func() {
		for _, t := range done {
			m.bms[t.slot].redirtyPage(t.page)
		}
	}
	for slot, b := range m.bms {
		base := m.lay.bmOff + int64(slot)*m.lay.bmBytes
		var run []int64 // consecutive pages taken, not yet written
		write := func() error {
			if len(run) == 0 {
				return nil
			}
			n := int64(len(run))
			err := durable.WriteFull(m.f, m.pageBuf[:n*pageBytes], base+run[0]*pageBytes)
			for _, p := range run {
				done = append(done, taken{slot, p})
			}
			run = run[:0]
			return err
		}
		add := func(p int64) error {
			if len(run) > 0 && (run[len(run)-1]+1 != p || len(run) == maxRun) {
				if err := write(); err != nil {
					return err
				}
			}
			if b.takePage(p, m.pageBuf[int64(len(run))*pageBytes:int64(len(run)+1)*pageBytes], true) {
				run = append(run, p)
			}
			return nil
		}
		var err error
		if pages == nil {
			for p, ok := b.nextDirtyPage(0); ok && err == nil; p, ok = b.nextDirtyPage(p + 1) {
				err = add(p)
			}
		} else {
			for _, p := range pages {
				if err = add(p); err != nil {
					break
				}
			}
		}
		if err == nil {
			err = write()
		}
		if err != nil {
			for _, p := range run {
				done = append(done, taken{slot, p})
			}
			redirty()
			return fmt.Errorf("meta file %s: write bitmap: %w", m.path, err)
		}
	}
	if len(done) == 0 {
		return nil
	}
	if err := m.f.Sync(); err != nil {
		redirty()
		return fmt.Errorf("meta file %s: sync bitmap: %w", m.path, err)
	}
	return nil
}

// MarkHotOutOfSync marks the range of every extent in the persisted activity
// log out of sync in every peer bitmap and returns how many bytes those
// ranges cover. Call it after opening the meta file of a node that crashed as
// primary (FlagPrimary set): the hot extents may hold writes the peers never
// got. It then persists the bitmaps; if that fails the pages stay marked
// changed for the next FlushBitmaps, and the activity log, which still covers
// them, keeps the record safe meanwhile.
func (m *Meta) MarkHotOutOfSync() int64 {
	var total int64
	for _, e := range m.HotExtents() {
		off := e * m.al.extSize
		n := min(m.al.extSize, m.al.size-off)
		if n <= 0 {
			continue
		}
		total += n
		for _, b := range m.bms {
			b.Set(off, n)
		}
	}
	_ = m.FlushBitmaps()
	return total
}

// Close flushes the bitmaps and closes the file. Writes still active in the
// activity log stay hot on disk.
func (m *Meta) Close() error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	err := m.FlushBitmaps()
	if cerr := m.f.Close(); err == nil {
		err = cerr
	}
	return err
}
