package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/ctxtime"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/journal"
	"github.com/repd/repd/replica/internal/snapstore"
)

// Snapshots: crash-consistent point-in-time images of the device, kept
// copy-on-write in a store file per node (internal/snapstore).
//
// Every change of the live device goes through preserve first: the
// Primary's writes, trims and write-zeroes (local, write.go), a
// Secondary's applied and resync writes (apply.go). A snapshot is a point
// of the write stream, taken where it is a barrier:
//
//   - On the Primary a journal.Snapshot entry gets the next sequence
//     number. When the Primary takes it too, the entry spans the whole
//     device in the in-flight set: it waits for every earlier entry to be
//     written here, flushes the store and creates the snapshot, and every
//     later write waits for it. So every write acknowledged before
//     Snapshot was called is in the image and none that started after
//     the entry.
//   - The entry travels in sequence to the peers that take it (a Snapshot
//     frame); a peer's applier treats it as a barrier: after every earlier
//     write is applied and flushed it creates the snapshot, answers
//     SnapshotAck (created, or why not) and only then acknowledges the
//     sequence past it. The Secondary's image is the Primary's at the same
//     point, byte for byte.
//   - A Secondary connected to a Primary asks it (SnapshotReq) to insert
//     the entry for it and waits for the answer (SnapshotReply). A
//     Secondary with no Primary connected takes it locally at once:
//     nothing is writing (the gate holds off any write a Primary applies
//     meanwhile).
//
// Refused: on a witness, on a disk that is not UpToDate (Inconsistent,
// Outdated, Failed), with snapshots off (resource.snapshot-store-size =
// 0), a full store, a store whose file failed, a name that is taken or
// cannot be an NBD export suffix (RESOURCE@NAME).
//
// A full store invalidates the snapshots that needed the copy, durably,
// and the write goes on. A copy that fails otherwise (the store file, or
// reading the live device) invalidates every snapshot, durably, and the
// write goes on. If the store cannot even record that, the node keeps
// writing, says so (log, event "snapshot" failed) and refuses reads of
// every snapshot from then on.

// Sentinel errors of snapshots, for errors.Is.
var (
	// ErrSnapshotsOff: resource.snapshot-store-size is 0 on this node.
	ErrSnapshotsOff = errors.New("snapshots are off")
	// ErrSnapshotNotFound: no snapshot of that name on this node.
	ErrSnapshotNotFound = snapstore.ErrNotFound
	// ErrSnapshotInvalid: the snapshot was invalidated and cannot be read.
	ErrSnapshotInvalid = snapstore.ErrInvalid
	// ErrReadOnly: a write to a snapshot; wraps EPERM too.
	ErrReadOnly = errors.New("snapshots are read-only")
)

// SnapshotAll, as the only node name given to Snapshot, means every
// connected UpToDate data node, this one included.
const SnapshotAll = "all"

// maxSnapshotRequests bounds the snapshot requests of one peer the
// Primary serves at once; more are refused at once.
const maxSnapshotRequests = 4

// snapWait collects the peers' answers to a snapshot entry; Node.mu.
type snapWait struct {
	ship    uint64            // the peers it was shipped to
	results map[uint64]string // peer bit → "" created, else why not
}

// snapRequest is a Secondary's request to the Primary, waiting for the
// reply; Node.mu.
type snapRequest struct {
	p  *peer
	ch chan snapReply
}

type snapReply struct {
	failed bool
	text   string
}

// SnapshotInfo describes one snapshot of this node.
type SnapshotInfo struct {
	Name    string
	Seq     uint64    // creation order
	Created time.Time // when it was taken here
	// Bytes is the preserved data it reads from the store; Exclusive the
	// part only it uses.
	Bytes, Exclusive int64
	Valid            bool
	Lazy             bool      // its copies are synced in the background (SnapshotLazy)
	Reason           string    // why it is invalid
	Invalidated      time.Time // when it became invalid
}

func infoOf(in snapstore.Info) SnapshotInfo {
	return SnapshotInfo{Name: in.Name, Seq: in.Seq, Created: in.Created, Bytes: in.Bytes, Exclusive: in.Exclusive,
		Valid: in.Valid, Lazy: in.Lazy, Reason: in.Reason, Invalidated: in.Invalidated}
}

// openSnapshots opens the snapshot store (Open); with snapshots off it
// makes sure no store file would go stale meanwhile.
func (n *Node) openSnapshots() error {
	path := n.cfg.SnapshotStore
	n.readLive = func(p []byte, off int64) error { return scanAt(context.Background(), n.st, p, off) }
	if n.cfg.SnapshotStoreBytes == 0 {
		if fi, err := os.Stat(path); path != "" && err == nil && fi.Size() > 0 {
			return fmt.Errorf("snapshot store %s exists but resource.snapshot-store-size is 0: writes would not be preserved and its snapshots "+
				"would silently go stale; set snapshot-store-size to keep them, or remove the file to drop them", path)
		}
		return nil
	}
	st, err := snapstore.Open(path, snapstore.Options{
		DeviceSize:   n.cfg.Size,
		BlockSize:    n.cfg.Granularity,
		Capacity:     n.cfg.SnapshotStoreBytes,
		Logger:       n.log.With("component", "snapshots"),
		OnInvalidate: n.onSnapshotInvalidated,
		SyncLive:     func() error { return n.st.Flush(context.Background()) },
		// A new store is written once in the background, yielding to
		// writes as backups' reads do.
		Prewrite:     true,
		PrewritePace: func(size int64) time.Duration { return n.snapReadDelay(int(size)) },
	})
	if err != nil {
		return fmt.Errorf("node %s snapshot-store: %w", n.cfg.Self.Name, err)
	}
	n.snap = st
	n.log.Info("snapshot store open", "path", path, "capacity", n.cfg.SnapshotStoreBytes, "snapshots", len(st.List()))
	return nil
}

