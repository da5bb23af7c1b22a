package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/repd/repd/backup/qcow2"
	"github.com/repd/repd/internal/ctxtime"
	"github.com/repd/repd/internal/zero"
	"github.com/repd/repd/nbd/client"
)

// Source is a point-in-time export to back up; *client.Client is one.
type Source interface {
	Export() string
	Size() int64
	ReadOnly() bool
	HasMetaContext(name string) bool
	Extents(ctx context.Context, name string, off, n int64, fn func(client.Extent) error) error
	ReadBatch(ctx context.Context, spans []client.Span) error
}

// Request says what to back up.
type Request struct {
	// Snapshot is the name of the snapshot the source shows. The next
	// incremental reads the changes since it from the dirty bitmap of that
	// name (qemu:dirty-bitmap:SNAPSHOT).
	Snapshot string
	// Full makes a full backup even when the chain has points (a new chain
	// starts; the old points stay until retention drops them).
	Full bool
	// Rate, if positive, paces the reads to at most this many bytes per
	// second on average, so that a backup from a busy node leaves it (and,
	// under protocol C, the Primary waiting for it) most of its disk and
	// CPU. 0 reads as fast as the source answers.
	Rate int64
}

// ErrNoBitmap means an incremental backup is impossible: the export has no
// dirty bitmap for the previous point's snapshot (it was deleted, or the
// source is another device). Take a full backup.
var ErrNoBitmap = errors.New("no dirty bitmap for the previous backup's snapshot")

// ErrSizeChanged means the export's size differs from the chain's.
var ErrSizeChanged = errors.New("the export's size differs from the backup chain's")

// Incremental reports whether Backup with req would be incremental, and the
// snapshot whose dirty bitmap it needs.
func (r *Repo) Incremental(req Request) (base string, ok bool) {
	last, have := r.Last()
	if !have || req.Full {
		return "", false
	}
	return last.Snapshot, true
}

// MetaContexts are the metadata contexts to negotiate (client.Options) for
// a backup with req: the previous point's dirty bitmap for an incremental,
// base:allocation for a full. Only what the scan asks for: a server
// answers every BLOCK_STATUS for each negotiated context.
func (r *Repo) MetaContexts(req Request) []string {
	if base, ok := r.Incremental(req); ok {
		return []string{client.DirtyBitmapContext(base)}
	}
	return []string{client.ContextAllocation}
}

// span is a byte range [off, end) to read from the source.
type span struct{ off, end int64 }

// windowBytes is how much a copy step reads at once (pipelined requests).
// The buffer's first touch costs: on the bench's VM every 4 KiB page
// faulted in took ~15 µs, 30-40 ms for an 8 MiB window, a quarter of an
// incremental of 10 MiB; with 2 MiB the incremental took 130 ms instead of
// 171 and a 1 GiB full 2.54 s instead of 2.29.
const windowBytes = 2 << 20

