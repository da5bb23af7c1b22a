package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// State is what a guest cluster of one image holds.
type State int

const (
	// Unallocated: the cluster reads from the backing file (zeroes without).
	Unallocated State = iota
	// Data: the cluster's bytes are in this image.
	Data
	// Zero: the cluster reads as zeroes, whatever the backing file holds.
	Zero
)

func (s State) String() string {
	switch s {
	case Data:
		return "data"
	case Zero:
		return "zero"
	}
	return "unallocated"
}

// Image is an open qcow2 image (read-only).
type Image struct {
	f             *os.File
	path          string
	h             *header
	cs            int64
	l2Entries     int64
	fileSize      int64
	l1            []uint64
	extEnd        int64 // where the header extensions end
	backing       string
	backingFormat string
	bitmapsExt    []byte // the bitmaps extension's data, if any
	cache         []*l2Table
	tick          uint64
}

// Open opens the qcow2 image at path and checks its header and L1 table.
func Open(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("qcow2 open: %w", err)
	}
	im, err := open(f, path)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("qcow2 %s: %w", path, err)
	}
	return im, nil
}

func open(f *os.File, path string) (*Image, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, headerV3Len)
	n, err := f.ReadAt(b, 0)
	if err != nil && !(errors.Is(err, io.EOF) && n >= headerV2Len) {
		return nil, fmt.Errorf("read header: %w", err)
	}
	h, err := decodeHeader(b[:n])
	if err != nil {
		return nil, err
	}
	im := &Image{f: f, path: path, h: h, cs: int64(1) << h.clusterBits, fileSize: st.Size()}
	im.l2Entries = im.cs / 8

	// Cluster 0: extensions and the backing file name. They nearly always
	// fit in its first headerPeek bytes; the rest is read only if not
	// (a chain of 30 points opened 64 KiB each: 10 ms of an incremental
	// backup's 80 on the bench's VM).
	c0, err := readHeaderCluster(f, im.cs, im.fileSize, h)
	if err != nil {
		return nil, err
	}
	extArea := c0[h.headerLength:]
	if h.backingOffset != 0 && h.backingOffset < uint64(len(c0)) && h.backingOffset >= uint64(h.headerLength) {
		extArea = c0[h.headerLength:h.backingOffset]
	}
	if h.version >= 3 {
		exts, end, err := parseExtensions(extArea, int64(h.headerLength))
		if err != nil {
			return nil, err
		}
		im.extEnd = end
		for _, e := range exts {
			switch e.typ {
			case extBackingFormat:
				im.backingFormat = string(e.data)
			case extBitmaps:
				im.bitmapsExt = e.data
			}
		}
	} else {
		im.extEnd = headerV2Len
	}
	if h.backingOffset != 0 {
		end := h.backingOffset + uint64(h.backingSize)
		if h.backingOffset < uint64(im.extEnd) || end > uint64(im.fileSize) || h.backingSize == 0 {
			return nil, fmt.Errorf("backing file name at %d+%d outside the space after the header extensions", h.backingOffset, h.backingSize)
		}
		name := make([]byte, h.backingSize)
		if _, err := f.ReadAt(name, int64(h.backingOffset)); err != nil {
			return nil, fmt.Errorf("read backing file name: %w", err)
		}
		im.backing = string(name)
	}

	// L1 table.
	if int64(h.l1Offset) > im.fileSize || int64(h.l1Size)*8 > im.fileSize-int64(h.l1Offset) {
		return nil, fmt.Errorf("L1 table at %d (%d entries) beyond the end of the file (%d bytes)", h.l1Offset, h.l1Size, im.fileSize)
	}
	raw := make([]byte, int64(h.l1Size)*8)
	if _, err := f.ReadAt(raw, int64(h.l1Offset)); err != nil {
		return nil, fmt.Errorf("read L1 table: %w", err)
	}
	im.l1 = make([]uint64, h.l1Size)
	for i := range im.l1 {
		e := binary.BigEndian.Uint64(raw[8*i:])
		if e&l1Reserved != 0 {
			return nil, fmt.Errorf("L1 entry %d (%#x) has reserved bits set", i, e)
		}
		if off := int64(e & offsetMask); off != 0 && (off%im.cs != 0 || off > im.fileSize-im.cs) {
			return nil, fmt.Errorf("L1 entry %d points at %d: not a cluster inside the file", i, off)
		}
		im.l1[i] = e
	}
	return im, nil
}

// headerPeek is how much of cluster 0 open reads first.
const headerPeek = 4096

