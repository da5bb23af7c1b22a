package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/config"
	"github.com/repd/repd/internal/bootid"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/authlimit"
	"github.com/repd/repd/replica/internal/decide"
	"github.com/repd/repd/replica/internal/journal"
	"github.com/repd/repd/replica/internal/pace"
	"github.com/repd/repd/replica/internal/snapstore"
)

// Node is one node's replica of a resource.
type Node struct {
	cfg       Config
	st        Store
	meta      *bitmap.Meta
	log       *slog.Logger
	codec     protocol.Codec
	pullAhead bool

	// peers are the nodes this one exchanges data with; all adds the
	// vote-only ones (witnesses, or on a witness every node; witness.go).
	peers  []*peer
	all    []*peer
	byName map[string]*peer

	mu             sync.Mutex
	cond           *sync.Cond    // writes draining (Close, demote)
	roomq          []*roomWaiter // starts waiting for journal room (write.go)
	super          bitmap.Superblock
	role           api.Role
	demoting       bool
	promoting      *promoteWait // our promote request, waiting for the peers (promote.go)
	grant          *grant       // a peer's promotion we granted
	closed         bool
	crashedPrimary bool
	nextSeq        uint64
	journal        journal.Log
	inflight       journal.Inflight // entries not yet local (overlap checks)
	writing        int              // application writes between submit and completion
	writes         int64
	recvMask       uint64        // peers that receive the primary's writes (decide.Receiving)
	recvAtomic     atomic.Uint64 // recvMask, for the appliers
	markMu         sync.RWMutex  // appliers' marks (read) vs settleLocked (write)
	evq            []api.Event
	authLim        authlimit.Limiter // incoming handshakes after authentication failures
	lastAppWrite   atomic.Int64      // unix nanos of the last application write (resync yields)
	detached       atomic.Bool       // the local disk failed (on-io-error detach): Failed, not used
	applied        appliedRing       // a Secondary's recent writes other nodes may lack (peerseq.go)
	quorum         quorumState       // votes, lease, promise (quorum.go)
	lastApplied    atomic.Uint64     // the last Primary's sequence number applied here (election.go)
	lastAppliedBy  atomic.Uint32     // that Primary's node id
	done           []doneWrite       // writes completed under n.mu, to report once it is released (async.go)

	// Snapshots (snapshot.go): the store (nil when off), how preserve
	// reads the live device, why reads of snapshots are refused (the store
	// could not preserve), the gate between applied writes and a snapshot
	// taken with no Primary connected; under mu the answers awaited for
	// snapshot entries (by seq) and for requests to the Primary (by token).
	snap       *snapstore.Store
	readLive   snapstore.ReadFunc
	snapBroken atomic.Pointer[string]
	snapGate   sync.RWMutex
	snapWaits  map[uint64]*snapWait
	snapReqs   map[uint64]*snapRequest
	snapToken  uint64
	lazySnaps  map[string]bool // SnapshotLazy in progress: names to take lazy here
	// Snapshot reads yield to writes (cfg.SnapshotReadMinRate,
	// snapPacing): lastPeerWrite is the last replicated write applied
	// here (unix nanos; lastAppWrite the last local one); snapBucket,
	// under snapPaceMu, paces the reads of every export.
	lastPeerWrite atomic.Int64
	snapPaceMu    sync.Mutex
	snapBucket    pace.Bucket

	evMu sync.Mutex // serializes OnEvent calls

	runCtx    context.Context
	runCancel context.CancelFunc
	running   atomic.Bool
	wg        sync.WaitGroup
	ln        net.Listener
}

