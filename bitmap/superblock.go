package bitmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Meta file constants. These are part of the on-disk format and must not be
// changed; a change needs a new formatVersion.
const (
	formatVersion = 1

	sbMagic      = "REPDMETA"
	alMagic      = "REPDALTX"
	sbSlotBytes  = 4096 // one superblock slot
	sbSlots      = 2    // slots at 0 and 4096, written alternately
	headerBytes  = sbSlots * sbSlotBytes
	alRing       = 4  // AL transaction records in the ring
	alHeader     = 32 // AL record bytes before the extent list
	maxResource  = 64 // resource name bytes
	maxPeerSlots = 32 // peer slots the superblock has room for

	// Superblock field offsets.
	sbOffVersion   = 8
	sbOffFlags     = 12
	sbOffSeq       = 16
	sbOffInstance  = 24
	sbOffSize      = 32
	sbOffGran      = 40
	sbOffALExtSize = 48
	sbOffALExtents = 56
	sbOffNodeID    = 60
	sbOffDisk      = 61
	sbOffMaxPeers  = 62
	sbOffNameLen   = 63
	sbOffName      = 64
	sbOffCurrent   = 128
	sbOffHistory   = 136
	sbOffPeers     = 160 // maxPeerSlots × {flags u8, node id u8}
	sbOffBitmapGI  = 256 // maxPeerSlots × u64
	sbOffBootID    = 512 // 16 bytes
	sbOffChecksum  = sbSlotBytes - 8

	peerInUse = 1 << 0 // peer slot table entry flag
)

// Limits of the activity log.
const (
	maxALExtents     = 65534
	minALExtentSize  = minGranularity
	maxALExtentSize  = 1 << 30
	defaultALExtents = 1237
	defaultALExtent  = 4 << 20
	DefaultGranule   = 4096
	maxSize          = 1 << 60 // device bytes
)

// Sentinel errors of Open and Create, for errors.Is.
var (
	// errNotMeta: the file holds no repd superblock at all.
	errNotMeta = errors.New("not a repd meta file")
	// errMismatch: the meta file belongs to another resource, size,
	// granularity, node, layout or format version. See MismatchError.
	errMismatch = errors.New("meta file does not match")
	// errCorrupt: the file has repd superblocks but none is valid, or it is
	// too short for its own layout.
	errCorrupt = errors.New("meta file is corrupt")
	// ErrExists: Create found a meta file or other data it would destroy.
	ErrExists = errors.New("meta file already exists")
)

// mismatchError says which field of a meta file differs from what was
// expected. It matches ErrMismatch with errors.Is.
type mismatchError struct {
	Path  string
	Field string // "resource", "size", "granularity", "node id", "format version", ...
	Have  string // what the file says
	Want  string // what the caller expected
}

func (e *mismatchError) Error() string {
	return fmt.Sprintf("meta file %s is for %s %s, not %s; run repctl create-md to re-initialize (destroys the out-of-sync record)",
		e.Path, e.Field, e.Have, e.Want)
}

func (e *mismatchError) Unwrap() error { return errMismatch }

// DiskState is the state of a node's local data, in DRBD's words. The numeric
// values are part of the on-disk format.
type DiskState uint8

const (
	DiskDiskless     DiskState = 0
	DiskInconsistent DiskState = 1
	DiskOutdated     DiskState = 2
	DiskUpToDate     DiskState = 3
	DiskFailed       DiskState = 4
)

var diskNames = [...]string{"Diskless", "Inconsistent", "Outdated", "UpToDate", "Failed"}

func (d DiskState) String() string {
	if int(d) < len(diskNames) {
		return diskNames[d]
	}
	return fmt.Sprintf("DiskState(%d)", uint8(d))
}

func (d DiskState) valid() bool { return int(d) < len(diskNames) }

