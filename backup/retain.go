package backup

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/repd/repd/backup/qcow2"
	"github.com/repd/repd/internal/durable"
	"github.com/repd/repd/internal/zero"
)

// Retain keeps the newest keep points and drops the rest. When the oldest
// point kept is incremental, the chain up to it is merged into a new full
// file for that point and its successor is rebased onto it, so every point
// kept stays restorable. It returns the points dropped.
func (r *Repo) Retain(ctx context.Context, keep int) ([]Point, error) {
	if keep < 1 {
		return nil, fmt.Errorf("retention: keep at least 1 point (asked %d)", keep)
	}
	pts := r.m.Points
	if len(pts) <= keep {
		return nil, nil
	}
	k := len(pts) - keep
	m := r.Manifest()
	var drop []string
	for _, p := range pts[:k] {
		drop = append(drop, p.File)
	}
	if first := pts[k]; first.Kind == KindInc {
		merged, err := r.merge(ctx, first)
		if err != nil {
			return nil, err
		}
		drop = append(drop, first.File)
		for _, p := range pts[:k+1] {
			merged.Merged = append(merged.Merged, p.File)
		}
		m.Points[k] = merged
		if k+1 < len(pts) && pts[k+1].Backing == first.File {
			next := &m.Points[k+1]
			if err := qcow2.Rebase(r.path(next.File), merged.File); err != nil {
				return nil, fmt.Errorf("retention: %w (%s is complete but not yet used)", err, merged.File)
			}
			next.Backing = merged.File
			if next.SHA256, next.FileBytes, err = r.fileSum(next.File); err != nil {
				return nil, fmt.Errorf("retention: %w", err)
			}
		}
	}
	m.Points = m.Points[k:]
	if err := r.commit(m); err != nil {
		return nil, err
	}
	for _, f := range drop {
		if err := os.Remove(r.path(f)); err != nil {
			r.log.Warn("retention: could not remove a dropped file", "file", f, "err", err)
		}
	}
	if err := durable.SyncDir(r.dir); err != nil {
		r.log.Warn("retention: fsync of the directory", "err", err)
	}
	r.log.Info("retention: dropped points", "count", k, "kept", keep)
	return pts[:k], nil
}

// merge writes the chain of p into a new full file for p's point in time
// (native: read every cluster mapped anywhere in the chain, write what is
// not zero) and returns the new point, not yet in the manifest.
func (r *Repo) merge(ctx context.Context, p Point) (Point, error) {
	chain, err := qcow2.OpenChain(r.path(p.File))
	if err != nil {
		return Point{}, fmt.Errorf("retention: %w", err)
	}
	defer chain.Close()
	size := chain.Size()
	cs := int64(chain.Top().ClusterSize())
	file := strings.TrimSuffix(p.File, "-"+KindInc+".qcow2") + "-" + KindFull + ".qcow2"
	if file == p.File {
		file = p.Name() + "-" + KindFull + ".qcow2"
	}
	os.Remove(r.path(file + ".partial"))
	w, err := qcow2.Create(r.path(file+".partial"), qcow2.CreateOptions{Size: size, ClusterSize: int(cs)})
	if err != nil {
		return Point{}, fmt.Errorf("retention: %w", err)
	}
	fail := func(err error) (Point, error) {
		w.Abort()
		os.Remove(w.Path())
		return Point{}, fmt.Errorf("retention: merge into %s: %w", file, err)
	}
	buf := make([]byte, cs)
	for c := int64(0); c < w.Clusters(); c++ {
		if c%256 == 0 {
			if err := ctx.Err(); err != nil {
				return fail(err)
			}
			r.progress(Progress{Phase: "merge", File: file, Done: c * cs, Total: size})
		}
		mapped, err := chain.Mapped(c*cs, cs)
		if err != nil {
			return fail(err)
		}
		if !mapped {
			continue
		}
		clear(buf)
		if _, err := chain.ReadAt(buf[:min(cs, size-c*cs)], c*cs); err != nil {
			return fail(err)
		}
		if zero.Is(buf) {
			continue
		}
		if err := w.WriteCluster(c, buf); err != nil {
			return fail(err)
		}
	}
	r.progress(Progress{Phase: "merge", File: file, Done: size, Total: size})
	data := w.DataClusters * cs
	sum, fsize, err := r.closeSummed(w, file)
	if err != nil {
		os.Remove(w.Path())
		return Point{}, fmt.Errorf("retention: %w", err)
	}
	if err := r.publish(file); err != nil {
		return Point{}, err
	}
	q := p
	q.File, q.Kind, q.Backing, q.BaseSnapshot = file, KindFull, "", ""
	q.DataBytes, q.FileBytes, q.SHA256 = data, fsize, sum
	return q, nil
}
