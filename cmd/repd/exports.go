package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"syscall"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/replica"
)

// What the NBD server offers: the live device as export RESOURCE, and
// every valid snapshot of this node as the read-only export RESOURCE@NAME
// (NBD_OPT_LIST lists them, they come and go with the snapshots).
//
// Metadata contexts:
//
//   - base:allocation on RESOURCE is the live device's holes and data
//     (Node.Allocation: refused on a disk that is not UpToDate, whose
//     holes promise nothing); on RESOURCE@S, what the snapshot store can
//     tell: a hole of the live device not written since S, data otherwise.
//   - qemu:dirty-bitmap:NAME on RESOURCE is the blocks changed since
//     snapshot NAME; on RESOURCE@S the blocks changed between NAME and S,
//     offered for the snapshots older than S only (a newer one is refused
//     with a message that says where to ask).
//
// A snapshot export is bound to the snapshot it was opened on (its
// sequence number, not only its name): once that snapshot is deleted or
// invalidated, every read and status request on it fails with EIO, and
// the daemon ends the connections on it (Server.CloseExport). A read that
// raced the deletion is checked after it ran, so it never returns the
// data of a later snapshot of the same name, nor data changed after an
// invalidation.

// exports builds the server's export list from the node's snapshots.
type exports struct {
	node       *replica.Node
	resource   string
	self       string
	maxExtents int // extents one status answer holds (nbd.Server.MaxExtents)
	live       nbd.Export
}

func newExports(node *replica.Node, resource, self string, maxExtents int) *exports {
	if maxExtents <= 0 {
		maxExtents = nbd.DefaultMaxExtents
	}
	x := &exports{node: node, resource: resource, self: self, maxExtents: maxExtents}
	x.live = nbd.Export{
		Name:        resource,
		Description: "repd resource " + resource + " on " + self,
		Device:      &liveDevice{Node: node, x: x},
	}
	return x
}

// list is nbd.Server.ExportsFunc: the live export first (a client asking
// for "" gets it), then each valid snapshot, oldest first.
func (x *exports) list() []nbd.Export {
	snaps := x.node.Snapshots()
	out := make([]nbd.Export, 1, 1+len(snaps))
	out[0] = x.live
	for _, s := range snaps {
		if !s.Valid {
			continue
		}
		dev, err := x.node.SnapshotDevice(s.Name)
		if err != nil {
			continue // deleted or invalidated meanwhile, or the store failed
		}
		out = append(out, nbd.Export{
			Name: x.exportName(s.Name),
			Description: fmt.Sprintf("repd snapshot %s of resource %s on %s, taken %s (read-only)",
				s.Name, x.resource, x.self, s.Created.UTC().Format(time.RFC3339)),
			Device:   &snapDevice{dev: dev, x: x, name: s.Name, seq: s.Seq},
			ReadOnly: true,
		})
	}
	return out
}

func (x *exports) exportName(snap string) string { return x.resource + "@" + snap }

// snapshot finds a valid snapshot by name.
func (x *exports) snapshot(name string) (replica.SnapshotInfo, bool) {
	for _, s := range x.node.Snapshots() {
		if s.Name == name {
			return s, s.Valid
		}
	}
	return replica.SnapshotInfo{}, false
}

// dirtyBitmaps names qemu:dirty-bitmap:NAME for every valid snapshot
// taken before sequence number before (math.MaxUint64: all).
func (x *exports) dirtyBitmaps(before uint64) []string {
	var out []string
	for _, s := range x.node.Snapshots() {
		if s.Valid && s.Seq < before {
			out = append(out, nbd.DirtyBitmapPrefix+s.Name)
		}
	}
	return out
}

// changed answers qemu:dirty-bitmap:FROM for [off, off+n): the blocks
// written after snapshot from and before snapshot to ("": the live
// device), as extents from off, at most maxExtents of them.
func (x *exports) changed(from, to string, off, n int64) ([]nbd.Extent, error) {
	var out []nbd.Extent
	pos, end := off, off+n
	add := func(l int64, flags uint32) bool {
		if l <= 0 {
			return true
		}
		if k := len(out); k > 0 && out[k-1].Flags == flags {
			out[k-1].Len += l
		} else {
			out = append(out, nbd.Extent{Len: l, Flags: flags})
		}
		return len(out) < x.maxExtents
	}
	full := false
	err := x.node.ChangedRange(from, to, off, n, func(o, l int64) bool {
		if !add(o-pos, 0) || !add(l, nbd.StateDirty) {
			full = true
		}
		pos = o + l
		return !full
	})
	if err != nil {
		return nil, statusError(err)
	}
	if !full {
		add(end-pos, 0)
	}
	return out, nil
}

