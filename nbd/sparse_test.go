package nbd_test

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// span is a byte range.
type span struct{ off, n int64 }

// sparseDevice is a memDevice with a given allocation (the data spans; the
// rest are holes that read as zeroes) and dirty bitmaps (context name →
// dirty spans): an Allocator and MetaContexts, as a snapshot export would
// be. It counts the bytes read and remembers the longest status range
// asked for.
type sparseDevice struct {
	*memDevice
	data []span

	mu    sync.Mutex
	dirty map[string][]span

	readBytes   atomic.Int64
	maxAsked    atomic.Int64
	statusCalls atomic.Int64
}

// newSparse makes a device of size bytes whose data spans hold pattern
// bytes (never zero) and whose holes are zero.
func newSparse(size int, data []span, dirty map[string][]span) *sparseDevice {
	d := &sparseDevice{memDevice: newMem(size), data: data, dirty: dirty}
	for _, s := range data {
		p := pattern(int(s.n), byte(s.off>>12)|1)
		for i := range p {
			if p[i] == 0 {
				p[i] = 0xff
			}
		}
		copy(d.memDevice.data[s.off:], p)
	}
	return d
}

func (d *sparseDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.readBytes.Add(int64(len(p)))
	return d.memDevice.ReadAt(ctx, p, off)
}

// extentsOf describes [off, off+n) with flags in inside the spans and out
// elsewhere.
func extentsOf(spans []span, off, n int64, in, out uint32) []nbd.Extent {
	var ext []nbd.Extent
	add := func(l int64, f uint32) {
		if l <= 0 {
			return
		}
		if k := len(ext); k > 0 && ext[k-1].Flags == f {
			ext[k-1].Len += l
			return
		}
		ext = append(ext, nbd.Extent{Len: l, Flags: f})
	}
	pos, end := off, off+n
	for _, s := range spans {
		if s.off+s.n <= pos || s.off >= end {
			continue
		}
		add(max(s.off, pos)-pos, out)
		e := min(s.off+s.n, end)
		add(e-max(s.off, pos), in)
		pos = e
	}
	add(end-pos, out)
	return ext
}

func (d *sparseDevice) Allocation(_ context.Context, off, n int64) ([]nbd.Extent, error) {
	d.note(n)
	return extentsOf(d.data, off, n, 0, nbd.StateHole|nbd.StateZero), nil
}

func (d *sparseDevice) MetaContexts() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var names []string
	for n := range d.dirty {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (d *sparseDevice) BlockStatus(_ context.Context, name string, off, n int64) ([]nbd.Extent, error) {
	d.note(n)
	d.mu.Lock()
	spans, ok := d.dirty[name]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("context %s: the snapshot was deleted: %w", name, fs.ErrNotExist)
	}
	return extentsOf(spans, off, n, nbd.StateDirty, 0), nil
}

// drop deletes a dirty bitmap, as deleting a snapshot would.
func (d *sparseDevice) drop(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.dirty, name)
}

func (d *sparseDevice) note(n int64) {
	d.statusCalls.Add(1)
	for {
		m := d.maxAsked.Load()
		if n <= m || d.maxAsked.CompareAndSwap(m, n) {
			return
		}
	}
}

// snapDevice is the sparse device most tests use: 4 MiB, data at
// [64K, 128K) and [1M, 1M+128K) and [3M, 3M+4K), bitmaps snap0 (dirty
// [64K, 128K) and [1M+64K, 1M+128K)) and snap1 (dirty [3M, 3M+4K)).
func snapDevice() *sparseDevice {
	return newSparse(4<<20,
		[]span{{64 << 10, 64 << 10}, {1 << 20, 128 << 10}, {3 << 20, 4 << 10}},
		map[string][]span{
			nbd.DirtyBitmapPrefix + "snap0": {{64 << 10, 64 << 10}, {1<<20 + 64<<10, 64 << 10}},
			nbd.DirtyBitmapPrefix + "snap1": {{3 << 20, 4 << 10}},
		})
}

// structuredGo negotiates structured replies and the contexts queries
// select on export, then enters transmission on it.
func structuredGo(t testing.TB, addr, export string, queries ...string) *nbdtest.Client {
	t.Helper()
	n, err := nbdtest.Negotiate(rawDial(t, addr), fixedNoZeroes)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	if len(queries) > 0 {
		if _, err := n.SetMetaContext(export, queries...); err != nil {
			t.Fatal(err)
		}
	}
	c, err := n.Go(export, nbd.InfoBlockSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// statusByName maps a block status reply's extents to context names.
func statusByName(t testing.TB, c *nbdtest.Client, r nbdtest.Reply) map[string][]nbd.Extent {
	t.Helper()
	out := make(map[string][]nbd.Extent)
	for id, ext := range r.Status {
		name, ok := c.Contexts[id]
		if !ok {
			t.Fatalf("status for context id %d, which was not selected (%v)", id, c.Contexts)
		}
		for _, e := range ext {
			out[name] = append(out[name], nbd.Extent{Len: int64(e.Len), Flags: e.Flags})
		}
	}
	if len(out) != len(c.Contexts) {
		t.Fatalf("status for %d contexts, want all %d selected", len(out), len(c.Contexts))
	}
	return out
}
