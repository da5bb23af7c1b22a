package snapstore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// Store file constants. They are part of the on-disk format and must not be
// changed; a change needs a new FormatVersion.
const (
	FormatVersion = 2

	// formatV1 is the first format: a copy's descriptor is written only
	// after its data is durable (two fdatasyncs per copy). Stores in it
	// are still read and written in it; a new store is FormatVersion.
	formatV1 = 1

	// MaxSnapshots is how many snapshots (valid or invalid) a store holds.
	MaxSnapshots = 64

	hdrMagic     = "REPDSNAP"
	hdrSlotBytes = 16384 // one header slot
	hdrSlots     = 2     // slots at 0 and 16384, written alternately
	headerBytes  = hdrSlots * hdrSlotBytes
	pageBytes    = 4096
	entryBytes   = 128 // one snapshot table entry
	descBytes    = 32  // one slot descriptor
	descPerPage  = pageBytes / descBytes
	maxName      = 64

	// Header field offsets.
	hOffVersion  = 8
	hOffFlags    = 12
	hOffSeq      = 16
	hOffInstance = 24
	hOffDevSize  = 32
	hOffChunk    = 40
	hOffBlock    = 48
	hOffCapacity = 56
	hOffMaxSnaps = 64
	hOffNextSeq  = 72
	hOffBootID   = 80
	hOffEntries  = 256
	hOffChecksum = hdrSlotBytes - 8

	// Entry field offsets, relative to the entry.
	eOffState       = 0
	eOffFlags       = 1
	eOffReason      = 2
	eOffNameLen     = 3
	eOffSeq         = 8
	eOffCreated     = 16
	eOffInvalidated = 24
	eOffDetail      = 32
	eOffName        = 40

	// Header flags.
	flagClean = 1 << 0 // closed cleanly: the current snapshot's area is complete
	// flagUnsynced: copies may have been made without an fdatasync
	// since this header (lazy snapshots only, see Lazy snapshots), while
	// the system with boot ID hOffBootID ran. A power loss or kernel crash
	// then may have kept a live write and lost its copy.
	flagUnsynced = 1 << 1
	knownFlags   = flagClean | flagUnsynced

	// Entry states.
	stateFree    = 0
	stateValid   = 1
	stateInvalid = 2

	// Entry flags.
	entrySealed = 1 << 0 // its changed-block area on disk is complete
	entryLazy   = 1 << 1 // lazy: its copies need no fdatasync of their own
)

// Why a snapshot was invalidated. The values are part of the on-disk format.
const (
	reasonFull    = 1 // the store was full when a chunk needed preserving
	reasonIO      = 2 // an I/O error on the store file
	reasonDamaged = 3 // the store's metadata failed its checksums
	// reasonPowerLoss: the system went down (power loss, kernel crash)
	// while lazy copies were not yet synced.
	reasonPowerLoss = 4
)

// Limits of the geometry.
const (
	MinBlockSize     = 512
	MaxBlockSize     = 1 << 20
	MinChunkSize     = 4096
	MaxChunkSize     = 4 << 20
	DefaultBlockSize = 4096
	DefaultChunkSize = 64 << 10
	MaxDeviceSize    = 1 << 50 // 1 PiB: the current epoch's bitmap lives in memory
	maxSlots         = 1<<31 - 1
)

// entry is one snapshot table entry.
type entry struct {
	state       uint8
	flags       uint8
	reason      uint8
	seq         uint64 // creation order, from 1; never reused
	created     int64  // unix nanoseconds
	invalidated int64  // unix nanoseconds, when state is invalid
	detail      uint64 // reasonFull: the byte offset of the chunk that needed a copy
	name        string
}

func (e *entry) valid() bool  { return e.state == stateValid }
func (e *entry) sealed() bool { return e.flags&entrySealed != 0 }
func (e *entry) lazy() bool   { return e.flags&entryLazy != 0 }

// header is the decoded content of a header slot.
type header struct {
	version  uint32 // formatV1 or FormatVersion
	flags    uint32
	seq      uint64 // write sequence of the header itself
	instance uint64
	devSize  int64
	chunk    int64
	block    int64
	capacity int64 // bytes of chunk slots: slots = capacity / chunk
	nextSeq  uint64
	bootID   [16]byte // with flagUnsynced: the system that ran the copies
	entries  [MaxSnapshots]entry
}