// Open opens (or creates) the meta file and returns a Node over st. It
// starts no goroutines; call Run.
func Open(cfg Config, st Store) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.Self.Witness {
		return openWitness(cfg)
	}
	if cfg.Size <= 0 || cfg.Size != st.Size() {
		return nil, fmt.Errorf("size %d does not match the backing store's %d bytes", cfg.Size, st.Size())
	}
	n := &Node{
		cfg:       cfg,
		st:        st,
		log:       cfg.Logger.With("resource", cfg.Resource, "node", cfg.Self.Name),
		codec:     cfg.Compression,
		pullAhead: cfg.OnCongestion == config.CongestionPullAhead,
		byName:    map[string]*peer{},
		nextSeq:   1,
	}
	n.init()
	m, created, err := bitmap.OpenOrCreateWrapped(cfg.MetaPath, cfg.identity(), cfg.WrapMeta)
	if err != nil {
		return nil, fmt.Errorf("meta data %s: %w", cfg.MetaPath, err)
	}
	// Before anything is written to the meta file: a refused start
	// leaves it as it was.
	if fresh, ok := st.(interface{ Created() bool }); ok && fresh.Created() && !created {
		if sb := m.Superblock(); holdsData(sb) {
			m.Close()
			return nil, fmt.Errorf("%w: the backing store did not exist and was created empty, but meta file %s describes data (disk %s, generation %s): "+
				"the data is gone (a replaced or wiped disk?). To start this node over and take a full sync from a peer, run "+
				"repctl create-md --force --config FILE --node %s; if the data is elsewhere, point disk at it",
				ErrDataGone, cfg.MetaPath, sb.Disk, api.FormatUUID(sb.GI.Current), cfg.Self.Name)
		}
	}
	n.meta = m
	m.SyncDataBeforeEvict(func() error { return n.st.Flush(context.Background()) })
	prev := m.Superblock()
	boot := bootid.ID()
	if cfg.bootID != nil {
		boot = cfg.bootID()
	}
	err = m.UpdateSuperblock(func(sb *bitmap.Superblock) {
		for _, p := range n.peers {
			if _, e := sb.AssignSlot(p.cfg.ID); e != nil && err == nil {
				err = e
			}
		}
		sb.Flags &^= bitmap.FlagCleanShutdown
		sb.BootID = boot
	})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("meta data %s: %w", cfg.MetaPath, err)
	}
	n.super = m.Superblock()
	for _, p := range n.peers {
		p.slot = n.super.SlotOf(p.cfg.ID)
		p.bitmap = m.Bitmap(p.slot)
	}
	if n.super.Disk == diskFailed {
		n.log.Warn("the local disk had failed: attaching it again as Outdated; the Primary resyncs what it missed (repctl invalidate for a full resync)")
		if err := n.persist(func(sb *bitmap.Superblock) { sb.Disk = diskOutdated }); err != nil {
			m.Close()
			return nil, err
		}
	}
	if n.super.Flags&bitmap.FlagPrimary != 0 {
		// Crashed as Primary: whatever was in flight may be missing on
		// the peers; the activity log says where.
		n.crashedPrimary = true
		marked := m.MarkHotOutOfSync()
		n.log.Warn("node crashed as Primary: marked the activity log's hot extents out of sync", "bytes", marked)
		if err := n.persist(func(sb *bitmap.Superblock) { sb.Flags &^= bitmap.FlagPrimary }); err != nil {
			m.Close()
			return nil, err
		}
	} else if !created && systemRestarted(prev, boot) {
		if err := n.recoverLostWrites(); err != nil {
			m.Close()
			return nil, err
		}
	}
	if err := n.openSnapshots(); err != nil {
		m.Close()
		return nil, err
	}
	n.log.Info("opened", "created", created, "disk", n.super.Disk, "current", api.FormatUUID(n.super.GI.Current), "protocol", cfg.Protocol)
	return n, nil
}

// ErrDataGone is returned by Open when the backing store is new but the
// meta data says the node held data: trusting it would serve zeroes as the
// resource's data and resync only what the bitmaps name.
var ErrDataGone = errors.New("backing store holds none of the data its meta file describes")

// holdsData: the meta data describes data on the backing store (anything
// but a disk that never finished its first sync).
func holdsData(sb bitmap.Superblock) bool {
	return sb.GI.Current != 0 || sb.Disk != diskInconsistent
}

// systemRestarted reports whether the run that last opened the meta file
// (superblock prev) ended without a clean close and the system went down
// with it (a power loss, a kernel crash): the boot ID changed, or either
// is unknown. A crash of the process alone leaves the page cache, with
// every write the node made, to the kernel.
func systemRestarted(prev bitmap.Superblock, boot [16]byte) bool {
	if prev.Flags&bitmap.FlagCleanShutdown != 0 {
		return false
	}
	var zero [16]byte
	return boot == zero || prev.BootID == zero || prev.BootID != boot
}