// onSnapshotInvalidated reports a snapshot the store invalidated (store
// full, I/O error, damaged metadata). No lock held.
func (n *Node) onSnapshotInvalidated(in snapstore.Info) {
	n.mu.Lock()
	n.snapEvent(in.Name, "invalidated", fmt.Sprintf("snapshot %q is invalid: %s", in.Name, in.Reason))
	n.unlock()
}

// snapEvent queues a "snapshot" event; n.mu held.
func (n *Node) snapEvent(name, what, msg string) {
	if n.cfg.OnEvent == nil {
		return
	}
	n.evq = append(n.evq, api.Event{Time: time.Now(), Kind: "snapshot", Snapshot: name, New: what, Message: msg})
}

// preserve must run before every change of the live range [off,
// off+length): it copies what the snapshots still need. It never stops
// the write: when the copy fails (the store file, or reading the live
// device), every snapshot is invalidated, durably; if even that cannot be
// recorded, reads of every snapshot are refused from then on.
func (n *Node) preserve(off, length int64) {
	s := n.snap
	if s == nil {
		return
	}
	err := s.Preserve(context.Background(), off, length, n.readLive)
	if err == nil {
		return
	}
	n.log.Error("preserving data for the snapshots failed: invalidating every snapshot; the write goes on", "off", off, "len", length, "err", err)
	if aerr := s.Abandon(err); aerr != nil {
		n.snapshotsFailed(aerr)
	}
}

// preserveCopies says whether preserve(off, length) would copy chunks
// that a snapshot still needs. The receiver applies a small write inline
// only when it would not: a copy costs an fdatasync (two in a version-1
// store), and copies made inline, one write after the other, would hold
// every later write behind them, where the applier's workers share their
// syncs.
func (n *Node) preserveCopies(off, length int64) bool {
	return n.snap != nil && n.snap.NeedsCopy(off, length)
}

// snapshotsFailed records that the store could neither preserve a chunk a
// snapshot needs nor invalidate the snapshots: the write goes on, the
// snapshots are not to be read.
func (n *Node) snapshotsFailed(err error) {
	msg := fmt.Sprintf("the snapshot store could not preserve data a snapshot needs nor record that (%v): writes go on, reads of every "+
		"snapshot are refused; restart repd with a working store, then delete the snapshots and take them again", err)
	if !n.snapBroken.CompareAndSwap(nil, &msg) {
		return
	}
	n.log.Error("snapshot store failed", "err", err)
	n.mu.Lock()
	n.snapEvent("", "failed", msg)
	n.unlock()
}

// snapUsable says why this node cannot take a snapshot now, nil if it can.
// No lock held (it asks the store).
func (n *Node) snapUsable(name string) error {
	me := n.cfg.Self.Name
	if n.cfg.Self.Witness {
		return n.witnessRefusal("snapshot")
	}
	if n.snap == nil {
		return fmt.Errorf("%w: %w on %s: set resource.snapshot-store-size in the resource file (and restart repd)", ErrRefused, ErrSnapshotsOff, me)
	}
	if p := n.snapBroken.Load(); p != nil {
		return fmt.Errorf("%w: %s on %s", ErrRefused, *p, me)
	}
	n.mu.Lock()
	disk, detached := n.super.Disk, n.detached.Load()
	n.mu.Unlock()
	if detached || disk != diskUpToDate {
		return fmt.Errorf("%w: the disk of %s is %s: a snapshot needs an UpToDate disk", ErrRefused, me, disk)
	}
	st := n.snap.Stats()
	switch {
	case st.Failed != "":
		return fmt.Errorf("%w: the snapshot store of %s failed (%s); restart repd to reopen it", ErrRefused, me, st.Failed)
	case st.Used+st.ChunkSize > st.Capacity:
		return fmt.Errorf("%w: the snapshot store of %s is full (%d of %d bytes used): delete snapshots or raise resource.snapshot-store-size",
			ErrRefused, me, st.Used, st.Capacity)
	}
	if st.Snapshots >= snapstore.MaxSnapshots {
		return fmt.Errorf("%w: %s holds %d snapshots, the most its store can: delete one first", ErrRefused, me, st.Snapshots)
	}
	if _, err := n.snap.Get(name); err == nil {
		return fmt.Errorf("%w: %s already has a snapshot %q: delete it first or choose another name", ErrRefused, me, name)
	}
	return nil
}

// createSnapshot creates snapshot name in the store at a barrier (the
// caller's) and reports it. The live store is flushed first unless the
// caller just did (flushed), or the snapshot is lazy and the store can
// take it with the live store unsynced (snapstore.CreateLazyUnsynced): a
// flush at the barrier holds up every write behind it until the disk has
// taken everything before it (half a second under the bench's 4k QD32
// load), and a lazy snapshot is lost to a power loss anyway until the
// store's flusher has synced the live store and its copies. synced
// reports whether the live store was flushed at the barrier.
func (n *Node) createSnapshot(name string, flushed bool) (synced bool, err error) {
	if err := n.snapUsable(name); err != nil {
		return flushed, err
	}
	lazy := n.lazySnapshot(name)
	now := time.Now()
	if lazy && !flushed {
		err = n.snap.CreateLazyUnsynced(name, now)
		if err == nil {
			n.snapCreated(name)
			return false, nil
		}
		if !errors.Is(err, snapstore.ErrLiveUnsynced) {
			return false, n.createErr(err)
		}
	}
	if !flushed {
		if err := n.st.Flush(context.Background()); err != nil {
			if n.diskError(err) {
				n.detach("flush before a snapshot", err)
			}
			return false, fmt.Errorf("snapshot %q on %s: flush the disk first: %w", name, n.cfg.Self.Name, err)
		}
	}
	create := n.snap.Create
	if lazy {
		create = n.snap.CreateLazy
	}
	if err := create(name, now); err != nil {
		return true, n.createErr(err)
	}
	n.snapCreated(name)
	return true, nil
}