// Backup reads src into a new point: full (only what base:allocation does
// not report as zeroes) when the chain is empty or req.Full, else
// incremental (only what the previous point's dirty bitmap reports
// changed). The point is in the manifest when Backup returns nil.
func (r *Repo) Backup(ctx context.Context, src Source, req Request) (Point, error) {
	if req.Snapshot == "" || len(req.Snapshot) > 1024 {
		return Point{}, fmt.Errorf("backup: name the snapshot the export shows (1..1024 bytes)")
	}
	size := src.Size()
	if size <= 0 {
		return Point{}, fmt.Errorf("backup: export %q is empty", src.Export())
	}
	if !src.ReadOnly() {
		r.log.Warn("backup: the export is writable, so it is probably not a snapshot; the backup is consistent only if nothing writes meanwhile", "export", src.Export())
	}
	start := r.o.Now()
	base, inc := r.Incremental(req)
	var prev Point
	if inc {
		prev, _ = r.Last()
		if prev.Snapshot == req.Snapshot {
			return Point{}, fmt.Errorf("backup: snapshot %q is the previous point's already; take a new snapshot", req.Snapshot)
		}
		if size != r.m.VirtualSize {
			return Point{}, fmt.Errorf("backup: %w: export %q has %d bytes, the chain in %s %d; take a full backup (--full)", ErrSizeChanged, src.Export(), size, r.dir, r.m.VirtualSize)
		}
		if !src.HasMetaContext(client.DirtyBitmapContext(base)) {
			return Point{}, fmt.Errorf("backup: %w: export %q offers no %s (was snapshot %q deleted?); take a full backup (--full)", ErrNoBitmap, src.Export(), client.DirtyBitmapContext(base), base)
		}
	}
	cs := r.o.ClusterSize
	if inc {
		cs = r.m.ClusterSize
	}

	// Scan: what to read.
	var spans []span
	total, reported := int64(0), int64(0)
	add := func(e client.Extent) error {
		if n := len(spans); n > 0 && spans[n-1].end == e.Off {
			spans[n-1].end = e.End()
		} else {
			spans = append(spans, span{e.Off, e.End()})
		}
		total += e.Len
		if e.End()-reported >= windowBytes*8 {
			r.progress(Progress{Phase: "scan", Done: e.End(), Total: size})
			reported = e.End()
		}
		return nil
	}
	var err error
	tScan := time.Now()
	switch {
	case inc:
		err = src.Extents(ctx, client.DirtyBitmapContext(base), 0, size, func(e client.Extent) error {
			if e.Flags&client.StateDirty != 0 {
				return add(e)
			}
			return nil
		})
	case src.HasMetaContext(client.ContextAllocation):
		err = src.Extents(ctx, client.ContextAllocation, 0, size, func(e client.Extent) error {
			if e.Flags&client.StateZero == 0 {
				return add(e)
			}
			return nil
		})
	default:
		r.log.Info("backup: the export offers no base:allocation; reading all of it", "export", src.Export())
		err = add(client.Extent{Off: 0, Len: size})
	}
	if err != nil {
		return Point{}, fmt.Errorf("backup: scan %q: %w", src.Export(), err)
	}
	r.progress(Progress{Phase: "scan", Done: size, Total: size})
	r.log.Debug("backup: scanned", "export", src.Export(), "extents", len(spans), "seconds", time.Since(tScan).Seconds())

	kind := KindFull
	if inc {
		kind = KindInc
	}
	file := r.newName(start, kind)
	co := qcow2.CreateOptions{Size: size, ClusterSize: cs}
	if inc {
		co.BackingFile, co.BackingFormat = prev.File, "qcow2"
	}
	w, err := qcow2.Create(r.path(file+".partial"), co)
	if err != nil {
		return Point{}, fmt.Errorf("backup: %w", err)
	}
	var fill func(p []byte, off int64) error // what the bytes not read hold
	if inc {
		chain, err := qcow2.OpenChain(r.path(prev.File))
		if err != nil {
			w.Abort()
			os.Remove(w.Path())
			return Point{}, fmt.Errorf("backup: the previous point: %w", err)
		}
		defer chain.Close()
		fill = func(p []byte, off int64) error { _, err := chain.ReadAt(p, off); return err }
	}
	r.log.Info("backup: copying", "export", src.Export(), "kind", kind, "file", file, "bytes", total, "ranges", len(spans))
	t0 := time.Now()
	if err := r.copy(ctx, src, w, spans, total, req.Rate, fill); err != nil {
		w.Abort()
		os.Remove(w.Path())
		return Point{}, fmt.Errorf("backup %q to %s: %w", src.Export(), file, err)
	}
	t1 := time.Now()
	data := w.DataClusters * int64(cs)
	sum, fsize, err := r.closeSummed(w, file)
	if err != nil {
		os.Remove(w.Path())
		return Point{}, fmt.Errorf("backup: %w", err)
	}
	t2 := time.Now()
	if err := r.publish(file); err != nil {
		os.Remove(w.Path())
		return Point{}, err
	}
	r.log.Debug("backup: file written", "file", file, "copy_s", t1.Sub(t0).Seconds(),
		"close_and_checksum_s", t2.Sub(t1).Seconds(), "publish_s", time.Since(t2).Seconds())
	p := Point{File: file, Kind: kind, Snapshot: req.Snapshot, Time: start.UTC(), Source: src.Export(),
		BytesRead: total, DataBytes: data, FileBytes: fsize, SHA256: sum}
	m := r.Manifest()
	if inc {
		p.Backing, p.BaseSnapshot = prev.File, base
	}
	// A full backup after other points starts a new chain in the same
	// directory; retention drops the old one once enough points follow.
	m.VirtualSize, m.ClusterSize = size, cs
	m.Points = append(m.Points, p)
	if err := r.commit(m); err != nil {
		return Point{}, err
	}
	return p, nil
}