// unsynced reports flag bit 1: lazy copies, or the live device at a lazy
// snapshot, may not be durable (see Lazy snapshots).
func (h *header) unsynced() bool { return h.flags&flagUnsynced != 0 }

func (h *header) encode(p []byte) {
	clear(p[:hdrSlotBytes])
	le := binary.LittleEndian
	copy(p, hdrMagic)
	le.PutUint32(p[hOffVersion:], h.version)
	le.PutUint32(p[hOffFlags:], h.flags)
	le.PutUint64(p[hOffSeq:], h.seq)
	le.PutUint64(p[hOffInstance:], h.instance)
	le.PutUint64(p[hOffDevSize:], uint64(h.devSize))
	le.PutUint64(p[hOffChunk:], uint64(h.chunk))
	le.PutUint64(p[hOffBlock:], uint64(h.block))
	le.PutUint64(p[hOffCapacity:], uint64(h.capacity))
	le.PutUint32(p[hOffMaxSnaps:], MaxSnapshots)
	le.PutUint64(p[hOffNextSeq:], h.nextSeq)
	if h.flags&flagUnsynced != 0 {
		copy(p[hOffBootID:], h.bootID[:])
	}
	for i := range h.entries {
		e := &h.entries[i]
		if e.state == stateFree {
			continue
		}
		q := p[hOffEntries+i*entryBytes:]
		q[eOffState] = e.state
		q[eOffFlags] = e.flags
		q[eOffReason] = e.reason
		q[eOffNameLen] = uint8(len(e.name))
		le.PutUint64(q[eOffSeq:], e.seq)
		le.PutUint64(q[eOffCreated:], uint64(e.created))
		le.PutUint64(q[eOffInvalidated:], uint64(e.invalidated))
		le.PutUint64(q[eOffDetail:], e.detail)
		copy(q[eOffName:eOffName+maxName], e.name)
	}
	le.PutUint64(p[hOffChecksum:], xxhash.Sum64(p[:hOffChecksum]))
}

// slotStatus is what decoding one header slot found.
type slotStatus int

const (
	slotEmpty      slotStatus = iota // no magic
	slotBad                          // magic, but checksum or fields bad
	slotNewVersion                   // magic, another format version
	slotValid
)

// decodeHeader decodes one header slot and checks every field.
func decodeHeader(p []byte) (h header, version uint32, st slotStatus) {
	if len(p) < hdrSlotBytes || !bytes.Equal(p[:len(hdrMagic)], []byte(hdrMagic)) {
		return h, 0, slotEmpty
	}
	le := binary.LittleEndian
	if le.Uint64(p[hOffChecksum:]) != xxhash.Sum64(p[:hOffChecksum]) {
		return h, 0, slotBad
	}
	version = le.Uint32(p[hOffVersion:])
	if version != formatV1 && version != FormatVersion {
		return h, version, slotNewVersion
	}
	h.version = version
	h.flags = le.Uint32(p[hOffFlags:])
	h.seq = le.Uint64(p[hOffSeq:])
	h.instance = le.Uint64(p[hOffInstance:])
	h.devSize = int64(le.Uint64(p[hOffDevSize:]))
	h.chunk = int64(le.Uint64(p[hOffChunk:]))
	h.block = int64(le.Uint64(p[hOffBlock:]))
	h.capacity = int64(le.Uint64(p[hOffCapacity:]))
	h.nextSeq = le.Uint64(p[hOffNextSeq:])
	copy(h.bootID[:], p[hOffBootID:])
	if le.Uint32(p[hOffMaxSnaps:]) != MaxSnapshots || h.flags&^knownFlags != 0 ||
		h.flags&flagUnsynced == 0 && h.bootID != [16]byte{} {
		return header{}, version, slotBad
	}
	if checkGeometry(h.devSize, h.block, h.chunk, h.capacity) != nil || h.nextSeq == 0 || h.nextSeq >= 1<<62 {
		return header{}, version, slotBad
	}
	names := make(map[string]bool)
	for i := range h.entries {
		q := p[hOffEntries+i*entryBytes : hOffEntries+(i+1)*entryBytes]
		e := &h.entries[i]
		e.state = q[eOffState]
		if e.state == stateFree {
			if bytes.ContainsFunc(q, func(r rune) bool { return r != 0 }) {
				return header{}, version, slotBad
			}
			continue
		}
		e.flags = q[eOffFlags]
		e.reason = q[eOffReason]
		n := int(q[eOffNameLen])
		e.seq = le.Uint64(q[eOffSeq:])
		e.created = int64(le.Uint64(q[eOffCreated:]))
		e.invalidated = int64(le.Uint64(q[eOffInvalidated:]))
		e.detail = le.Uint64(q[eOffDetail:])
		if n > maxName {
			return header{}, version, slotBad
		}
		e.name = string(q[eOffName : eOffName+n])
		switch {
		case e.state != stateValid && e.state != stateInvalid,
			e.flags&^(entrySealed|entryLazy) != 0,
			e.state == stateInvalid && (e.reason < reasonFull || e.reason > reasonPowerLoss),
			e.state == stateValid && e.reason != 0,
			e.seq == 0 || e.seq >= h.nextSeq,
			ValidName(e.name) != nil,
			names[e.name]:
			return header{}, version, slotBad
		}
		names[e.name] = true
	}
	return h, version, slotValid
}