// parseDiskState parses DRBD's word for a disk state ("UpToDate", case
// insensitive).
func parseDiskState(s string) (DiskState, error) {
	for i, n := range diskNames {
		if strings.EqualFold(s, n) {
			return DiskState(i), nil
		}
	}
	return 0, fmt.Errorf("unknown disk state %q (want one of %s)", s, strings.Join(diskNames[:], ", "))
}

// MarshalText gives the DRBD word, for JSON status.
func (d DiskState) MarshalText() ([]byte, error) {
	if !d.valid() {
		return nil, fmt.Errorf("invalid disk state %d", uint8(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText parses the DRBD word.
func (d *DiskState) UnmarshalText(p []byte) error {
	v, err := parseDiskState(string(p))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Superblock flags. The bit values are part of the on-disk format. The meta
// file stores them; their meaning is kept by the replication engine.
const (
	// FlagPrimary is the crash flag: set on promote, cleared on clean demote
	// or shutdown. Found set on open, the node crashed as primary and the
	// activity log must be applied (MarkHotOutOfSync).
	FlagPrimary uint32 = 1 << 0
	// FlagResyncTarget: a resync toward this node was in progress; its data
	// is not consistent until it completes.
	FlagResyncTarget uint32 = 1 << 1
	// FlagCleanShutdown: the daemon closed the resource cleanly.
	FlagCleanShutdown uint32 = 1 << 2
	// flagFullSync: a full sync toward every peer is needed (e.g. after
	// invalidate-remote) regardless of the bitmaps.
	flagFullSync uint32 = 1 << 3
	// flagPeerOutdated: a peer was marked Outdated while disconnected, so this
	// node may be promoted without it.
	flagPeerOutdated uint32 = 1 << 4
)

// Identity is what a meta file belongs to and its layout. It is fixed at
// Create; Open checks it.
type Identity struct {
	Resource     string // at most 64 bytes
	Size         int64  // device size in bytes
	Granularity  int64  // bitmap bytes per bit; 0 means 4096 at Create
	NodeID       uint8
	MaxPeers     int   // peer slots (bitmaps), 1..32; 0 means 1 at Create
	ALExtentSize int64 // bytes per activity-log extent; 0 means 4 MiB at Create
	ALExtents    int   // hot extents at most, 1..65534; 0 means 1237 at Create
}

func (id Identity) withDefaults() Identity {
	if id.Granularity == 0 {
		id.Granularity = DefaultGranule
	}
	if id.MaxPeers == 0 {
		id.MaxPeers = 1
	}
	if id.ALExtentSize == 0 {
		id.ALExtentSize = defaultALExtent
	}
	if id.ALExtents == 0 {
		id.ALExtents = defaultALExtents
	}
	return id
}

func pow2(x int64) bool { return x > 0 && x&(x-1) == 0 }

// validate checks the identity's fields are in range.
func (id Identity) validate() error {
	switch {
	case id.Resource == "" || len(id.Resource) > maxResource || strings.IndexByte(id.Resource, 0) >= 0:
		return fmt.Errorf("resource name %q must be 1 to %d bytes", id.Resource, maxResource)
	case id.Size <= 0 || id.Size > maxSize:
		return fmt.Errorf("device size %d must be positive and at most 2^60", id.Size)
	case !pow2(id.Granularity) || id.Granularity < minGranularity || id.Granularity > maxGranularity:
		return fmt.Errorf("bitmap granularity %d is not a power of two between %d and %d", id.Granularity, minGranularity, maxGranularity)
	case id.MaxPeers < 1 || id.MaxPeers > maxPeerSlots:
		return fmt.Errorf("max peers %d must be between 1 and %d", id.MaxPeers, maxPeerSlots)
	case !pow2(id.ALExtentSize) || id.ALExtentSize < id.Granularity || id.ALExtentSize > maxALExtentSize:
		return fmt.Errorf("AL extent size %d is not a power of two between the granularity %d and %d", id.ALExtentSize, id.Granularity, maxALExtentSize)
	case id.ALExtents < 1 || id.ALExtents > maxALExtents:
		return fmt.Errorf("AL extents %d must be between 1 and %d", id.ALExtents, maxALExtents)
	case (id.Size-1)/id.ALExtentSize >= 1<<32-1:
		return fmt.Errorf("device size %d needs more than 2^32 AL extents of %d bytes", id.Size, id.ALExtentSize)
	}
	return nil
}

// GI holds the generation identifiers. Current == 0 means the node has no
// data generation yet (fresh meta data).
type GI struct {
	Current uint64
	Bitmap  []uint64 // bitmap UUID per peer slot, len MaxPeers
	History [2]uint64
}

// Peer is an entry of the peer slot table: the peer node that owns a bitmap
// slot.
type Peer struct {
	NodeID uint8
	InUse  bool
}

// Superblock is the durable per-node state of a resource.
type Superblock struct {
	Identity
	GI    GI
	Disk  DiskState
	Flags uint32
	Peers []Peer // peer slot table, len MaxPeers
	Seq   uint64 // write sequence; set by the meta file
	// BootID is the system's boot ID when the daemon last opened the
	// resource (zero: unknown, or a meta file from before the field):
	// found unchanged after a run that did not close cleanly, only the
	// process crashed, and what it wrote is still in the page cache.
	BootID [16]byte
}

func (sb *Superblock) clone() Superblock {
	c := *sb
	c.GI.Bitmap = append([]uint64(nil), sb.GI.Bitmap...)
	c.Peers = append([]Peer(nil), sb.Peers...)
	return c
}

// SlotOf returns the peer slot of node, or -1 if it has none.
func (sb *Superblock) SlotOf(node uint8) int {
	for i, p := range sb.Peers {
		if p.InUse && p.NodeID == node {
			return i
		}
	}
	return -1
}

// AssignSlot returns node's peer slot, taking a free one if it has none.
// Use it inside UpdateSuperblock so the assignment is persisted.
func (sb *Superblock) AssignSlot(node uint8) (int, error) {
	if s := sb.SlotOf(node); s >= 0 {
		return s, nil
	}
	if node == sb.NodeID {
		return -1, fmt.Errorf("node %d is this node, not a peer", node)
	}
	for i := range sb.Peers {
		if !sb.Peers[i].InUse {
			sb.Peers[i] = Peer{NodeID: node, InUse: true}
			return i, nil
		}
	}
	return -1, fmt.Errorf("no free peer slot for node %d (max peers %d)", node, len(sb.Peers))
}

// encode writes sb into a superblock slot.
func (sb *Superblock) encode(p []byte, instance uint64) {
	clear(p[:sbSlotBytes])
	le := binary.LittleEndian
	copy(p, sbMagic)
	le.PutUint32(p[sbOffVersion:], formatVersion)
	le.PutUint32(p[sbOffFlags:], sb.Flags)
	le.PutUint64(p[sbOffSeq:], sb.Seq)
	le.PutUint64(p[sbOffInstance:], instance)
	le.PutUint64(p[sbOffSize:], uint64(sb.Size))
	le.PutUint64(p[sbOffGran:], uint64(sb.Granularity))
	le.PutUint64(p[sbOffALExtSize:], uint64(sb.ALExtentSize))
	le.PutUint32(p[sbOffALExtents:], uint32(sb.ALExtents))
	p[sbOffNodeID] = sb.NodeID
	p[sbOffDisk] = uint8(sb.Disk)
	p[sbOffMaxPeers] = uint8(sb.MaxPeers)
	p[sbOffNameLen] = uint8(len(sb.Resource))
	copy(p[sbOffName:sbOffName+maxResource], sb.Resource)
	le.PutUint64(p[sbOffCurrent:], sb.GI.Current)
	le.PutUint64(p[sbOffHistory:], sb.GI.History[0])
	le.PutUint64(p[sbOffHistory+8:], sb.GI.History[1])
	for i, pe := range sb.Peers {
		if pe.InUse {
			p[sbOffPeers+2*i] = peerInUse
		}
		p[sbOffPeers+2*i+1] = pe.NodeID
	}
	for i, u := range sb.GI.Bitmap {
		le.PutUint64(p[sbOffBitmapGI+8*i:], u)
	}
	copy(p[sbOffBootID:sbOffBootID+len(sb.BootID)], sb.BootID[:])
	le.PutUint64(p[sbOffChecksum:], xxhash.Sum64(p[:sbOffChecksum]))
}

// slotStatus is what decoding one superblock slot found.
type slotStatus int

const (
	slotEmpty      slotStatus = iota // no magic
	slotBad                          // magic, but checksum or fields bad
	slotNewVersion                   // magic, another format version, checksum good
	slotBadVersion                   // magic, another format version, checksum bad
	slotValid
)

// decodeSuperblock decodes one slot.
func decodeSuperblock(p []byte) (sb Superblock, instance uint64, version uint32, st slotStatus) {
	if len(p) < sbSlotBytes || !bytes.Equal(p[:len(sbMagic)], []byte(sbMagic)) {
		return sb, 0, 0, slotEmpty
	}
	le := binary.LittleEndian
	version = le.Uint32(p[sbOffVersion:])
	sumOK := le.Uint64(p[sbOffChecksum:]) == xxhash.Sum64(p[:sbOffChecksum])
	if version != formatVersion {
		if sumOK {
			return sb, 0, version, slotNewVersion
		}
		return sb, 0, version, slotBadVersion
	}
	if !sumOK {
		return sb, 0, version, slotBad
	}
	nameLen := int(p[sbOffNameLen])
	maxPeers := int(p[sbOffMaxPeers])
	if nameLen > maxResource || maxPeers > maxPeerSlots {
		return sb, 0, version, slotBad
	}
	sb.Flags = le.Uint32(p[sbOffFlags:])
	sb.Seq = le.Uint64(p[sbOffSeq:])
	instance = le.Uint64(p[sbOffInstance:])
	sb.Size = int64(le.Uint64(p[sbOffSize:]))
	sb.Granularity = int64(le.Uint64(p[sbOffGran:]))
	sb.ALExtentSize = int64(le.Uint64(p[sbOffALExtSize:]))
	sb.ALExtents = int(le.Uint32(p[sbOffALExtents:]))
	sb.NodeID = p[sbOffNodeID]
	sb.Disk = DiskState(p[sbOffDisk])
	sb.MaxPeers = maxPeers
	sb.Resource = string(p[sbOffName : sbOffName+nameLen])
	sb.GI.Current = le.Uint64(p[sbOffCurrent:])
	sb.GI.History[0] = le.Uint64(p[sbOffHistory:])
	sb.GI.History[1] = le.Uint64(p[sbOffHistory+8:])
	sb.Peers = make([]Peer, maxPeers)
	sb.GI.Bitmap = make([]uint64, maxPeers)
	for i := range maxPeers {
		sb.Peers[i] = Peer{InUse: p[sbOffPeers+2*i]&peerInUse != 0, NodeID: p[sbOffPeers+2*i+1]}
		sb.GI.Bitmap[i] = le.Uint64(p[sbOffBitmapGI+8*i:])
	}
	copy(sb.BootID[:], p[sbOffBootID:])
	if sb.Identity.validate() != nil || !sb.Disk.valid() {
		return Superblock{}, 0, version, slotBad
	}
	return sb, instance, version, slotValid
}

// pickSuperblock decodes both slots of a header and returns the valid one
// with the higher sequence number and its slot index.
func pickSuperblock(path string, hdr []byte) (Superblock, uint64, int, error) {
	var (
		best             = -1
		bestSB           Superblock
		bestInst         uint64
		sawMagic         bool
		newVer, guessVer uint32
	)
	for i := 0; i < sbSlots; i++ {
		sb, inst, ver, st := decodeSuperblock(hdr[i*sbSlotBytes : (i+1)*sbSlotBytes])
		switch st {
		case slotValid:
			if best < 0 || sb.Seq > bestSB.Seq {
				best, bestSB, bestInst = i, sb, inst
			}
		case slotNewVersion:
			newVer = ver
		case slotBadVersion:
			guessVer = ver
		}
		sawMagic = sawMagic || st != slotEmpty
	}
	// A valid superblock of another format version wins over one of ours:
	// the file was converted, and ours is stale.
	if newVer == 0 && best < 0 {
		newVer = guessVer
	}
	switch {
	case newVer != 0:
		return Superblock{}, 0, 0, &mismatchError{Path: path, Field: "format version",
			Have: fmt.Sprint(newVer), Want: fmt.Sprint(formatVersion)}
	case best >= 0:
		return bestSB, bestInst, best, nil
	case sawMagic:
		return Superblock{}, 0, 0, fmt.Errorf("meta file %s: %w: both superblock slots fail their checksum", path, errCorrupt)
	}
	return Superblock{}, 0, 0, fmt.Errorf("meta file %s: %w (no superblock found)", path, errNotMeta)
}

// checkIdentity compares the file's identity with the caller's. Zero
// Granularity, MaxPeers, ALExtentSize and ALExtents in want accept the file's.
func checkIdentity(path string, have, want Identity) error {
	mm := func(field, h, w string) error {
		return &mismatchError{Path: path, Field: field, Have: h, Want: w}
	}
	switch {
	case have.Resource != want.Resource:
		return mm("resource", fmt.Sprintf("%q", have.Resource), fmt.Sprintf("%q", want.Resource))
	case have.Size != want.Size:
		return mm("size", fmt.Sprintf("%d bytes", have.Size), fmt.Sprintf("%d", want.Size))
	case want.Granularity != 0 && have.Granularity != want.Granularity:
		return mm("granularity", fmt.Sprintf("%d bytes", have.Granularity), fmt.Sprintf("%d", want.Granularity))
	case have.NodeID != want.NodeID:
		return mm("node id", fmt.Sprint(have.NodeID), fmt.Sprint(want.NodeID))
	case want.MaxPeers != 0 && have.MaxPeers != want.MaxPeers:
		return mm("max peers", fmt.Sprint(have.MaxPeers), fmt.Sprint(want.MaxPeers))
	case want.ALExtentSize != 0 && have.ALExtentSize != want.ALExtentSize:
		return mm("AL extent size", fmt.Sprintf("%d bytes", have.ALExtentSize), fmt.Sprint(want.ALExtentSize))
	case want.ALExtents != 0 && have.ALExtents != want.ALExtents:
		return mm("AL extents", fmt.Sprint(have.ALExtents), fmt.Sprint(want.ALExtents))
	}
	return nil
}

// layout is where things are in a meta file of a given identity.
type layout struct {
	alRecBytes int64 // bytes per AL record
	alOff      int64
	bmBytes    int64 // bytes per peer bitmap
	bmOff      int64
	total      int64
}

func roundPage(n int64) int64 { return (n + pageBytes - 1) &^ (pageBytes - 1) }

func layoutOf(id Identity) layout {
	var l layout
	l.alRecBytes = roundPage(alHeader + 4*int64(id.ALExtents) + 8)
	l.alOff = headerBytes
	blocks := (id.Size + id.Granularity - 1) >> uint(bits.TrailingZeros64(uint64(id.Granularity)))
	l.bmBytes = max(roundPage(8*((blocks+63)/64)), pageBytes)
	l.bmOff = l.alOff + alRing*l.alRecBytes
	l.total = l.bmOff + int64(id.MaxPeers)*l.bmBytes
	return l
}