// lazySnapshot reports whether snapshot name, about to be taken here, is
// to be lazy (SnapshotLazy asked for it on this node).
func (n *Node) lazySnapshot(name string) bool {
	if name == "" {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lazySnaps[name]
}

// createErr is the error of a failed snapshot Create.
func (n *Node) createErr(err error) error {
	if errors.Is(err, snapstore.ErrExists) || errors.Is(err, snapstore.ErrTooMany) || errors.Is(err, snapstore.ErrFailed) {
		return fmt.Errorf("%w: on %s: %w", ErrRefused, n.cfg.Self.Name, err)
	}
	return fmt.Errorf("on %s: %w", n.cfg.Self.Name, err)
}

// snapCreated queues the event of a snapshot just created.
func (n *Node) snapCreated(name string) {
	n.mu.Lock()
	n.snapEvent(name, "created", fmt.Sprintf("snapshot %q taken on %s", name, n.cfg.Self.Name))
	n.unlock()
}

// SnapshotLazy takes snapshot name on this node only, as Snapshot does,
// as a lazy one: its copies are synced in the background, so the first
// write into each chunk after it does not wait for the store's
// fdatasync (on a Secondary, protocol C waits for that). It survives a
// restart of repd; a power loss or kernel crash within 5-10 s of its
// last copy invalidates it (snapstore's Lazy snapshots). For snapshots whose
// loss costs only time: a backup's (the next backup is then full).
func (n *Node) SnapshotLazy(ctx context.Context, name string) (api.SnapshotResult, error) {
	n.mu.Lock()
	if n.lazySnaps[name] {
		n.mu.Unlock()
		return api.SnapshotResult{Name: name, Created: []string{}},
			fmt.Errorf("%w: snapshot %q is being taken already", ErrRefused, name)
	}
	if n.lazySnaps == nil {
		n.lazySnaps = map[string]bool{}
	}
	n.lazySnaps[name] = true
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.lazySnaps, name)
		n.mu.Unlock()
	}()
	return n.Snapshot(ctx, name, nil)
}

// Snapshot takes snapshot name on the nodes listed (their names; nil:
// this node; SnapshotAll: every connected UpToDate data node) at one point
// of the write stream, and returns once each has it or failed: on the
// Primary it inserts the point itself; a Secondary connected to a Primary
// asks the Primary to; a Secondary with no Primary connected takes it at
// once, on itself only. Failures wrap ErrRefused and name the node and
// the reason; Created lists the nodes that have it either way.
func (n *Node) Snapshot(ctx context.Context, name string, nodes []string) (api.SnapshotResult, error) {
	res := api.SnapshotResult{Name: name, Created: []string{}}
	if n.cfg.Self.Witness {
		return res, n.witnessRefusal("snapshot")
	}
	if err := snapstore.ValidName(name); err != nil {
		return res, fmt.Errorf("%w: %w (the snapshot is served as NBD export %s@NAME)", ErrRefused, err, n.cfg.Resource)
	}
	all := len(nodes) == 1 && nodes[0] == SnapshotAll
	if !all {
		for i, nm := range nodes {
			if slices.Contains(nodes[:i], nm) {
				return res, fmt.Errorf("%w: node %s is listed twice", ErrRefused, nm)
			}
			if _, ok := n.byName[nm]; !ok && nm != n.cfg.Self.Name {
				return res, fmt.Errorf("%w: %q is not a node of resource %s", ErrUnknownPeer, nm, n.cfg.Resource)
			}
		}
	}
	n.mu.Lock()
	closed, role, prim := n.closed, n.role, n.primaryPeerLocked()
	n.mu.Unlock()
	switch {
	case closed:
		return res, ErrClosed
	case role == api.Primary:
		return n.snapshotPrimary(ctx, name, all, nodes, nil)
	case prim != nil:
		return n.askPrimary(ctx, name, all, nodes)
	}
	if !all && (len(nodes) > 1 || len(nodes) == 1 && nodes[0] != n.cfg.Self.Name) {
		return res, fmt.Errorf("%w: no Primary is connected to %s, so there is no write stream to take the snapshot in on other nodes; "+
			"take it on each node, or where a Primary is connected", ErrRefused, n.cfg.Self.Name)
	}
	if err := n.snapshotHere(name); err != nil {
		return res, err
	}
	res.Created = append(res.Created, n.cfg.Self.Name)
	res.Note = "no Primary is connected: taken here at once (nothing is writing)"
	return res, nil
}

// snapshotHere takes a snapshot on a Secondary with no Primary connected:
// at once, under the gate that holds off a write a Primary could apply
// meanwhile, and as an in-flight entry a write after a promotion waits for.
func (n *Node) snapshotHere(name string) error {
	if err := n.snapUsable(name); err != nil {
		return err
	}
	n.mu.Lock()
	if n.closed || n.role == api.Primary || n.demoting {
		n.mu.Unlock()
		return fmt.Errorf("%w: %s changed role meanwhile; try again", ErrRefused, n.cfg.Self.Name)
	}
	e := &journal.Entry{Kind: journal.Snapshot, Name: name, Off: 0, N: n.cfg.Size}
	e.Deps = n.inflight.Overlapping(0, n.cfg.Size, nil)
	n.inflight.Add(e)
	n.writing++
	n.mu.Unlock()
	for _, d := range e.Deps {
		<-d.LocalCh
	}
	n.snapGate.Lock()
	_, err := n.createSnapshot(name, false)
	n.snapGate.Unlock()
	n.mu.Lock()
	e.Local = true
	if e.LocalCh != nil {
		close(e.LocalCh)
	}
	n.inflight.Remove(e)
	n.endWriteLocked()
	n.unlock()
	if err == nil {
		n.log.Info("snapshot taken at once: no Primary is connected", "snapshot", name)
	}
	return err
}