// pickHeader decodes both slots and returns the valid one with the higher
// sequence number and its slot index.
func pickHeader(path string, hdr []byte) (header, int, error) {
	best := -1
	var bestH header
	var sawMagic bool
	var newVer uint32
	for i := range hdrSlots {
		h, ver, st := decodeHeader(hdr[i*hdrSlotBytes : (i+1)*hdrSlotBytes])
		switch st {
		case slotValid:
			if best < 0 || h.seq > bestH.seq {
				best, bestH = i, h
			}
		case slotNewVersion:
			newVer = ver
		}
		sawMagic = sawMagic || st != slotEmpty
	}
	switch {
	case newVer != 0:
		return header{}, 0, &MismatchError{Path: path, Field: "format version",
			Have: fmt.Sprint(newVer), Want: fmt.Sprintf("%d or %d (this repd's)", formatV1, FormatVersion)}
	case best >= 0:
		return bestH, best, nil
	case sawMagic:
		return header{}, 0, fmt.Errorf("snapshot store %s: %w: both header slots fail their checksum", path, ErrCorrupt)
	}
	return header{}, 0, fmt.Errorf("snapshot store %s: %w (no header found)", path, ErrNotStore)
}

// desc is a slot descriptor: which chunk of the device a slot holds, and
// the sequence number of the newest snapshot when it was copied (its tag).
// In FormatVersion, sum is the hash of the slot's data (dataSum).
type desc struct {
	chunk int64
	tag   uint64
	sum   uint64
}

// encodeDesc writes a descriptor for a used slot in the given format.
func encodeDesc(p []byte, d desc, instance uint64, version uint32) {
	le := binary.LittleEndian
	le.PutUint64(p[0:], uint64(d.chunk))
	le.PutUint64(p[8:], d.tag)
	if version == formatV1 {
		le.PutUint64(p[16:], instance)
		le.PutUint64(p[24:], xxhash.Sum64(p[:24]))
		return
	}
	le.PutUint64(p[16:], d.sum)
	le.PutUint64(p[24:], descSum(p, instance))
}

// descSum is a FormatVersion descriptor's checksum: xxhash64 of the
// instance (8 bytes, little-endian) followed by the descriptor's bytes
// +0..+24, so that a descriptor of another store instance fails it.
func descSum(p []byte, instance uint64) uint64 {
	var b [8 + 24]byte
	binary.LittleEndian.PutUint64(b[:], instance)
	copy(b[8:], p[:24])
	return xxhash.Sum64(b[:])
}

// dataSum is the hash a FormatVersion descriptor holds of its slot's
// data: xxhash64 seeded with the store's instance, over the chunk's bytes
// (the last chunk of the device may be short: only its bytes). The seed
// keeps a writer of the live device, who does not know the instance, from
// choosing data that collides with a slot's stale content.
func dataSum(data []byte, instance uint64) uint64 {
	d := xxhash.NewWithSeed(instance)
	d.Write(data)
	return d.Sum64()
}

// descStatus is what decoding one descriptor found.
type descStatus int

const (
	descFree  descStatus = iota // all zero: never written
	descTorn                    // checksum fails: a write that never completed
	descWrong                   // checksum holds, fields do not: damage
	descInUse                   // a copy (needed or stale: the GC rule decides)
)

