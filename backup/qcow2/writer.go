package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync"
)

// CreateOptions describe a new image.
type CreateOptions struct {
	// Size is the virtual size in bytes.
	Size int64
	// ClusterSize is a power of two from 4 KiB to 2 MiB (default 64 KiB).
	ClusterSize int
	// BackingFile, if set, is where unwritten clusters read from: a path
	// relative to the new image's directory, stored as given.
	BackingFile string
	// BackingFormat is "qcow2" or "raw"; required with BackingFile.
	BackingFormat string
}

// l2CacheTables is how many L2 tables a Writer or an Image holds in memory
// (1 MiB of tables at 64 KiB clusters); the rest are written back and
// re-read. A variable so that tests can make eviction happen sooner.
var l2CacheTables = 16

// writeBehindBytes bounds the appended data a Writer has under writeback
// without having waited for it; writeBehindStep is how much new data starts
// writeback at once. Without them a backup leaves the whole image dirty for
// Close's fsync, one burst of writeback (a second and more for 1 GiB on the
// bench's disk) behind which every other fdatasync on the disk waits: a
// Secondary's snapshot copies, so the Primary's protocol-C writes. Small
// steps keep the disk busy from the first window: an incremental of 10 MiB
// left its last 2.6 MiB and the 8 MiB started at once to Close (the close
// and checksum took 19 ms on average on the bench's VM, 17 ms with 2 MiB
// steps). Variables so that tests can make it happen sooner.
var (
	writeBehindBytes int64 = 8 << 20
	writeBehindStep  int64 = 2 << 20
)

// startWriteback is writeback; tests watch the calls.
var startWriteback = writeback

// Writer fills a new qcow2 image cluster by cluster. It is not safe for
// concurrent use. Close must be called for the image to become valid.
type Writer struct {
	f          *os.File
	path       string
	size       int64
	cs         int64
	bits       uint32
	l2Entries  int64
	l1         []uint64 // host offset of each L2 table, 0 if none yet
	next       int64    // next free host offset
	backing    string
	backingFmt string
	cache      []*l2Table
	tick       uint64
	err        error // the first write error; the image is unusable after it
	closed     bool
	// Write-behind of the appended data: writeback started up to
	// wbStarted, waited for up to wbWaited (host offsets).
	wbStarted, wbWaited int64

	// DataClusters and ZeroClusters count what was written.
	DataClusters, ZeroClusters int64
}

type l2Table struct {
	idx   int64 // L1 index
	host  int64
	e     []uint64
	dirty bool
	used  uint64
}

// Create makes a new image at path (which must not exist) and returns a
// Writer for it.
func Create(path string, o CreateOptions) (*Writer, error) {
	if o.ClusterSize == 0 {
		o.ClusterSize = DefaultClusterSize
	}
	cs := int64(o.ClusterSize)
	if cs < MinWriteClusterSize || cs > MaxClusterSize || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("qcow2 cluster size %d: want a power of two from %d to %d", cs, MinWriteClusterSize, MaxClusterSize)
	}
	if o.Size <= 0 || o.Size > MaxSize {
		return nil, fmt.Errorf("qcow2 virtual size %d: want 1..%d bytes", o.Size, MaxSize)
	}
	if o.BackingFile != "" {
		if len(o.BackingFile) > maxBackingNameLen {
			return nil, fmt.Errorf("qcow2 backing file name of %d bytes: at most %d", len(o.BackingFile), maxBackingNameLen)
		}
		if o.BackingFormat != "qcow2" && o.BackingFormat != "raw" {
			return nil, fmt.Errorf("qcow2 backing format %q: want qcow2 or raw", o.BackingFormat)
		}
	} else if o.BackingFormat != "" {
		return nil, fmt.Errorf("qcow2 backing format %q without a backing file", o.BackingFormat)
	}
	w := &Writer{
		path:       path,
		size:       o.Size,
		cs:         cs,
		bits:       uint32(bits.TrailingZeros64(uint64(cs))),
		l2Entries:  cs / 8,
		backing:    o.BackingFile,
		backingFmt: o.BackingFormat,
		next:       cs, // cluster 0 is the header's
		wbStarted:  cs,
		wbWaited:   cs,
	}
	clusters := (o.Size + cs - 1) / cs
	l1n := (clusters + w.l2Entries - 1) / w.l2Entries
	if l1n > maxL1Entries {
		return nil, fmt.Errorf("qcow2 virtual size %d needs %d L1 entries with %d-byte clusters (at most %d): use larger clusters", o.Size, l1n, cs, maxL1Entries)
	}
	w.l1 = make([]uint64, l1n)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qcow2 create: %w", err)
	}
	w.f = f
	return w, nil
}

// Size is the virtual size.
func (w *Writer) Size() int64 { return w.size }

// ClusterSize is the cluster size in bytes.
func (w *Writer) ClusterSize() int { return int(w.cs) }

// Clusters is the number of guest clusters (the last may be partial).
func (w *Writer) Clusters() int64 { return (w.size + w.cs - 1) / w.cs }

