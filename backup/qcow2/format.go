package qcow2

import (
	"encoding/binary"
	"fmt"
)

// On-disk constants (docs/interop/qcow2.txt).
const (
	magic             = "QFI\xfb"
	headerV3Len       = 104
	headerV2Len       = 72
	extEnd            = 0x00000000
	extBackingFormat  = 0xe2792aca
	extBitmaps        = 0x23852875
	maxBackingNameLen = 1023
	refcountOrder     = 4 // 16-bit refcounts, QEMU's default

	entryCopied     = uint64(1) << 63
	entryCompressed = uint64(1) << 62
	entryZero       = uint64(1)
	offsetMask      = uint64(0x00fffffffffffe00) // bits 9-55
	l1Reserved      = ^(offsetMask | entryCopied)
	l2Reserved      = ^(offsetMask | entryCopied | entryCompressed | entryZero)

	incompatDirty   = uint64(1) << 0
	incompatCorrupt = uint64(1) << 1
)

// Limits.
const (
	// DefaultClusterSize is QEMU's default cluster size.
	DefaultClusterSize = 64 << 10
	// MinWriteClusterSize is the smallest cluster the writer uses: cluster 0
	// must hold the header, its extensions and two backing names (Rebase).
	MinWriteClusterSize = 4 << 10
	// MaxClusterSize is QEMU's limit.
	MaxClusterSize = 2 << 20
	// maxL1Entries is QEMU's 32 MiB limit on the L1 table.
	maxL1Entries = 32 << 20 / 8
	// maxRefcountTableBytes is QEMU's 8 MiB limit on the refcount table.
	maxRefcountTableBytes = 8 << 20
	// MaxSize bounds the virtual size (2^61, below every limit above for
	// 2 MiB clusters).
	MaxSize = int64(1) << 61
)

// header is the fixed part of a qcow2 header.
type header struct {
	version          uint32
	backingOffset    uint64
	backingSize      uint32
	clusterBits      uint32
	size             uint64
	cryptMethod      uint32
	l1Size           uint32
	l1Offset         uint64
	refcountOffset   uint64
	refcountClusters uint32
	nbSnapshots      uint32
	snapshotsOffset  uint64
	incompatible     uint64
	compatible       uint64
	autoclear        uint64
	refcountOrder    uint32
	headerLength     uint32
}

func (h *header) encode(b []byte) {
	copy(b[0:], magic)
	be := binary.BigEndian
	be.PutUint32(b[4:], h.version)
	be.PutUint64(b[8:], h.backingOffset)
	be.PutUint32(b[16:], h.backingSize)
	be.PutUint32(b[20:], h.clusterBits)
	be.PutUint64(b[24:], h.size)
	be.PutUint32(b[32:], h.cryptMethod)
	be.PutUint32(b[36:], h.l1Size)
	be.PutUint64(b[40:], h.l1Offset)
	be.PutUint64(b[48:], h.refcountOffset)
	be.PutUint32(b[56:], h.refcountClusters)
	be.PutUint32(b[60:], h.nbSnapshots)
	be.PutUint64(b[64:], h.snapshotsOffset)
	be.PutUint64(b[72:], h.incompatible)
	be.PutUint64(b[80:], h.compatible)
	be.PutUint64(b[88:], h.autoclear)
	be.PutUint32(b[96:], h.refcountOrder)
	be.PutUint32(b[100:], h.headerLength)
}