// snapshotPrimary inserts a snapshot entry into the write stream for the
// nodes listed (as in Snapshot; requester, if not nil, is the Secondary
// that asked, the default target) and waits for every answer.
func (n *Node) snapshotPrimary(ctx context.Context, name string, all bool, nodes []string, requester *peer) (api.SnapshotResult, error) {
	res := api.SnapshotResult{Name: name, Created: []string{}}
	self := !all && len(nodes) == 0 && requester == nil || slices.Contains(nodes, n.cfg.Self.Name)
	if all {
		self = true
	}
	var errs []string
	if self {
		if err := n.snapUsable(name); err != nil {
			if !all {
				return res, err
			}
			errs = append(errs, reasonOf(err))
			self = false
		}
	}
	n.mu.Lock()
	if n.closed || n.role != api.Primary || n.demoting {
		n.mu.Unlock()
		return res, fmt.Errorf("%w: %s is no longer Primary (closing, or demoted meanwhile); try again", ErrRefused, n.cfg.Self.Name)
	}
	var ship uint64
	var targets []*peer
	switch {
	case all:
		for _, p := range n.peers {
			if n.snapPeerLocked(p) == nil {
				ship |= p.bit
				targets = append(targets, p)
			}
		}
	case len(nodes) == 0 && requester != nil:
		nodes = []string{requester.cfg.Name}
		fallthrough
	default:
		for _, nm := range nodes {
			if nm == n.cfg.Self.Name {
				continue
			}
			p, err := n.dataPeerLocked(nm)
			if err == nil {
				err = n.snapPeerLocked(p)
			}
			if err != nil {
				n.mu.Unlock()
				return res, err
			}
			ship |= p.bit
			targets = append(targets, p)
		}
	}
	if !self && ship == 0 {
		n.mu.Unlock()
		if len(errs) > 0 {
			return res, fmt.Errorf("%w: %s", ErrRefused, strings.Join(errs, "; "))
		}
		return res, fmt.Errorf("%w: no node can take the snapshot: none of the peers is connected, Established and UpToDate", ErrRefused)
	}
	e := &journal.Entry{Kind: journal.Snapshot, Name: name, Seq: n.nextSeq, Ship: ship, Pend: ship, Ready: true,
		Size: journal.Overhead, DoneCh: make(chan struct{})}
	n.nextSeq++
	if self {
		// The barrier: after every earlier entry, before every later one.
		e.Off, e.N = 0, n.cfg.Size
		e.Deps = n.inflight.Overlapping(0, n.cfg.Size, nil)
		n.inflight.Add(e)
		n.writing++ // Close and demote wait for the local part
	} else {
		e.Local, e.LocalCh = true, journal.ClosedCh
	}
	w := &snapWait{ship: ship, results: map[uint64]string{}}
	if n.snapWaits == nil {
		n.snapWaits = map[uint64]*snapWait{}
	}
	n.snapWaits[e.Seq] = w
	n.journal.Push(e)
	n.wakeLocked(ship)
	n.mu.Unlock()
	n.log.Info("snapshot point in the write stream", "snapshot", name, "seq", e.Seq, "here", self, "peers", len(targets))

	if self {
		for _, d := range e.Deps {
			<-d.LocalCh
		}
		e.Deps = nil
		_, err := n.createSnapshot(name, false)
		n.mu.Lock()
		e.Local = true
		if e.LocalCh != nil {
			close(e.LocalCh)
		}
		n.inflight.Remove(e)
		n.maybeDoneLocked(e)
		n.journal.Trim()
		n.endWriteLocked()
		n.unlock()
		if err != nil {
			errs = append(errs, reasonOf(err))
		} else {
			res.Created = append(res.Created, n.cfg.Self.Name)
		}
	}
	var cerr error
	select {
	case <-e.DoneCh:
	case <-ctx.Done():
		cerr = ctx.Err()
	}
	n.mu.Lock()
	delete(n.snapWaits, e.Seq)
	for _, p := range targets {
		r, answered := w.results[p.bit]
		switch {
		case answered && r == "":
			res.Created = append(res.Created, p.cfg.Name)
		case answered:
			errs = append(errs, p.cfg.Name+": "+r)
		case cerr != nil:
			errs = append(errs, fmt.Sprintf("%s: no answer yet (%v); repctl snapshot list on it tells whether it has the snapshot", p.cfg.Name, cerr))
		case e.Acked&p.bit == 0:
			errs = append(errs, p.cfg.Name+": the connection ended before it took the snapshot")
		default:
			errs = append(errs, p.cfg.Name+": it acknowledged the writes after the snapshot without answering for it")
		}
	}
	n.mu.Unlock()
	if len(errs) == 0 {
		return res, nil
	}
	msg := strings.Join(errs, "; ")
	if len(res.Created) > 0 {
		msg = fmt.Sprintf("snapshot %q created on %s only: %s", name, strings.Join(res.Created, ", "), msg)
	}
	if cerr != nil {
		return res, fmt.Errorf("%s: %w", msg, cerr)
	}
	return res, fmt.Errorf("%w: %s", ErrRefused, msg)
}

// reasonOf is err's text without the "refused: " of ErrRefused, to be
// joined with others under one.
func reasonOf(err error) string {
	return strings.TrimPrefix(err.Error(), ErrRefused.Error()+": ")
}