// Status windows: base:allocation asks the store about a window that
// starts at firstWindow and doubles while fewer than enoughExtents have
// been found. A walk costs a few lseek(2) calls per extent of its whole
// range (and, for a snapshot, its changed blocks), whatever the client
// uses: QEMU asks with NBD_CMD_FLAG_REQ_ONE for each extent in turn, so a
// walk of the whole requested range per request made qemu-img compare of
// a fragmented 8 MiB export take seconds. A sparse device is still
// described in a few doubling walks per request.
const (
	firstWindow   = 256 << 10
	enoughExtents = 64
)

// allocation describes [off, off+n) in base:allocation extents from
// walk (a replica allocation walk over a range), at most maxExtents.
func (x *exports) allocation(off, n int64, walk func(off, n int64, fn func(off, n int64, data bool) bool) error) ([]nbd.Extent, error) {
	var out []nbd.Extent
	var covered int64 // bytes the extents describe, from off
	full := false
	add := func(_, l int64, data bool) bool {
		covered += l
		var flags uint32
		if !data {
			flags = nbd.StateHole | nbd.StateZero
		}
		if k := len(out); k > 0 && out[k-1].Flags == flags {
			out[k-1].Len += l
		} else {
			out = append(out, nbd.Extent{Len: l, Flags: flags})
		}
		full = len(out) >= x.maxExtents
		return !full
	}
	pos, end := off, off+n
	for w := int64(firstWindow); pos < end && !full && (len(out) < enoughExtents || pos == off); w *= 2 {
		wn := min(w, end-pos)
		if err := walk(pos, wn, add); err != nil {
			return nil, statusError(err)
		}
		pos += wn
		if off+covered != pos {
			break // the walk stopped short: the extents must stay contiguous
		}
	}
	return out, nil
}

// statusError makes a status failure an NBD error: range errors stay
// EINVAL, a context that does not exist (any more) or cannot be read is
// EIO.
func statusError(err error) error {
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EIO) {
		return err
	}
	return fmt.Errorf("%w (%w)", err, syscall.EIO)
}

// bitmapName is the snapshot a qemu:dirty-bitmap:NAME context names.
func bitmapName(export, context string) (string, error) {
	name, ok := strings.CutPrefix(context, nbd.DirtyBitmapPrefix)
	if !ok || name == "" {
		return "", fmt.Errorf("export %s has no metadata context %q: it offers base:allocation and qemu:dirty-bitmap:SNAPSHOT (%w)",
			export, context, syscall.EINVAL)
	}
	return name, nil
}

// liveDevice is the live export: the Node (reads, writes, trims, zeroes,
// Quick) with base:allocation and the dirty bitmaps of its snapshots.
type liveDevice struct {
	*replica.Node
	x *exports
}

// Allocation is base:allocation of the live device.
func (d *liveDevice) Allocation(_ context.Context, off, n int64) ([]nbd.Extent, error) {
	return d.x.allocation(off, n, d.Node.Allocation)
}

// MetaContexts offers qemu:dirty-bitmap:NAME for every valid snapshot.
func (d *liveDevice) MetaContexts() []string { return d.x.dirtyBitmaps(math.MaxUint64) }

// BlockStatus answers qemu:dirty-bitmap:NAME: the blocks written since
// snapshot NAME.
func (d *liveDevice) BlockStatus(_ context.Context, context string, off, n int64) ([]nbd.Extent, error) {
	from, err := bitmapName(d.x.resource, context)
	if err != nil {
		return nil, err
	}
	return d.x.changed(from, "", off, n)
}

// snapDevice is the export RESOURCE@NAME of one snapshot, bound to its
// sequence number.
type snapDevice struct {
	dev  *replica.SnapshotDevice
	x    *exports
	name string
	seq  uint64
}

func (d *snapDevice) Size() int64 { return d.dev.Size() }