// Path is the image's path.
func (w *Writer) Path() string { return w.path }

// WriteCluster stores data (exactly one cluster; for a partial last
// cluster, the bytes past the virtual size are stored as zeroes) as guest
// cluster idx. Writing a cluster again overwrites it in place.
func (w *Writer) WriteCluster(idx int64, data []byte) error {
	if int64(len(data)) != w.cs {
		return fmt.Errorf("qcow2 write cluster %d: %d bytes, want %d", idx, len(data), w.cs)
	}
	t, i, err := w.entry(idx)
	if err != nil {
		return err
	}
	host := int64(t.e[i] & offsetMask)
	if host == 0 {
		host = w.next
		w.next += w.cs
	}
	if tail := (idx+1)*w.cs - w.size; tail > 0 {
		// QEMU rounds the virtual size up to 512 bytes: what lies past it
		// must read as zeroes.
		data = append([]byte(nil), data...)
		clear(data[w.cs-tail:])
	}
	if _, err := w.f.WriteAt(data, host); err != nil {
		return w.fail(fmt.Errorf("qcow2 write cluster %d at %d: %w", idx, host, err))
	}
	t.e[i] = uint64(host) | entryCopied
	t.dirty = true
	w.DataClusters++
	w.writeBehind()
	return nil
}

// writeBehind starts writeback of the data appended since the last step
// once there is writeBehindStep of it, first waiting for all it started
// before if that is writeBehindBytes or more: at most about
// writeBehindBytes+writeBehindStep of the appended data are dirty or in
// flight.
// Errors are not the image's: the writes succeeded, and Close's fsync
// reports whatever the disk did with them.
func (w *Writer) writeBehind() {
	if w.next-w.wbStarted < writeBehindStep {
		return
	}
	if w.wbStarted-w.wbWaited >= writeBehindBytes {
		_ = startWriteback(w.f, w.wbWaited, w.wbStarted-w.wbWaited, true)
		w.wbWaited = w.wbStarted
	}
	_ = startWriteback(w.f, w.wbStarted, w.next-w.wbStarted, false)
	w.wbStarted = w.next
}

// WriteZeroCluster marks guest cluster idx as reading zeroes, whatever the
// backing file holds there.
func (w *Writer) WriteZeroCluster(idx int64) error {
	t, i, err := w.entry(idx)
	if err != nil {
		return err
	}
	if host := t.e[i] & offsetMask; host != 0 {
		t.e[i] = host | entryCopied | entryZero // keep the allocation: no leak
	} else {
		t.e[i] = entryZero
	}
	t.dirty = true
	w.ZeroClusters++
	return nil
}

// entry finds the L2 table and index of guest cluster idx.
func (w *Writer) entry(idx int64) (*l2Table, int64, error) {
	if w.closed {
		return nil, 0, errors.New("qcow2 writer closed")
	}
	if w.err != nil {
		return nil, 0, w.err
	}
	if idx < 0 || idx >= w.Clusters() {
		return nil, 0, fmt.Errorf("qcow2 cluster %d outside the image's %d clusters", idx, w.Clusters())
	}
	t, err := w.table(idx / w.l2Entries)
	if err != nil {
		return nil, 0, err
	}
	return t, idx % w.l2Entries, nil
}

// table returns the L2 table for L1 index l1i, allocating it on first use.
func (w *Writer) table(l1i int64) (*l2Table, error) {
	w.tick++
	for _, t := range w.cache {
		if t.idx == l1i {
			t.used = w.tick
			return t, nil
		}
	}
	var t *l2Table
	if len(w.cache) < l2CacheTables {
		t = &l2Table{e: make([]uint64, w.l2Entries)}
		w.cache = append(w.cache, t)
	} else {
		t = w.cache[0]
		for _, c := range w.cache {
			if c.used < t.used {
				t = c
			}
		}
		if err := w.flushTable(t); err != nil {
			return nil, err
		}
	}
	t.idx, t.used, t.dirty = l1i, w.tick, false
	if host := int64(w.l1[l1i]); host != 0 {
		t.host = host
		b := make([]byte, w.cs)
		if _, err := w.f.ReadAt(b, host); err != nil {
			return nil, w.fail(fmt.Errorf("qcow2 re-read L2 table at %d: %w", host, err))
		}
		for i := range t.e {
			t.e[i] = binary.BigEndian.Uint64(b[8*i:])
		}
		return t, nil
	}
	t.host = w.next
	w.next += w.cs
	w.l1[l1i] = uint64(t.host)
	clear(t.e)
	t.dirty = true
	return t, nil
}

func (w *Writer) flushTable(t *l2Table) error {
	if !t.dirty {
		return nil
	}
	b := make([]byte, w.cs)
	for i, e := range t.e {
		binary.BigEndian.PutUint64(b[8*i:], e)
	}
	if _, err := w.f.WriteAt(b, t.host); err != nil {
		return w.fail(fmt.Errorf("qcow2 write L2 table at %d: %w", t.host, err))
	}
	t.dirty = false
	return nil
}

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// Close writes the L2 tables still in memory, the L1 table, the refcounts
// and the header, fsyncs and closes the file. After an error the file is
// not a valid image (the caller removes it).
func (w *Writer) Close() error { return w.CloseDuringSync(nil) }