// snapPeerLocked says why peer p cannot take a snapshot in the write
// stream now; n.mu held.
func (n *Node) snapPeerLocked(p *peer) error {
	switch {
	case p.conn != api.Connected || p.sess == nil:
		return fmt.Errorf("%w: peer %s is not connected", ErrRefused, p.cfg.Name)
	case p.features.Load()&protocol.FeatureSnapshot == 0:
		return fmt.Errorf("%w: peer %s runs a repd that cannot take snapshots; upgrade it", ErrRefused, p.cfg.Name)
	case p.peerDisk != diskUpToDate:
		return fmt.Errorf("%w: the disk of peer %s is %s: a snapshot needs an UpToDate disk", ErrRefused, p.cfg.Name, p.peerDisk)
	case p.repl != api.Established || n.recvMask&p.bit == 0:
		return fmt.Errorf("%w: the replication with peer %s is %s, not Established: it does not follow the write stream now; "+
			"wait until it is in sync (repctl wait-sync %s)", ErrRefused, p.cfg.Name, p.repl, p.cfg.Name)
	}
	return nil
}

// onSnapshotAck records peer p's answer for the snapshot entry seq. It
// comes before p's cumulative ack covers seq (applySnapshot).
func (n *Node) onSnapshotAck(p *peer, seq uint64, failed bool, reason string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if w := n.snapWaits[seq]; w != nil && w.ship&p.bit != 0 {
		if failed && reason == "" {
			reason = "refused"
		}
		if !failed {
			reason = ""
		}
		w.results[p.bit] = reason
	}
}

// primaryPeerLocked is the connected peer that is Primary, or nil; n.mu
// held.
func (n *Node) primaryPeerLocked() *peer {
	for _, p := range n.peers {
		if p.conn == api.Connected && p.sess != nil && p.peerRole == api.Primary {
			return p
		}
	}
	return nil
}

// askPrimary sends the connected Primary a snapshot request and waits for
// its answer.
func (n *Node) askPrimary(ctx context.Context, name string, all bool, nodes []string) (api.SnapshotResult, error) {
	res := api.SnapshotResult{Name: name, Created: []string{}}
	n.mu.Lock()
	p := n.primaryPeerLocked()
	if p == nil {
		n.mu.Unlock()
		return res, fmt.Errorf("%w: the Primary went away meanwhile; try again", ErrRefused)
	}
	if p.features.Load()&protocol.FeatureSnapshot == 0 {
		n.mu.Unlock()
		return res, fmt.Errorf("%w: the Primary %s runs a repd that cannot take snapshots; upgrade it", ErrRefused, p.cfg.Name)
	}
	n.mu.Unlock()
	if !all && (len(nodes) == 0 || slices.Contains(nodes, n.cfg.Self.Name)) {
		// Refused here before it becomes a point of the stream.
		if err := n.snapUsable(name); err != nil {
			return res, err
		}
	}
	n.mu.Lock()
	if p.sess == nil || p.conn != api.Connected {
		n.mu.Unlock()
		return res, fmt.Errorf("%w: the connection to the Primary %s ended; try again", ErrRefused, p.cfg.Name)
	}
	req := protocol.SnapshotReq{Name: name, All: all}
	for _, nm := range nodes {
		if all {
			break
		}
		if nm == n.cfg.Self.Name {
			req.Nodes = append(req.Nodes, n.cfg.Self.ID)
		} else {
			req.Nodes = append(req.Nodes, n.byName[nm].cfg.ID)
		}
	}
	if len(req.Nodes) == 0 && !all {
		req.Nodes = []uint8{n.cfg.Self.ID}
	}
	if n.snapReqs == nil {
		n.snapReqs = map[uint64]*snapRequest{}
	}
	n.snapToken++
	token := n.snapToken
	r := &snapRequest{p: p, ch: make(chan snapReply, 1)}
	n.snapReqs[token] = r
	s := p.sess
	s.queue(ctrlMsg{t: protocol.TypeSnapshotReq, seq: token, payload: req.Append(nil)})
	n.mu.Unlock()
	var (
		rep snapReply
		err error
	)
	select {
	case rep = <-r.ch:
	case <-s.ctx.Done():
		err = fmt.Errorf("%w: the connection to the Primary %s ended before it answered; repctl snapshot list tells whether the snapshot was taken",
			ErrRefused, p.cfg.Name)
	case <-ctx.Done():
		err = ctx.Err()
	}
	n.mu.Lock()
	delete(n.snapReqs, token)
	n.mu.Unlock()
	if err != nil {
		return res, err
	}
	if rep.failed {
		return res, fmt.Errorf("%w: %s (answer of the Primary %s)", ErrRefused, rep.text, p.cfg.Name)
	}
	for _, nm := range strings.Split(rep.text, ",") {
		if nm != "" {
			res.Created = append(res.Created, nm)
		}
	}
	res.Note = "taken in the write stream of the Primary " + p.cfg.Name
	return res, nil
}

// onSnapshotReply delivers the Primary's answer to our request token.
func (n *Node) onSnapshotReply(p *peer, token uint64, failed bool, text string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if r := n.snapReqs[token]; r != nil && r.p == p {
		select {
		case r.ch <- snapReply{failed: failed, text: text}:
		default:
		}
	}
}