func decodeDesc(p []byte, version uint32, instance uint64, chunks int64, nextSeq uint64) (desc, descStatus) {
	le := binary.LittleEndian
	if [descBytes]byte(p[:descBytes]) == ([descBytes]byte{}) {
		return desc{}, descFree
	}
	d := desc{chunk: int64(le.Uint64(p[0:])), tag: le.Uint64(p[8:])}
	if version == formatV1 {
		if le.Uint64(p[24:]) != xxhash.Sum64(p[:24]) {
			return desc{}, descTorn
		}
		if le.Uint64(p[16:]) != instance {
			return desc{}, descWrong
		}
	} else {
		if le.Uint64(p[24:]) != descSum(p, instance) {
			return desc{}, descTorn
		}
		d.sum = le.Uint64(p[16:])
	}
	if d.chunk < 0 || d.chunk >= chunks || d.tag == 0 || d.tag >= nextSeq {
		return desc{}, descWrong
	}
	return d, descInUse
}

func pow2(x int64) bool { return x > 0 && x&(x-1) == 0 }

// checkGeometry checks sizes are in range. It names the option at fault.
func checkGeometry(devSize, block, chunk, capacity int64) error {
	switch {
	case devSize <= 0 || devSize > MaxDeviceSize:
		return fmt.Errorf("device size %d must be positive and at most %d", devSize, int64(MaxDeviceSize))
	case !pow2(block) || block < MinBlockSize || block > MaxBlockSize:
		return fmt.Errorf("block size %d is not a power of two between %d and %d", block, MinBlockSize, MaxBlockSize)
	case !pow2(chunk) || chunk < MinChunkSize || chunk > MaxChunkSize:
		return fmt.Errorf("chunk size %d is not a power of two between %d and %d", chunk, MinChunkSize, MaxChunkSize)
	case chunk < block:
		return fmt.Errorf("chunk size %d is smaller than the block size %d (a chunk holds whole blocks)", chunk, block)
	case capacity < chunk:
		return fmt.Errorf("capacity %d is less than one chunk (%d bytes)", capacity, chunk)
	case capacity/chunk > maxSlots:
		return fmt.Errorf("capacity %d needs more than %d chunks of %d bytes; use a larger chunk size", capacity, maxSlots, chunk)
	}
	return nil
}

// layout is where things are in a store file of a given geometry.
type layout struct {
	blocks     int64 // changed-block bits per snapshot
	areaBytes  int64 // bytes of one snapshot's changed-block area
	groupsOff  int64 // first slot group
	groupBytes int64 // a full group: one descriptor page and descPerPage chunks
	chunk      int64
	slots      int64
	total      int64 // file length
}

func roundPage(n int64) int64 { return (n + pageBytes - 1) &^ (pageBytes - 1) }

func layoutOf(devSize, block, chunk, capacity int64) layout {
	var l layout
	l.blocks = (devSize + block - 1) >> uint(bits.TrailingZeros64(uint64(block)))
	l.areaBytes = max(roundPage(8*((l.blocks+63)/64)), pageBytes)
	l.groupsOff = headerBytes + MaxSnapshots*l.areaBytes
	l.chunk = chunk
	l.groupBytes = pageBytes + descPerPage*chunk
	l.slots = capacity / chunk
	l.total = l.groupEnd(l.slots)
	return l
}

// groupEnd is the file length that holds slots [0, n).
func (l *layout) groupEnd(n int64) int64 {
	full, rem := n/descPerPage, n%descPerPage
	end := l.groupsOff + full*l.groupBytes
	if rem > 0 {
		end += pageBytes + rem*l.chunk
	}
	return end
}

// areaOff is where table entry i's changed-block area starts.
func (l *layout) areaOff(i int) int64 { return headerBytes + int64(i)*l.areaBytes }

// descOff is where slot k's descriptor is.
func (l *layout) descOff(k int32) int64 {
	return l.groupsOff + int64(k)/descPerPage*l.groupBytes + int64(k)%descPerPage*descBytes
}

// slotOff is where slot k's chunk data starts.
func (l *layout) slotOff(k int32) int64 {
	return l.groupsOff + int64(k)/descPerPage*l.groupBytes + pageBytes + int64(k)%descPerPage*l.chunk
}