// still fails with EIO unless the snapshot this export was opened on is
// still there and valid: called after every read and status answer, so
// that none returns data that may have changed under it.
func (d *snapDevice) still() error {
	s, valid := d.x.snapshot(d.name)
	switch {
	case s.Seq != d.seq:
		return fmt.Errorf("snapshot %q of %s was deleted while export %s was open: reconnect to the snapshot now named so, if any (%w)",
			d.name, d.x.self, d.x.exportName(d.name), syscall.EIO)
	case !valid:
		return fmt.Errorf("snapshot %q of %s was invalidated (%s): its data can no longer be read (%w)",
			d.name, d.x.self, s.Reason, syscall.EIO)
	}
	return nil
}

func (d *snapDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.dev.ReadAt(ctx, p, off); err != nil {
		return err
	}
	if err := d.still(); err != nil {
		clear(p)
		return err
	}
	return nil
}

// WriteAt refuses (the export is read-only, so the server refuses first).
func (d *snapDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return d.dev.WriteAt(ctx, p, off, fua)
}

func (d *snapDevice) Flush(ctx context.Context) error { return d.dev.Flush(ctx) }

// Allocation is base:allocation of the snapshot.
func (d *snapDevice) Allocation(_ context.Context, off, n int64) ([]nbd.Extent, error) {
	ext, err := d.x.allocation(off, n, d.dev.Allocation)
	if err != nil {
		return nil, err
	}
	if err := d.still(); err != nil {
		return nil, err
	}
	return ext, nil
}

// MetaContexts offers qemu:dirty-bitmap:NAME for the snapshots older
// than this one.
func (d *snapDevice) MetaContexts() []string { return d.x.dirtyBitmaps(d.seq) }

// BlockStatus answers qemu:dirty-bitmap:NAME: the blocks written between
// snapshot NAME and this one.
func (d *snapDevice) BlockStatus(_ context.Context, context string, off, n int64) ([]nbd.Extent, error) {
	export := d.x.exportName(d.name)
	from, err := bitmapName(export, context)
	if err != nil {
		return nil, err
	}
	if s, ok := d.x.snapshot(from); ok && s.Seq > d.seq {
		return nil, fmt.Errorf("%s on export %s: snapshot %q was taken after %q, so it has no changes up to it; "+
			"for the blocks changed between them ask export %s for %s%s (%w)",
			context, export, from, d.name, d.x.exportName(from), nbd.DirtyBitmapPrefix, d.name, syscall.EINVAL)
	}
	if from == d.name {
		return nil, fmt.Errorf("%s on export %s: a snapshot has no changes against itself (%w)", context, export, syscall.EINVAL)
	}
	ext, err := d.x.changed(from, d.name, off, n)
	if err != nil {
		return nil, err
	}
	if err := d.still(); err != nil {
		return nil, err
	}
	return ext, nil
}

// exportCloser ends the NBD connections on the export of a snapshot that
// was deleted or invalidated (events from the node), so that their
// clients learn at once rather than at their next request. Its Run ends
// with ctx.
type exportCloser struct {
	srv      *nbd.Server
	x        *exports
	resource string
	log      *slog.Logger
	names    chan string
}

func newExportCloser(srv *nbd.Server, x *exports, log *slog.Logger) *exportCloser {
	return &exportCloser{srv: srv, x: x, resource: x.resource, log: log, names: make(chan string, 64)}
}

// onEvent takes the node's events (replica.Config.OnEvent, called in
// order without locks): it never blocks; a name it cannot queue is
// dropped (that export's requests fail with EIO anyway).
func (c *exportCloser) onEvent(e api.Event) {
	if e.Kind != "snapshot" || e.Snapshot == "" || (e.New != "deleted" && e.New != "invalidated") {
		return
	}
	select {
	case c.names <- e.Snapshot:
	default:
	}
}

// closeTimeout bounds how long ending one snapshot export's connections
// waits for their requests in flight before closing them at once.
const closeTimeout = 10 * time.Second

func (c *exportCloser) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case name := <-c.names:
			if _, valid := c.x.snapshot(name); valid {
				// Taken again under the same name since: the new
				// snapshot's clients stay; the old one's get EIO.
				continue
			}
			export := c.resource + "@" + name
			cctx, cancel := context.WithTimeout(ctx, closeTimeout)
			if err := c.srv.CloseExport(cctx, export); err != nil && ctx.Err() == nil {
				c.log.Warn("closing the connections on a snapshot export", "export", export, "err", err)
			}
			cancel()
		}
	}
}