// onSnapshotReq serves a Secondary's snapshot request on the Primary: at
// most maxSnapshotRequests of a peer at once, each in its own goroutine
// (waiting for the answers must not hold up the receiver).
func (s *session) onSnapshotReq(token uint64, payload []byte) error {
	p, n := s.p, s.p.n
	var req protocol.SnapshotReq
	if err := req.Decode(payload); err != nil {
		return p.readErr("snapshot request", err)
	}
	reply := func(failed bool, text string) {
		var f protocol.Flags
		if failed {
			f = protocol.FlagSnapshotFailed
		}
		if len(text) > protocol.MaxReason {
			text = text[:protocol.MaxReason]
		}
		s.queue(ctrlMsg{t: protocol.TypeSnapshotReply, f: f, seq: token, payload: []byte(text)})
	}
	if p.snapReqs.Add(1) > maxSnapshotRequests {
		p.snapReqs.Add(-1)
		reply(true, fmt.Sprintf("%s is serving %d snapshot requests of %s already; try again when they are answered",
			n.cfg.Self.Name, maxSnapshotRequests, p.cfg.Name))
		return nil
	}
	var nodes []string
	bad := ""
	if req.All {
		nodes = []string{SnapshotAll}
	}
	for _, id := range req.Nodes {
		nm := n.nodeName(id)
		if nm == "" {
			bad = fmt.Sprintf("node id %d is not a data node of resource %s", id, n.cfg.Resource)
			break
		}
		nodes = append(nodes, nm)
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer p.snapReqs.Add(-1)
		if bad != "" {
			reply(true, bad)
			return
		}
		n.log.Info("snapshot requested by a Secondary", "peer", p.cfg.Name, "snapshot", req.Name, "nodes", nodes)
		res, err := n.snapshotPrimary(s.ctx, req.Name, req.All, nodes, p)
		if err != nil {
			reply(true, reasonOf(err))
			return
		}
		reply(false, strings.Join(res.Created, ","))
	}()
	return nil
}

// nodeName is the name of the data node with id (this one or a peer), ""
// if there is none.
func (n *Node) nodeName(id uint8) string {
	if id == n.cfg.Self.ID {
		return n.cfg.Self.Name
	}
	for _, p := range n.peers {
		if p.cfg.ID == id {
			return p.cfg.Name
		}
	}
	return ""
}

// applySnapshot takes the snapshot of a Snapshot frame on a Secondary: the
// applier calls it at the barrier, with the store flushed if it.flushed
// (flushErr: the flush failed). A lazy snapshot is taken without the
// flush where the snapshot store allows (createSnapshot); it.flushed then
// says whether the store was flushed after all, which the barrier's ack
// tells the Primary. The answer is queued before the applier acknowledges
// the sequence past it, and the sender reads its ack before the control
// frames, so the Primary has the answer before the ack.
func (a *applier) applySnapshot(it *aitem, flushErr error) {
	n := a.n
	var err error
	if flushErr != nil {
		err = fmt.Errorf("on %s: flush before the snapshot: %w", n.cfg.Self.Name, flushErr)
	} else {
		it.flushed, err = n.createSnapshot(it.snap, it.flushed)
	}
	m := ctrlMsg{t: protocol.TypeSnapshotAck, seq: it.seq}
	if err != nil {
		n.log.Warn("snapshot in the write stream not taken", "snapshot", it.snap, "peer", a.s.p.cfg.Name, "err", err)
		m.f = protocol.FlagSnapshotFailed
		msg := reasonOf(err)
		if len(msg) > protocol.MaxReason {
			msg = msg[:protocol.MaxReason]
		}
		m.payload = []byte(msg)
	} else {
		n.log.Info("snapshot taken in the write stream", "snapshot", it.snap, "primary", a.s.p.cfg.Name, "seq", it.seq)
	}
	a.s.queue(m)
}

// Snapshots lists this node's snapshots, oldest first (none when
// snapshots are off).
func (n *Node) Snapshots() []SnapshotInfo {
	if n.snap == nil {
		return nil
	}
	list := n.snap.List()
	out := make([]SnapshotInfo, len(list))
	for i, in := range list {
		out[i] = infoOf(in)
	}
	return out
}

// SnapshotList is Snapshots for the admin API, with the store's figures.
func (n *Node) SnapshotList() api.SnapshotList {
	l := api.SnapshotList{Resource: n.cfg.Resource, Node: n.cfg.Self.Name, Snapshots: []api.SnapshotInfo{}}
	if n.snap == nil {
		return l
	}
	st := n.snap.Stats()
	l.Enabled, l.CapacityBytes, l.UsedBytes, l.Failed = true, st.Capacity, st.Used, st.Failed
	l.PrewriteLeftBytes = st.PrewriteLeft
	if p := n.snapBroken.Load(); p != nil && l.Failed == "" {
		l.Failed = *p
	}
	now := time.Now()
	for _, in := range n.Snapshots() {
		si := api.SnapshotInfo{Name: in.Name, Node: n.cfg.Self.Name, Created: in.Created, AgeSeconds: int64(now.Sub(in.Created).Seconds()),
			Bytes: in.Bytes, ExclusiveBytes: in.Exclusive, Valid: in.Valid, Lazy: in.Lazy, Reason: in.Reason}
		if !in.Valid {
			t := in.Invalidated
			si.Invalidated = &t
		}
		l.Snapshots = append(l.Snapshots, si)
	}
	return l
}

// DeleteSnapshot deletes snapshot name of this node, valid or not.
func (n *Node) DeleteSnapshot(name string) error {
	if n.cfg.Self.Witness {
		return n.witnessRefusal("snapshot delete")
	}
	if n.snap == nil {
		return fmt.Errorf("%w: %w on %s: there is nothing to delete", ErrRefused, ErrSnapshotsOff, n.cfg.Self.Name)
	}
	if err := n.snap.Delete(name); err != nil {
		if errors.Is(err, snapstore.ErrNotFound) {
			return fmt.Errorf("%w: %s has no snapshot %q (repctl snapshot list shows them)", ErrRefused, n.cfg.Self.Name, name)
		}
		return fmt.Errorf("on %s: %w", n.cfg.Self.Name, err)
	}
	n.mu.Lock()
	n.snapEvent(name, "deleted", fmt.Sprintf("snapshot %q deleted on %s", name, n.cfg.Self.Name))
	n.unlock()
	return nil
}