// decodeHeader parses the fixed header from b (at least 104 bytes, or 72
// for version 2) and checks what the reader relies on.
func decodeHeader(b []byte) (*header, error) {
	if len(b) < headerV2Len || string(b[:4]) != magic {
		return nil, fmt.Errorf("not a qcow2 image (no QFI\\xfb magic)")
	}
	be := binary.BigEndian
	h := &header{
		version:          be.Uint32(b[4:]),
		backingOffset:    be.Uint64(b[8:]),
		backingSize:      be.Uint32(b[16:]),
		clusterBits:      be.Uint32(b[20:]),
		size:             be.Uint64(b[24:]),
		cryptMethod:      be.Uint32(b[32:]),
		l1Size:           be.Uint32(b[36:]),
		l1Offset:         be.Uint64(b[40:]),
		refcountOffset:   be.Uint64(b[48:]),
		refcountClusters: be.Uint32(b[56:]),
		nbSnapshots:      be.Uint32(b[60:]),
		snapshotsOffset:  be.Uint64(b[64:]),
		refcountOrder:    refcountOrder,
		headerLength:     headerV2Len,
	}
	switch h.version {
	case 2:
	case 3:
		if len(b) < headerV3Len {
			return nil, fmt.Errorf("qcow2 v3 header truncated")
		}
		h.incompatible = be.Uint64(b[72:])
		h.compatible = be.Uint64(b[80:])
		h.autoclear = be.Uint64(b[88:])
		h.refcountOrder = be.Uint32(b[96:])
		h.headerLength = be.Uint32(b[100:])
		if h.headerLength < headerV3Len || h.headerLength%8 != 0 {
			return nil, fmt.Errorf("qcow2 header_length %d: want a multiple of 8, at least 104", h.headerLength)
		}
	default:
		return nil, fmt.Errorf("qcow2 version %d not supported (2 and 3 are)", h.version)
	}
	if h.clusterBits < 9 || h.clusterBits > 21 {
		return nil, fmt.Errorf("qcow2 cluster_bits %d outside 9..21", h.clusterBits)
	}
	cs := uint64(1) << h.clusterBits
	if uint64(h.headerLength) > cs {
		return nil, fmt.Errorf("qcow2 header_length %d larger than a cluster", h.headerLength)
	}
	if h.size > uint64(MaxSize) {
		return nil, fmt.Errorf("qcow2 virtual size %d beyond %d", h.size, MaxSize)
	}
	if h.cryptMethod != 0 {
		return nil, fmt.Errorf("qcow2 image is encrypted (crypt_method %d): not supported", h.cryptMethod)
	}
	switch {
	case h.incompatible&incompatDirty != 0:
		return nil, fmt.Errorf("qcow2 image is marked dirty (its refcounts may be wrong): repair it with qemu-img check -r all")
	case h.incompatible&incompatCorrupt != 0:
		return nil, fmt.Errorf("qcow2 image is marked corrupt: check it with qemu-img check")
	case h.incompatible != 0:
		return nil, fmt.Errorf("qcow2 image uses incompatible features %#x (external data file, compression type or extended L2 entries): not supported", h.incompatible)
	}
	if h.refcountOrder > 6 {
		return nil, fmt.Errorf("qcow2 refcount_order %d above 6", h.refcountOrder)
	}
	l2Entries := cs / 8
	need := (h.size + cs*l2Entries - 1) / (cs * l2Entries)
	if uint64(h.l1Size) < need || h.l1Size > maxL1Entries {
		return nil, fmt.Errorf("qcow2 l1_size %d: %d entries needed for %d bytes, at most %d allowed", h.l1Size, need, h.size, maxL1Entries)
	}
	if h.l1Offset%cs != 0 || h.refcountOffset%cs != 0 || h.l1Offset == 0 || h.refcountOffset == 0 {
		return nil, fmt.Errorf("qcow2 L1 table (%d) or refcount table (%d) not at a cluster boundary", h.l1Offset, h.refcountOffset)
	}
	if uint64(h.refcountClusters)*cs > maxRefcountTableBytes {
		return nil, fmt.Errorf("qcow2 refcount table of %d clusters: too big", h.refcountClusters)
	}
	if h.backingOffset != 0 && h.backingSize > maxBackingNameLen {
		return nil, fmt.Errorf("qcow2 backing file name of %d bytes (at most %d)", h.backingSize, maxBackingNameLen)
	}
	return h, nil
}

// extension is one header extension.
type extension struct {
	typ  uint32
	data []byte
}

// parseExtensions reads the extensions in b, which starts at the end of the
// fixed header; it returns them and where the end marker ends.
func parseExtensions(b []byte, start int64) ([]extension, int64, error) {
	var out []extension
	off := int64(0)
	for {
		if off+8 > int64(len(b)) {
			return nil, 0, fmt.Errorf("qcow2 header extensions run past the first cluster (no end marker)")
		}
		typ := binary.BigEndian.Uint32(b[off:])
		n := int64(binary.BigEndian.Uint32(b[off+4:]))
		off += 8
		if typ == extEnd {
			return out, start + off, nil
		}
		if n > int64(len(b))-off {
			return nil, 0, fmt.Errorf("qcow2 header extension %#x of %d bytes runs past the first cluster", typ, n)
		}
		out = append(out, extension{typ: typ, data: b[off : off+n]})
		off += (n + 7) &^ 7
	}
}