// CloseDuringSync is Close that, once the image is complete, runs during
// (when not nil) while the file is fsynced, and returns its error too:
// during may read the complete file (a checksum) at the same time as the
// sync writes it out. If the writes fail, during does not run.
func (w *Writer) CloseDuringSync(during func(path string) error) error {
	if w.closed {
		return errors.New("qcow2 writer closed twice")
	}
	w.closed = true
	err := w.finish()
	if err == nil {
		err = w.sync(during)
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("qcow2 close %s: %w", w.path, cerr)
	}
	return err
}

// Abort closes the file without completing the image; it remains without
// a header (the caller removes it).
func (w *Writer) Abort() {
	if !w.closed {
		w.closed = true
		w.f.Close()
	}
}

func (w *Writer) finish() error {
	if w.err != nil {
		return w.err
	}
	for _, t := range w.cache {
		if err := w.flushTable(t); err != nil {
			return err
		}
	}
	cs := w.cs
	// L1 table.
	l1Off := w.next
	l1Bytes := int64(len(w.l1)) * 8
	l1Clusters := (l1Bytes + cs - 1) / cs
	b := make([]byte, l1Clusters*cs)
	for i, e := range w.l1 {
		if e != 0 {
			e |= entryCopied
		}
		binary.BigEndian.PutUint64(b[8*i:], e)
	}
	if _, err := w.f.WriteAt(b, l1Off); err != nil {
		return fmt.Errorf("qcow2 write L1 table: %w", err)
	}
	w.next += l1Clusters * cs

	// Refcounts: every cluster up to the end is used once. The refcount
	// table and blocks count themselves, so grow them until they cover
	// what they add.
	perBlock := cs * 8 / (1 << refcountOrder)
	used := w.next / cs
	rb, rt := int64(0), int64(0)
	for {
		total := used + rt + rb
		nrb := (total + perBlock - 1) / perBlock
		nrt := (nrb*8 + cs - 1) / cs
		if nrb == rb && nrt == rt {
			break
		}
		rb, rt = nrb, nrt
	}
	if rt*cs > maxRefcountTableBytes {
		return fmt.Errorf("qcow2 refcount table of %d clusters exceeds QEMU's limit: use larger clusters", rt)
	}
	total := used + rt + rb
	rtOff := w.next
	rbOff := rtOff + rt*cs
	table := make([]byte, rt*cs)
	block := make([]byte, cs)
	for j := int64(0); j < rb; j++ {
		binary.BigEndian.PutUint64(table[8*j:], uint64(rbOff+j*cs))
		clear(block)
		for k := int64(0); k < perBlock && j*perBlock+k < total; k++ {
			binary.BigEndian.PutUint16(block[2*k:], 1)
		}
		if _, err := w.f.WriteAt(block, rbOff+j*cs); err != nil {
			return fmt.Errorf("qcow2 write refcount block: %w", err)
		}
	}
	if _, err := w.f.WriteAt(table, rtOff); err != nil {
		return fmt.Errorf("qcow2 write refcount table: %w", err)
	}

	// Cluster 0, last: header, extensions, backing name.
	h := header{
		version:          3,
		clusterBits:      w.bits,
		size:             uint64(w.size),
		l1Size:           uint32(len(w.l1)),
		l1Offset:         uint64(l1Off),
		refcountOffset:   uint64(rtOff),
		refcountClusters: uint32(rt),
		refcountOrder:    refcountOrder,
		headerLength:     headerV3Len,
	}
	hdr := make([]byte, cs)
	off := int64(headerV3Len)
	if w.backing != "" {
		binary.BigEndian.PutUint32(hdr[off:], extBackingFormat)
		binary.BigEndian.PutUint32(hdr[off+4:], uint32(len(w.backingFmt)))
		copy(hdr[off+8:], w.backingFmt)
		off += 8 + int64((len(w.backingFmt)+7)&^7)
	}
	off += 8 // end marker (zeroes)
	if w.backing != "" {
		h.backingOffset, h.backingSize = uint64(off), uint32(len(w.backing))
		copy(hdr[off:], w.backing)
	}
	h.encode(hdr)
	if _, err := w.f.WriteAt(hdr, 0); err != nil {
		return fmt.Errorf("qcow2 write header: %w", err)
	}
	return nil
}

// sync fsyncs the complete file, running during (if any) meanwhile.
func (w *Writer) sync(during func(path string) error) error {
	var derr error
	var wg sync.WaitGroup
	if during != nil {
		wg.Go(func() { derr = during(w.path) })
	}
	err := w.f.Sync()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("qcow2 fsync %s: %w", w.path, err)
	}
	return derr
}