// snapReadable says why snapshots cannot be read now.
func (n *Node) snapReadable() error {
	if n.snap == nil {
		return fmt.Errorf("%w on %s", ErrSnapshotsOff, n.cfg.Self.Name)
	}
	if p := n.snapBroken.Load(); p != nil {
		return fmt.Errorf("%s on %s (%w)", *p, n.cfg.Self.Name, syscall.EIO)
	}
	if n.detached.Load() {
		return fmt.Errorf("snapshot read on %s: the local disk Failed, and a snapshot reads its unchanged blocks from it (%w)", n.cfg.Self.Name, syscall.EIO)
	}
	return nil
}

// SnapshotDevice is a read-only device over one snapshot of this node:
// the NBD export RESOURCE@NAME. It implements nbd.Device; writes are
// refused (EPERM) and Flush does nothing.
type SnapshotDevice struct {
	n    *Node
	name string
}

// SnapshotDevice opens snapshot name for reading. It fails with
// ErrSnapshotNotFound, ErrSnapshotInvalid or ErrSnapshotsOff (and the
// reads of a device fail the same way once the snapshot is deleted or
// invalidated).
func (n *Node) SnapshotDevice(name string) (*SnapshotDevice, error) {
	if err := n.snapReadable(); err != nil {
		return nil, err
	}
	in, err := n.snap.Get(name)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q on %s: %w", name, n.cfg.Self.Name, err)
	}
	if !in.Valid {
		return nil, &snapstore.InvalidError{Name: name, Reason: in.Reason}
	}
	return &SnapshotDevice{n: n, name: name}, nil
}

// Name is the snapshot's name.
func (d *SnapshotDevice) Name() string { return d.name }

// Size is the device size.
func (d *SnapshotDevice) Size() int64 { return d.n.cfg.Size }

// ReadAt reads the snapshot's image of [off, off+len(p)).
func (d *SnapshotDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	n := d.n
	if err := n.snapReadable(); err != nil {
		return err
	}
	if n.snapPacing() {
		if err := ctxtime.Sleep(ctx, n.snapReadDelay(len(p))); err != nil {
			return err
		}
	}
	err := n.snap.ReadAt(ctx, d.name, p, off, n.readLive)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, snapstore.ErrRange):
		return fmt.Errorf("%w (%w)", err, syscall.EINVAL)
	case ctx.Err() != nil:
		return err
	}
	return fmt.Errorf("%w (%w)", err, syscall.EIO)
}

// snapPacing reports whether snapshot reads yield to writes: the node has
// snapshots and cfg.SnapshotReadMinRate is set.
func (n *Node) snapPacing() bool { return n.snap != nil && n.cfg.SnapshotReadMinRate > 0 }

// snapBusyWindow: a write (local or applied) within this long makes
// snapshot reads yield. Shorter than resync's pace.AppBusyWindow: a
// backup is a reader the application does not wait for, and 50 ms
// without a write means the application is not writing now (a loaded
// database writes every few milliseconds); it yields again at the next
// read once writes resume.
const snapBusyWindow = 50 * time.Millisecond

// snapReadDelay takes n bytes of snapshot reads from the shared bucket and
// says how long to wait first: at most cfg.SnapshotReadMinRate on average
// while the node writes (a local write or an applied replicated one within
// snapBusyWindow), unpaced otherwise. Backups on a Secondary then leave
// its disk and CPU to the writes protocol C waits for.
func (n *Node) snapReadDelay(size int) time.Duration {
	now := time.Now()
	last := max(n.lastAppWrite.Load(), n.lastPeerWrite.Load())
	rate := int64(0)
	if now.Sub(time.Unix(0, last)) < snapBusyWindow {
		rate = n.cfg.SnapshotReadMinRate
	}
	n.snapPaceMu.Lock()
	defer n.snapPaceMu.Unlock()
	return n.snapBucket.Delay(now, rate, int64(size))
}

// WriteAt refuses: a snapshot is read-only.
func (d *SnapshotDevice) WriteAt(context.Context, []byte, int64, bool) error {
	return fmt.Errorf("write to snapshot %q: %w (%w)", d.name, ErrReadOnly, syscall.EPERM)
}

// Flush does nothing: a snapshot does not change.
func (d *SnapshotDevice) Flush(context.Context) error { return nil }

// Changed calls fn, in ascending order, for each extent of [off,
// off+length) written after snapshot from and before this one: the NBD
// context qemu:dirty-bitmap:FROM of this export. from must be older.
func (d *SnapshotDevice) Changed(from string, off, length int64, fn func(off, length int64) bool) error {
	return d.n.ChangedRange(from, d.name, off, length, fn)
}

// Allocation calls fn, in ascending order, for the extents of [off,
// off+length) of the snapshot: data, or a hole (false) that reads as
// zeroes: NBD's base:allocation. A block is a hole when the live device
// had a hole there and the block was not written since the snapshot (the
// live device is asked first: a block not written by the time the changes
// are read was a hole in the snapshot too).
func (d *SnapshotDevice) Allocation(off, length int64, fn func(off, length int64, data bool) bool) error {
	n := d.n
	if err := n.snapReadable(); err != nil {
		return err
	}
	if off < 0 || length < 0 || off+length > n.cfg.Size {
		return fmt.Errorf("allocation %d+%d: beyond the device size %d (%w)", off, length, n.cfg.Size, syscall.EINVAL)
	}
	in, err := n.snap.Get(d.name)
	if err != nil {
		return fmt.Errorf("snapshot %q on %s: %w", d.name, n.cfg.Self.Name, err)
	}
	if !in.Valid {
		return &snapstore.InvalidError{Name: d.name, Reason: in.Reason}
	}
	return n.allocation(off, length, d.name, fn)
}