// readHeaderCluster reads what open needs of cluster 0: the first
// headerPeek bytes when the extensions' end marker and the backing file
// name lie within them, else the whole cluster.
func readHeaderCluster(f *os.File, cs, fileSize int64, h *header) ([]byte, error) {
	n := min(cs, fileSize)
	if n > headerPeek && h.version >= 3 && h.headerLength < headerPeek && (h.backingOffset == 0 || h.backingOffset+uint64(h.backingSize) <= headerPeek) {
		b := make([]byte, headerPeek)
		if _, err := f.ReadAt(b, 0); err != nil {
			return nil, fmt.Errorf("read header cluster: %w", err)
		}
		if _, _, err := parseExtensions(b[h.headerLength:], int64(h.headerLength)); err == nil {
			return b, nil
		}
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("read header cluster: %w", err)
	}
	return b, nil
}

// Close closes the file.
func (im *Image) Close() error { return im.f.Close() }

// Path is the file's path.
func (im *Image) Path() string { return im.path }

// Size is the virtual size.
func (im *Image) Size() int64 { return int64(im.h.size) }

// ClusterSize is the cluster size.
func (im *Image) ClusterSize() int { return int(im.cs) }

// Clusters is the number of guest clusters.
func (im *Image) Clusters() int64 { return (im.Size() + im.cs - 1) / im.cs }

// Version is the qcow2 version (2 or 3).
func (im *Image) Version() int { return int(im.h.version) }

// Backing is the backing file name as stored (relative to the image's
// directory unless absolute) and its format ("" when the image names none).
func (im *Image) Backing() (name, format string) { return im.backing, im.backingFormat }

// Lookup says what guest cluster idx holds in this image and, for Data
// (and preallocated Zero), its host offset.
func (im *Image) Lookup(idx int64) (State, int64, error) {
	if idx < 0 || idx >= im.Clusters() {
		return 0, 0, fmt.Errorf("qcow2 %s: cluster %d outside %d", im.path, idx, im.Clusters())
	}
	l1e := im.l1[idx/im.l2Entries]
	if l1e&offsetMask == 0 {
		return Unallocated, 0, nil
	}
	t, err := im.table(int64(l1e & offsetMask))
	if err != nil {
		return 0, 0, err
	}
	return im.decodeL2(t.e[idx%im.l2Entries], idx)
}

func (im *Image) decodeL2(e uint64, idx int64) (State, int64, error) {
	if e&entryCompressed != 0 {
		return 0, 0, fmt.Errorf("qcow2 %s: cluster %d is compressed: not supported (decompress with qemu-img convert)", im.path, idx)
	}
	if e&l2Reserved != 0 {
		return 0, 0, fmt.Errorf("qcow2 %s: L2 entry of cluster %d (%#x) has reserved bits set", im.path, idx, e)
	}
	off := int64(e & offsetMask)
	if off != 0 && off%im.cs != 0 {
		return 0, 0, fmt.Errorf("qcow2 %s: cluster %d at unaligned offset %d", im.path, idx, off)
	}
	if off >= im.fileSize && off != 0 {
		return 0, 0, fmt.Errorf("qcow2 %s: cluster %d at %d, beyond the end of the file", im.path, idx, off)
	}
	switch {
	case e&entryZero != 0 && im.h.version >= 3:
		return Zero, off, nil
	case off == 0:
		return Unallocated, 0, nil
	}
	return Data, off, nil
}

// table reads (through a small cache) the L2 table at host offset off.
func (im *Image) table(off int64) (*l2Table, error) {
	im.tick++
	for _, t := range im.cache {
		if t.host == off {
			t.used = im.tick
			return t, nil
		}
	}
	var t *l2Table
	if len(im.cache) < l2CacheTables {
		t = &l2Table{e: make([]uint64, im.l2Entries)}
		im.cache = append(im.cache, t)
	} else {
		t = im.cache[0]
		for _, c := range im.cache {
			if c.used < t.used {
				t = c
			}
		}
	}
	b := make([]byte, im.cs)
	if _, err := im.f.ReadAt(b, off); err != nil {
		t.host = -1
		return nil, fmt.Errorf("qcow2 %s: read L2 table at %d: %w", im.path, off, err)
	}
	for i := range t.e {
		t.e[i] = binary.BigEndian.Uint64(b[8*i:])
	}
	t.host, t.used = off, im.tick
	return t, nil
}

// readHost reads p at host offset off; bytes past the end of the file read
// as zeroes.
func (im *Image) readHost(p []byte, off int64) error {
	n, err := im.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qcow2 %s: read at %d: %w", im.path, off, err)
	}
	clear(p[n:])
	return nil
}