// recoverLostWrites handles a node that went down with its system while not
// Primary: it acknowledged replicated writes once they were in its page
// cache, and those its disk had not taken are gone. Each lies in an extent
// of the activity log (apply activates them, and an extent leaves the log
// only after the data is synced), so the hot extents are marked out of sync
// toward every peer, and an UpToDate disk becomes Outdated: the node is not
// promoted on data it may have lost until a Primary resyncs those extents
// (promote --force overrides, as for any Outdated disk).
func (n *Node) recoverLostWrites() error {
	marked := n.meta.MarkHotOutOfSync()
	if marked == 0 {
		return nil
	}
	outdate := n.super.Disk == diskUpToDate
	n.log.Warn("the system went down while this node was Secondary: marked the activity log's hot extents out of sync (writes acknowledged but not yet on disk may be lost there); an UpToDate disk is Outdated until a Primary resyncs them",
		"bytes", marked, "disk", n.super.Disk, "outdated", outdate)
	if !outdate {
		return nil
	}
	return n.persist(func(sb *bitmap.Superblock) { sb.Disk = diskOutdated })
}

// init builds the node's peers and the state every node has. A data node
// exchanges data with every data peer; witnesses are vote-only peers.
func (n *Node) init() {
	n.cond = sync.NewCond(&n.mu)
	n.journal.Max = n.cfg.JournalBytes
	n.quorum.lastPrimary.Store(int64(mono())) // a promise made before a restart still runs
	n.quorum.changed = make(chan struct{})
	n.quorum.leaseUntil.Store(int64(decide.Forever))
	if n.quorumOn() {
		n.quorum.leaseUntil.Store(0)
	}
	for _, pc := range n.cfg.Peers {
		p := &peer{n: n, idx: -1, slot: -1, cfg: pc, conn: api.Connecting,
			incoming: make(chan *protocol.Conn, 1), kick: make(chan struct{}, 1)}
		if pc.Witness || n.cfg.Self.Witness {
			p.voteOnly = true
		} else {
			p.idx = len(n.peers)
			p.bit = 1 << uint(p.idx)
			n.peers = append(n.peers, p)
		}
		n.all = append(n.all, p)
		n.byName[pc.Name] = p
	}
}

// openWitness opens a witness: no store, no meta file but its state file;
// its disk is Diskless and it is Secondary for good.
func openWitness(cfg Config) (*Node, error) {
	n := &Node{cfg: cfg, log: cfg.Logger.With("resource", cfg.Resource, "node", cfg.Self.Name), byName: map[string]*peer{}, nextSeq: 1}
	n.init()
	n.super.Disk = diskless
	if err := n.loadWitnessState(); err != nil {
		return nil, err
	}
	n.log.Info("opened as witness", "known_generation", api.FormatUUID(n.quorum.known))
	return n, nil
}

// persist applies fn to the superblock durably and refreshes the copy.
// Called with n.mu held (or before Run).
func (n *Node) persist(fn func(*bitmap.Superblock)) error {
	if err := n.meta.UpdateSuperblock(func(sb *bitmap.Superblock) {
		fn(sb)
		if n.detached.Load() {
			sb.Disk = diskFailed // until a restart with a working disk
		}
	}); err != nil {
		// The superblock could not be made durable: the node cannot
		// record its state any more (diskfail.go).
		n.detachLocked("meta data update", err)
		return fmt.Errorf("persist meta data: %w (local disk detached)", err)
	}
	old, gen := n.super.Disk, n.super.GI.Current
	n.super = n.meta.Superblock()
	if old != n.super.Disk {
		n.event("disk", "", old.String(), n.super.Disk.String(), "")
	}
	if gen != n.super.GI.Current && n.role == api.Primary {
		// The lease is for a generation: a new one must be acknowledged
		// by a quorum before any write completes in it (quorum.go).
		n.resetLeaseLocked()
	}
	if old != n.super.Disk || gen != n.super.GI.Current {
		n.tellVotersLocked()
		n.recomputeLeaseLocked() // this node's own vote may have changed
	}
	return nil
}

// event queues an event; n.mu held. Events are delivered by flushEvents.
func (n *Node) event(kind, peer, old, new, msg string) {
	if n.cfg.OnEvent == nil {
		return
	}
	n.evq = append(n.evq, api.Event{Time: time.Now(), Kind: kind, Peer: peer, Old: old, New: new, Message: msg})
}

// unlock releases n.mu, delivers queued events and completes the writes
// that completed under it (completeLocked).
func (n *Node) unlock() {
	if len(n.done) != 0 {
		n.unlockDone()
		return
	}
	if len(n.evq) == 0 {
		n.mu.Unlock()
		return
	}
	n.unlockEvents()
}