// ChangedRange calls fn, in ascending order, for each extent of [off,
// off+length) written after snapshot from and before snapshot to ("": the
// live device now): incremental backups' block-status query. After an
// unclean shutdown the blocks written since the newest snapshot are known
// per 64 KiB chunk (more, never fewer). fn returns false to stop.
func (n *Node) ChangedRange(from, to string, off, length int64, fn func(off, length int64) bool) error {
	if n.snap == nil {
		return fmt.Errorf("%w on %s", ErrSnapshotsOff, n.cfg.Self.Name)
	}
	if p := n.snapBroken.Load(); p != nil {
		return fmt.Errorf("%s on %s (%w)", *p, n.cfg.Self.Name, syscall.EIO)
	}
	err := n.snap.ChangedRange(from, to, off, length, func(e snapstore.Extent) bool { return fn(e.Off, e.Len) })
	if errors.Is(err, snapstore.ErrRange) {
		return fmt.Errorf("%w (%w)", err, syscall.EINVAL)
	}
	return err
}

// Allocator is a Store that can tell data from holes (FileStore: lseek
// SEEK_DATA/SEEK_HOLE).
type Allocator interface {
	// Allocation calls fn, in ascending order, for the extents of [off,
	// off+n): data, or a hole (false) that reads as zeroes; fn returns
	// false to stop.
	Allocation(off, n int64, fn func(off, n int64, data bool) bool) error
}

// Allocation calls fn, in ascending order, for the extents of [off,
// off+length) of the live device: data, or a hole (false) that reads as
// zeroes: NBD's base:allocation. A store that cannot tell reports data;
// a disk that is not UpToDate (whose reads are refused) is an error.
func (n *Node) Allocation(off, length int64, fn func(off, length int64, data bool) bool) error {
	if off < 0 || length < 0 || off+length > n.cfg.Size {
		return fmt.Errorf("allocation %d+%d: beyond the device size %d (%w)", off, length, n.cfg.Size, syscall.EINVAL)
	}
	if n.cfg.Self.Witness {
		return n.witnessRefusal("block status")
	}
	n.mu.Lock()
	disk := n.super.Disk
	n.mu.Unlock()
	if disk != diskUpToDate {
		// A hole is a promise that reads return zeroes: not on a disk
		// whose reads are refused.
		return fmt.Errorf("block status on %s: local disk is %s, its data is not consistent; ask the Primary (%w)", n.cfg.Self.Name, disk, syscall.EIO)
	}
	return n.allocation(off, length, "", fn)
}

// allocWindow is how much of the device one round of allocation merges.
const allocWindow = 64 << 20

// allocation reports the live device's holes and data, and with snap
// every block written since that snapshot as data.
func (n *Node) allocation(off, length int64, snap string, fn func(off, length int64, data bool) bool) error {
	al, ok := n.st.(Allocator)
	if !ok {
		if length > 0 {
			fn(off, length, true)
		}
		return nil
	}
	var holes, changed [][2]int64
	emit := newExtentEmitter(fn)
	for w := off; w < off+length; w += allocWindow {
		wn := min(allocWindow, off+length-w)
		holes, changed = holes[:0], changed[:0]
		if err := al.Allocation(w, wn, func(o, k int64, data bool) bool {
			if !data {
				holes = append(holes, [2]int64{o, o + k})
			}
			return true
		}); err != nil {
			return fmt.Errorf("allocation of %d+%d: %w", w, wn, err)
		}
		if snap != "" && len(holes) > 0 {
			if err := n.ChangedRange(snap, "", w, wn, func(o, k int64) bool {
				changed = append(changed, [2]int64{o, o + k})
				return true
			}); err != nil {
				return err
			}
		}
		// Holes minus the changed blocks stay holes; the rest is data.
		pos := w
		j := 0
		for _, h := range holes {
			lo := h[0]
			for lo < h[1] {
				for j < len(changed) && changed[j][1] <= lo {
					j++
				}
				hi := h[1]
				if j < len(changed) && changed[j][0] < hi {
					if changed[j][0] <= lo {
						lo = min(changed[j][1], h[1])
						continue
					}
					hi = changed[j][0]
				}
				if !emit.add(pos, lo-pos, true) || !emit.add(lo, hi-lo, false) {
					return nil
				}
				pos, lo = hi, hi
			}
		}
		if !emit.add(pos, w+wn-pos, true) {
			return nil
		}
	}
	emit.flush()
	return nil
}

// extentEmitter merges adjacent extents of the same kind before fn sees
// them.
type extentEmitter struct {
	fn      func(off, n int64, data bool) bool
	off, n  int64
	data    bool
	stopped bool
}

func newExtentEmitter(fn func(off, n int64, data bool) bool) *extentEmitter {
	return &extentEmitter{fn: fn}
}

// add queues an extent; false once fn asked to stop.
func (e *extentEmitter) add(off, n int64, data bool) bool {
	if e.stopped {
		return false
	}
	if n <= 0 {
		return true
	}
	if e.n > 0 && e.data == data && e.off+e.n == off {
		e.n += n
		return true
	}
	if e.n > 0 && !e.fn(e.off, e.n, e.data) {
		e.stopped = true
		return false
	}
	e.off, e.n, e.data = off, n, data
	return true
}

func (e *extentEmitter) flush() {
	if !e.stopped && e.n > 0 {
		e.fn(e.off, e.n, e.data)
	}
}
