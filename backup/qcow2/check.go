package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Report is what Check found.
type Report struct {
	DataClusters int64 // guest clusters with data in this image
	ZeroClusters int64 // guest clusters marked as reading zeroes
	// Errors are corruptions: wrong refcounts, clusters used twice or
	// beyond the file, reserved bits set, wrong COPIED flags. An image with
	// errors must not be trusted.
	Errors []string
	// ErrorCount counts every error (Errors keeps the first 100).
	ErrorCount int
	// Leaks are clusters with a refcount that nothing uses: wasted space,
	// harmless.
	Leaks int64
}

// OK reports whether the check found no error.
func (r *Report) OK() bool { return r.ErrorCount == 0 }

func (r *Report) errorf(format string, a ...any) {
	r.ErrorCount++
	if len(r.Errors) < 100 {
		r.Errors = append(r.Errors, fmt.Sprintf(format, a...))
	}
}

// maxCheckClusters bounds the host clusters Check counts (a byte and a bit
// each: 1 GiB of counters for a 64 TiB file of 64 KiB clusters).
const maxCheckClusters = 1 << 30

// Check verifies the image's metadata as qemu-img check does: every L1 and
// L2 entry, every cluster referenced exactly as often as its refcount says,
// no cluster beyond the file, COPIED flags matching refcounts. It returns
// an error only when the file cannot be read.
func (im *Image) Check() (*Report, error) {
	r := &Report{}
	if im.h.nbSnapshots != 0 {
		return nil, fmt.Errorf("qcow2 %s has %d internal snapshots: check it with qemu-img check", im.path, im.h.nbSnapshots)
	}
	cs := im.cs
	hostClusters := (im.fileSize + cs - 1) / cs
	if hostClusters > maxCheckClusters {
		return nil, fmt.Errorf("qcow2 %s: %d host clusters, more than the check handles", im.path, hostClusters)
	}
	used := make([]uint8, hostClusters) // references, saturating at 255
	ref := func(off int64, what string) bool {
		if off%cs != 0 {
			r.errorf("%s at %d is not cluster-aligned", what, off)
			return false
		}
		if off < 0 || off/cs >= hostClusters {
			r.errorf("%s at %d lies beyond the end of the file (%d bytes)", what, off, im.fileSize)
			return false
		}
		if used[off/cs] < 255 {
			used[off/cs]++
		}
		return true
	}
	ref(0, "header")
	l1Bytes := int64(len(im.l1)) * 8
	for o := int64(0); o < l1Bytes; o += cs {
		ref(int64(im.h.l1Offset)+o, "L1 table")
	}
	// Pass 1: count every reference from L1 and L2 tables.
	err := im.walk(func(l1i int64, l2off int64, l2 []uint64) {
		if !ref(l2off, fmt.Sprintf("L2 table of L1 entry %d", l1i)) {
			return
		}
		for i, e := range l2 {
			idx := l1i*im.l2Entries + int64(i)
			if e == 0 {
				continue
			}
			if idx >= im.Clusters() {
				r.errorf("L2 entry for cluster %d beyond the virtual size is not empty (%#x)", idx, e)
				continue
			}
			st, host, err := im.decodeL2(e, idx)
			if err != nil {
				r.errorf("%v", err)
				continue
			}
			switch st {
			case Data:
				r.DataClusters++
				ref(host, fmt.Sprintf("data of cluster %d", idx))
			case Zero:
				r.ZeroClusters++
				if host != 0 {
					ref(host, fmt.Sprintf("preallocation of zero cluster %d", idx))
				}
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if err := im.bitmapRefs(r, ref); err != nil {
		return nil, err
	}
	// The refcount structures count themselves.
	rtBytes := int64(im.h.refcountClusters) * cs
	if int64(im.h.refcountOffset)+rtBytes > im.fileSize {
		r.errorf("refcount table at %d (%d clusters) runs past the end of the file", im.h.refcountOffset, im.h.refcountClusters)
		return r, nil
	}
	for o := int64(0); o < rtBytes; o += cs {
		ref(int64(im.h.refcountOffset)+o, "refcount table")
	}
	rt := make([]byte, rtBytes)
	if _, err := im.f.ReadAt(rt, int64(im.h.refcountOffset)); err != nil {
		return nil, fmt.Errorf("qcow2 %s: read refcount table: %w", im.path, err)
	}
	blocks := make([]int64, rtBytes/8)
	for i := range blocks {
		e := binary.BigEndian.Uint64(rt[8*i:])
		if e&0x1ff != 0 {
			r.errorf("refcount table entry %d (%#x) has reserved bits set", i, e)
			continue
		}
		if e != 0 && ref(int64(e), fmt.Sprintf("refcount block %d", i)) {
			blocks[i] = int64(e)
		}
	}
	// Stored refcounts against the references counted, block by block;
	// remember which clusters have a refcount of exactly 1.
	rbits := int64(1) << im.h.refcountOrder
	perBlock := cs * 8 / rbits
	one := make([]uint64, (hostClusters+63)/64)
	blk := make([]byte, cs)
	for i := int64(0); i < hostClusters; i++ {
		bi, k := i/perBlock, i%perBlock
		if k == 0 && bi < int64(len(blocks)) && blocks[bi] != 0 {
			if _, err := im.f.ReadAt(blk, blocks[bi]); err != nil {
				return nil, fmt.Errorf("qcow2 %s: read refcount block at %d: %w", im.path, blocks[bi], err)
			}
		}
		s := uint64(0)
		if bi < int64(len(blocks)) && blocks[bi] != 0 {
			s = refcountAt(blk, k, rbits)
		}
		if s == 1 {
			one[i/64] |= 1 << (i % 64)
		}
		u := uint64(used[i])
		switch {
		case s == u || (u == 255 && s >= 255):
		case u == 0:
			r.Leaks++
		default:
			r.errorf("cluster %d (offset %d) has refcount %d but %d references", i, i*cs, s, u)
		}
	}
	// Pass 2: COPIED flags must say whether the refcount is exactly 1.
	isOne := func(off int64) bool {
		i := off / cs
		return i < hostClusters && one[i/64]&(1<<(i%64)) != 0
	}
	for i, e := range im.l1 {
		if off := int64(e & offsetMask); off != 0 && (e&entryCopied != 0) != isOne(off) {
			r.errorf("L1 entry %d: COPIED flag %v, refcount 1: %v", i, e&entryCopied != 0, isOne(off))
		}
	}
	err = im.walk(func(l1i int64, _ int64, l2 []uint64) {
		for i, e := range l2 {
			off := int64(e & offsetMask)
			if off == 0 || e&entryCompressed != 0 {
				continue
			}
			if (e&entryCopied != 0) != isOne(off) {
				r.errorf("L2 entry of cluster %d: COPIED flag %v, refcount 1: %v", l1i*im.l2Entries+int64(i), e&entryCopied != 0, isOne(off))
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// walk calls fn for every L2 table the L1 table points to.
func (im *Image) walk(fn func(l1i, l2off int64, l2 []uint64)) error {
	b := make([]byte, im.cs)
	l2 := make([]uint64, im.l2Entries)
	for i, e := range im.l1 {
		off := int64(e & offsetMask)
		if off == 0 {
			continue
		}
		if _, err := im.f.ReadAt(b, off); err != nil {
			return fmt.Errorf("qcow2 %s: read L2 table at %d: %w", im.path, off, err)
		}
		for k := range l2 {
			l2[k] = binary.BigEndian.Uint64(b[8*k:])
		}
		fn(int64(i), off, l2)
	}
	return nil
}

// refcountAt decodes entry k of a refcount block with rbits-bit entries.
func refcountAt(b []byte, k, rbits int64) uint64 {
	switch rbits {
	case 64:
		return binary.BigEndian.Uint64(b[8*k:])
	case 32:
		return uint64(binary.BigEndian.Uint32(b[4*k:]))
	case 16:
		return uint64(binary.BigEndian.Uint16(b[2*k:]))
	case 8:
		return uint64(b[k])
	}
	// Sub-byte widths: bit 0 is the least significant.
	bit := k * rbits
	return uint64(b[bit/8]>>(bit%8)) & (1<<rbits - 1)
}

// bitmapRefs counts the clusters of persistent dirty bitmaps (QEMU's
// bitmaps extension): the directory, each bitmap's table and its data.
func (im *Image) bitmapRefs(r *Report, ref func(int64, string) bool) error {
	b := im.bitmapsExt
	if b == nil {
		return nil
	}
	if len(b) < 24 {
		r.errorf("bitmaps extension of %d bytes", len(b))
		return nil
	}
	be := binary.BigEndian
	n, dirSize, dirOff := be.Uint32(b), int64(be.Uint64(b[8:])), int64(be.Uint64(b[16:]))
	if dirSize <= 0 || dirSize > 64<<20 || dirOff <= 0 || dirOff > im.fileSize-dirSize {
		r.errorf("bitmap directory at %d (%d bytes) outside the file", dirOff, dirSize)
		return nil
	}
	cs := im.cs
	for o := int64(0); o < dirSize; o += cs {
		ref(dirOff+o, "bitmap directory")
	}
	dir := make([]byte, dirSize)
	if _, err := im.f.ReadAt(dir, dirOff); err != nil {
		return fmt.Errorf("qcow2 %s: read bitmap directory: %w", im.path, err)
	}
	for i, off := uint32(0), int64(0); i < n; i++ {
		if off+24 > dirSize {
			r.errorf("bitmap directory entry %d runs past the directory", i)
			return nil
		}
		e := dir[off:]
		tOff, tSize := int64(be.Uint64(e)), int64(be.Uint32(e[8:]))
		nameLen, extra := int64(be.Uint16(e[18:])), int64(be.Uint32(e[20:]))
		off += (24 + extra + nameLen + 7) &^ 7
		if tSize == 0 {
			continue
		}
		if tOff <= 0 || tSize*8 > im.fileSize-tOff {
			r.errorf("bitmap %d: table at %d (%d entries) outside the file", i, tOff, tSize)
			continue
		}
		for o := int64(0); o < tSize*8; o += cs {
			ref(tOff+o, fmt.Sprintf("bitmap %d table", i))
		}
		t := make([]byte, tSize*8)
		if _, err := im.f.ReadAt(t, tOff); err != nil {
			return fmt.Errorf("qcow2 %s: read bitmap table: %w", im.path, err)
		}
		for k := int64(0); k < tSize; k++ {
			if d := int64(be.Uint64(t[8*k:]) & offsetMask); d != 0 {
				ref(d, fmt.Sprintf("bitmap %d data", i))
			}
		}
	}
	return nil
}