// unlockEvents releases n.mu and delivers the queued events, in order
// with other goroutines' deliveries.
func (n *Node) unlockEvents() {
	evs := n.evq
	n.evq = nil
	n.evMu.Lock()
	n.mu.Unlock()
	for _, e := range evs {
		n.cfg.OnEvent(e)
	}
	n.evMu.Unlock()
}

func newUUID() uint64 {
	for {
		if u := mrand.Uint64(); u != 0 {
			return u
		}
	}
}

// Run serves the peer listener, dials peers and runs every connection until
// ctx is done or Close is called. It returns after all its goroutines
// exited.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("replica: Run called twice")
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	n.runCtx, n.runCancel = ctx, cancel
	// Run itself counts in n.wg until its accept loop ends: a Close from
	// here on waits for the goroutines Run is still starting, instead of
	// finding n.wg empty and closing the node under them.
	n.wg.Add(1)
	n.mu.Unlock()
	defer cancel()
	ln, err := net.Listen("tcp", n.cfg.Self.Addr)
	if err != nil {
		n.wg.Done()
		return fmt.Errorf("listen for peers on %s: %w", n.cfg.Self.Addr, err)
	}
	n.ln = ln
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		<-ctx.Done()
		ln.Close()
	}()
	for _, p := range n.all {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			p.run(ctx)
		}()
	}
	if n.cfg.AutoPromote && !n.cfg.Self.Witness {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.elect(ctx)
		}()
	}
	n.accept(ctx, ln)
	n.wg.Done()
	n.wg.Wait()
	return nil
}

// Close stops Run's goroutines, waits for in-flight writes, flushes the
// store and meta data, and closes both.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	// Writes waiting for journal room give up now (ErrClosed).
	n.wakeRoomLocked(true)
	for n.writing > 0 {
		n.cond.Wait()
	}
	if n.role == api.Primary && n.runCancel != nil {
		n.drainLocked()
	}
	cancel := n.runCancel
	n.broadcastLocked()
	n.quorumChangedLocked()
	n.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	n.wg.Wait()
	if n.cfg.Self.Witness {
		return nil // no store, no meta file; the state file is written as it changes
	}
	var err error
	if !n.detached.Load() {
		err = n.st.Flush(context.Background())
	}
	// The crash flag goes only once the data is durable and the activity
	// log released (its bits flushed): a crash before that marks the hot
	// extents at the next open.
	if err == nil {
		err = n.meta.ReleaseIdle(context.Background())
	}
	n.mu.Lock()
	if e := n.persist(func(sb *bitmap.Superblock) {
		if err == nil {
			sb.Flags &^= bitmap.FlagPrimary
			sb.Flags |= bitmap.FlagCleanShutdown
		}
	}); e != nil && err == nil {
		err = e
	}
	n.unlock()
	if e := n.meta.Close(); e != nil && err == nil {
		err = e
	}
	if n.snap != nil {
		// After the live store's flush: its changed-block record and
		// clean mark are written last.
		if e := n.snap.Close(); e != nil && err == nil {
			err = e
		}
	}
	if e := n.st.Close(); e != nil && err == nil {
		err = e
	}
	return err
}

// Size is the device size.
func (n *Node) Size() int64 { return n.cfg.Size }

// recomputeLocked refreshes the mask of peers that receive writes; n.mu
// held.
func (n *Node) recomputeLocked() {
	var m uint64
	for _, p := range n.peers {
		if decide.Receiving(p.conn, p.repl) {
			m |= p.bit
		}
	}
	n.recvMask = m
	n.recvAtomic.Store(m)
	n.broadcastLocked()
}

// errNotPrimary is what I/O on a non-primary returns: EPERM for NBD.
// n.mu held.
func (n *Node) errNotPrimary(op string) error {
	what := n.role.String()
	if n.demoting {
		what = "being demoted"
	}
	if n.closed {
		return fmt.Errorf("%s on %s: %w (%w): the node is shutting down", op, n.cfg.Self.Name, ErrClosed, syscall.ESHUTDOWN)
	}
	return fmt.Errorf("%s on %s: %w (%w): this node is %s; promote it to write", op, n.cfg.Self.Name, ErrNotPrimary, syscall.EPERM, what)
}

func (n *Node) allMask() uint64 {
	return uint64(1)<<uint(len(n.peers)) - 1
}

// broadcastLocked wakes everyone waiting on the node's state: the writes
// draining (Close, demote) and the starts waiting for journal room.
func (n *Node) broadcastLocked() {
	n.cond.Broadcast()
	n.wakeRoomLocked(true)
}