// copy reads spans from src and writes every cluster they touch: read
// bytes, and for the rest of a touched cluster what fill gives (the
// previous point), or zeroes without fill. A step gathers up to
// windowBytes of touched clusters, near or far apart, and reads them in
// one pipelined batch: an incremental of scattered changes costs a round
// trip per window, not per changed range. Two windows take turns: while
// one is written to w (and its gaps filled), the next is read.
func (r *Repo) copy(ctx context.Context, src Source, w *qcow2.Writer, spans []span, total, rate int64, fill func([]byte, int64) error) error {
	cs := int64(w.ClusterSize())
	per := max(windowBytes/cs, 1)
	bufs, release := windowBuffers(2 * int(per*cs))
	defer release()
	free := make(chan *window, 2)
	for k := range 2 {
		free <- &window{buf: bufs[int64(k)*per*cs : int64(k+1)*per*cs]}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	full := make(chan *window)
	written := make(chan error, 1)
	go func() {
		var err error
		for win := range full {
			if err == nil {
				if err = r.writeWindow(w, win, total, fill); err != nil {
					cancel(err) // stops the reader
				}
			}
			free <- win
		}
		written <- err
	}()
	err := r.readWindows(ctx, src, w.Size(), cs, per, spans, rate, free, full)
	close(full)
	if werr := <-written; werr != nil {
		return werr // the reader's error, if any, is the cancellation
	}
	return err
}

// window is one step of copy: clusters (slots) in buf, and the reads
// that fill them.
type window struct {
	buf   []byte
	slots []slot
	reads []client.Span
	done  int64 // bytes of the spans read up to the end of this window
}

// slot is cluster c, in buf[k*cs:] for the k-th slot, with covered bytes
// of it read.
type slot struct{ c, covered int64 }

// readWindows gathers the spans into windows taken from free, reads each
// and passes it on to full, in order.
func (r *Repo) readWindows(ctx context.Context, src Source, size, cs, per int64, spans []span, rate int64, free <-chan *window, full chan<- *window) error {
	done := int64(0)
	pos := int64(0) // every byte of the spans before it is in a slot
	start := time.Now()
	for i := 0; i < len(spans); {
		var win *window
		select {
		case win = <-free:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		slots, reads, buf := win.slots[:0], win.reads[:0], win.buf
		for i < len(spans) {
			a := max(spans[i].off, pos)
			if a >= spans[i].end {
				i++
				continue
			}
			c := a / cs
			k := int64(len(slots)) - 1
			if k < 0 || slots[k].c != c {
				if len(slots) == int(per) {
					break
				}
				slots = append(slots, slot{c: c})
				k++
				clear(buf[k*cs : (k+1)*cs]) // what no read or fill covers is zeroes
			}
			b := min(spans[i].end, (c+1)*cs, size)
			at := buf[k*cs+a-c*cs : k*cs+b-c*cs]
			if n := len(reads); n > 0 && reads[n-1].Off+int64(len(reads[n-1].Buf)) == a && adjacent(reads[n-1].Buf, at) {
				reads[n-1].Buf = reads[n-1].Buf[:len(reads[n-1].Buf)+len(at)]
			} else {
				reads = append(reads, client.Span{Off: a, Buf: at})
			}
			slots[k].covered += b - a
			done += b - a
			pos = b
		}
		win.slots, win.reads, win.done = slots, reads, done
		if rate > 0 {
			if err := pace(ctx, start, done, rate); err != nil {
				return err
			}
		}
		if err := src.ReadBatch(ctx, reads); err != nil {
			return err
		}
		select {
		case full <- win:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// writeWindow writes the clusters of a window that has been read,
// filling what the reads did not cover.
func (r *Repo) writeWindow(w *qcow2.Writer, win *window, total int64, fill func([]byte, int64) error) error {
	cs := int64(w.ClusterSize())
	size := w.Size()
	for k, sl := range win.slots {
		cl := win.buf[int64(k)*cs : int64(k+1)*cs]
		clen := min(cs, size-sl.c*cs)
		if sl.covered < clen && fill != nil {
			if err := fillGaps(cl[:clen], sl.c*cs, win.reads, fill); err != nil {
				return fmt.Errorf("the previous point at %d: %w", sl.c*cs, err)
			}
		}
		var err error
		switch {
		case !zero.Is(cl):
			err = w.WriteCluster(sl.c, cl)
		case fill != nil:
			err = w.WriteZeroCluster(sl.c) // hides what the previous point held
		}
		if err != nil {
			return err
		}
	}
	r.progress(Progress{Phase: "copy", File: w.Path(), Done: win.done, Total: total})
	return nil
}

// pace waits until reading done bytes since start keeps to rate bytes per
// second (the window about to be read counts: a rate spreads the windows
// out instead of letting the first ones go at full speed).
func pace(ctx context.Context, start time.Time, done, rate int64) error {
	due := start.Add(time.Duration(float64(done) / float64(rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		return ctxtime.Sleep(ctx, d)
	}
	return nil
}

// adjacent reports whether b starts where a ends in the same array.
func adjacent(a, b []byte) bool {
	return cap(a) > len(a) && len(b) > 0 && &a[:len(a)+1][len(a)] == &b[0]
}

// fillGaps fills the bytes of cluster cl (at off) that no read covered.
func fillGaps(cl []byte, off int64, reads []client.Span, fill func([]byte, int64) error) error {
	end := off + int64(len(cl))
	at := off
	for _, s := range reads {
		a, b := max(s.Off, off), min(s.Off+int64(len(s.Buf)), end)
		if a >= b {
			continue
		}
		if a > at {
			if err := fill(cl[at-off:a-off], at); err != nil {
				return err
			}
		}
		at = max(at, b)
	}
	if at < end {
		return fill(cl[at-off:], at)
	}
	return nil
}
