// Package replica is the replication engine: roles, per-peer connections,
// the journal and write path, resync, and generation identifiers. A Node
// serves the nbd.Device interface over a local Store and replicates every
// write to its peers.
//
// The decisions (who may be promoted, how two nodes' data relate on connect,
// who resyncs from whom, when a write may complete) are plain functions in
// decide.go; the goroutines that move bytes live around them.
//
// Semantics worth knowing:
//
//   - Flush under protocol C sends a barrier to every peer that receives
//     writes and waits for each to fdatasync; under protocol A it is a local
//     fdatasync only (the barrier is sent, not awaited).
//   - Peers with the lower node id dial; the higher accepts. A peer that
//     does not ack within Timeout is dropped, its unacked writes marked in
//     its bitmap; reconnects back off from ConnectInterval to 5s, forever,
//     until Disconnect.
//   - Resync runs only from a Primary (or toward a node connected with
//     --discard-my-data). Two Secondaries whose data differ wait in
//     PausedSync until one of them is promoted; two Secondaries of the same
//     generation settle to Established.
//   - All-zero blocks are resynced as zeroes ranges, without data.
//   - Checksum-based resync (CSums) and online verify: csums.go, verify.go.
//     Resync and verify are paced by ResyncRate/ResyncMinRate
//     (ratelimit.go) within half of JournalBytes.
//   - A Primary crashed (FlagPrimary still set at Open): the activity log's
//     hot extents are marked toward every peer. The flag is cleared on a
//     clean demote or Close only after the data is flushed and the
//     activity log released.
//   - Promotion is a two-phase cluster-wide change (promote.go); a failing
//     local disk is detached per on-io-error (diskfail.go); a Secondary
//     keeps what other nodes may lack until the Primary confirms it
//     (peerseq.go); a closing Primary drains its journal (drain.go).
//   - Not yet done: a Primary as SyncTarget (refused: demote it first),
//     fencing, reads served from a peer on a detached Primary.
//
// Concurrency: Node.mu guards the role, the superblock copy, the journal and
// every peer's state. Store, meta-file and socket I/O happen outside it,
// except the rare superblock updates (role and generation changes), which
// are made durable under it so no write can slip past them.
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
	"github.com/repd/repd/protocol"
)

// Node is one node's replica of a resource.
type Node struct {
	cfg       Config
	st        Store
	meta      *bitmap.Meta
	log       *slog.Logger
	codec     protocol.Codec
	pullAhead bool

	peers  []*peer
	byName map[string]*peer

	mu             sync.Mutex
	cond           *sync.Cond    // writes draining (Close, demote)
	roomq          []*roomWaiter // starts waiting for journal room (write.go)
	sb             bitmap.Superblock
	role           api.Role
	demoting       bool
	promoting      *promoteWait // our promote request, waiting for the peers (promote.go)
	grant          *grant       // a peer's promotion we granted
	closed         bool
	crashedPrimary bool
	nextSeq        uint64
	j              journal
	inflight       inflightSet // entries not yet local (overlap checks)
	writing        int         // application writes between submit and completion
	writes         int64
	recvMask       uint64        // peers that receive the primary's writes (Receiving)
	recvAtomic     atomic.Uint64 // recvMask, for the appliers
	markMu         sync.RWMutex  // appliers' marks (read) vs settleLocked (write)
	evq            []api.Event
	authLim        authLimiter  // incoming handshakes after authentication failures
	lastAppWrite   atomic.Int64 // unix nanos of the last application write (resync yields)
	detached       atomic.Bool  // the local disk failed (on-io-error detach): Failed, not used
	applied        appliedRing  // a Secondary's recent writes other nodes may lack (peerseq.go)

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
	n.cond = sync.NewCond(&n.mu)
	n.j.max = cfg.JournalBytes
	for i, pc := range cfg.Peers {
		p := &peer{n: n, idx: i, bit: 1 << uint(i), cfg: pc, conn: api.Connecting,
			incoming: make(chan *protocol.Conn, 1), kick: make(chan struct{}, 1)}
		n.peers = append(n.peers, p)
		n.byName[pc.Name] = p
	}
	m, created, err := bitmap.OpenOrCreate(cfg.MetaPath, cfg.identity())
	if err != nil {
		return nil, fmt.Errorf("meta data %s: %w", cfg.MetaPath, err)
	}
	n.meta = m
	err = m.UpdateSuperblock(func(sb *bitmap.Superblock) {
		for _, p := range n.peers {
			if _, e := sb.AssignSlot(p.cfg.ID); e != nil && err == nil {
				err = e
			}
		}
		sb.Flags &^= bitmap.FlagCleanShutdown
	})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("meta data %s: %w", cfg.MetaPath, err)
	}
	n.sb = m.Superblock()
	for _, p := range n.peers {
		p.slot = n.sb.SlotOf(p.cfg.ID)
		p.bm = m.Bitmap(p.slot)
	}
	if n.sb.Disk == Failed {
		n.log.Warn("the local disk had failed: attaching it again as Outdated; the Primary resyncs what it missed (repctl invalidate for a full resync)")
		if err := n.persist(func(sb *bitmap.Superblock) { sb.Disk = Outdated }); err != nil {
			m.Close()
			return nil, err
		}
	}
	if n.sb.Flags&bitmap.FlagPrimary != 0 {
		// Crashed as Primary: whatever was in flight may be missing on
		// the peers; the activity log says where.
		n.crashedPrimary = true
		marked := m.MarkHotOutOfSync()
		n.log.Warn("node crashed as Primary: marked the activity log's hot extents out of sync", "bytes", marked)
		if err := n.persist(func(sb *bitmap.Superblock) { sb.Flags &^= bitmap.FlagPrimary }); err != nil {
			m.Close()
			return nil, err
		}
	}
	n.log.Info("opened", "created", created, "disk", n.sb.Disk, "current", uuidString(n.sb.GI.Current), "protocol", cfg.Protocol)
	return n, nil
}

// persist applies fn to the superblock durably and refreshes the copy.
// Called with n.mu held (or before Run).
func (n *Node) persist(fn func(*bitmap.Superblock)) error {
	if err := n.meta.UpdateSuperblock(func(sb *bitmap.Superblock) {
		fn(sb)
		if n.detached.Load() {
			sb.Disk = Failed // until a restart with a working disk
		}
	}); err != nil {
		n.log.Error("meta data update failed", "err", err)
		return fmt.Errorf("persist meta data: %w", err)
	}
	old := n.sb.Disk
	n.sb = n.meta.Superblock()
	if old != n.sb.Disk {
		n.event("disk", "", old.String(), n.sb.Disk.String(), "")
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

// unlock releases n.mu and delivers queued events.
func (n *Node) unlock() {
	if len(n.evq) == 0 {
		n.mu.Unlock()
		return
	}
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
	n.mu.Unlock()
	defer cancel()
	ln, err := net.Listen("tcp", n.cfg.Self.Addr)
	if err != nil {
		return fmt.Errorf("listen for peers on %s: %w", n.cfg.Self.Addr, err)
	}
	n.ln = ln
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		<-ctx.Done()
		ln.Close()
	}()
	for _, p := range n.peers {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			p.run(ctx)
		}()
	}
	n.accept(ctx, ln)
	n.wg.Wait()
	return nil
}

// ListenAddr is the peer listener's address once Run started (for tests
// that listen on port 0).
func (n *Node) ListenAddr() string {
	if n.ln == nil {
		return ""
	}
	return n.ln.Addr().String()
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
	n.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	n.wg.Wait()
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
	if e := n.st.Close(); e != nil && err == nil {
		err = e
	}
	return err
}

// Size is the device size.
func (n *Node) Size() int64 { return n.cfg.Size }

// peerViews builds the promote decision's input; n.mu held.
func (n *Node) peerViews() []PeerView {
	v := make([]PeerView, len(n.peers))
	for i, p := range n.peers {
		v[i] = PeerView{Name: p.cfg.Name, Connected: p.conn == api.Connected, Role: p.peerRole, Repl: p.repl,
			Newer: p.conn == api.Connected && p.verdict.Rel == RelPeerNewer}
	}
	return v
}

// Demote makes this node Secondary: new writes are refused at once,
// in-flight ones complete, everything is flushed (to the peers too), then
// the role changes.
func (n *Node) Demote() error {
	n.mu.Lock()
	if err := CanDemote(n.role); err != nil || n.demoting {
		n.mu.Unlock()
		if err == nil {
			err = fmt.Errorf("%w: a demote is already in progress", ErrRefused)
		}
		return err
	}
	n.demoting = true
	for n.writing > 0 {
		n.cond.Wait()
	}
	n.mu.Unlock()
	ferr := n.flush(context.Background(), true)
	if ferr == nil {
		// No write is in flight: release the activity log (flushing
		// its bits) before the crash flag goes.
		ferr = n.meta.ReleaseIdle(context.Background())
	}
	n.mu.Lock()
	defer n.unlock()
	n.demoting = false
	n.role = api.Secondary
	err := n.persist(func(sb *bitmap.Superblock) {
		if ferr == nil {
			sb.Flags &^= bitmap.FlagPrimary
		}
	})
	n.recomputeLocked()
	n.broadcastLocked()
	n.log.Info("demoted to Secondary")
	n.event("role", "", api.Primary.String(), api.Secondary.String(), "")
	for _, p := range n.peers {
		if p.conn == api.Connected {
			p.sendStateLocked(0)
		}
	}
	if ferr != nil {
		n.log.Warn("flush during demote failed", "err", ferr)
	}
	return err
}

func (n *Node) peerByName(name string) (*peer, error) {
	p := n.byName[name]
	if p == nil {
		return nil, fmt.Errorf("%w: %q is not a peer of resource %s", ErrUnknownPeer, name, n.cfg.Resource)
	}
	return p, nil
}

// Connect (re)enables the connection to peer. With discardMyData this node
// gives up its changes and becomes the peer's sync target (the victim's
// side of a split-brain resolution).
func (n *Node) Connect(name string, discardMyData bool) error {
	p, err := n.peerByName(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.unlock()
	if discardMyData && n.role == api.Primary {
		return fmt.Errorf("%w: this node is Primary and cannot discard its data; demote it first", ErrRefused)
	}
	if p.conn == api.Connected && !discardMyData {
		return nil
	}
	p.discard = discardMyData
	p.splitBrain = false
	if p.conn == api.StandAlone {
		p.setConnLocked(api.Connecting, "")
	}
	if p.sess != nil && discardMyData {
		p.restartLocked("connect --discard-my-data")
	}
	p.kickLocked()
	return nil
}

// Disconnect drops the connection to peer and keeps it down (StandAlone)
// until Connect.
func (n *Node) Disconnect(name string) error {
	p, err := n.peerByName(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.unlock()
	p.setConnLocked(api.StandAlone, "disconnected by the operator")
	if p.sess != nil {
		p.sess.cancel()
	}
	p.kickLocked()
	return nil
}

// NewCurrentUUID starts a new data generation. With clearBitmap (DRBD's
// new-current-uuid --clear-bitmap) it declares the data of every connected
// node identical: this node and the connected peers become UpToDate with
// the new UUID and empty bitmaps, skipping the initial full sync of
// brand-new empty disks. Refused on a Primary, and while a peer is syncing.
func (n *Node) NewCurrentUUID(clearBitmap bool) error {
	n.mu.Lock()
	defer n.unlock()
	if n.role == api.Primary && clearBitmap {
		return fmt.Errorf("%w: new-current-uuid --clear-bitmap is for fresh, idle resources; demote first", ErrRefused)
	}
	for _, p := range n.peers {
		if p.conn == api.Connected && p.peerRole == api.Primary {
			return fmt.Errorf("%w: peer %s is Primary; run it there", ErrRefused, p.cfg.Name)
		}
		if p.conn == api.Connected && p.repl != api.Established && p.repl != api.PausedSync {
			return fmt.Errorf("%w: peer %s is %s; wait for it to finish", ErrRefused, p.cfg.Name, p.repl)
		}
	}
	u := newUUID()
	err := n.persist(func(sb *bitmap.Superblock) {
		if sb.GI.Current != 0 {
			sb.GI.History = [2]uint64{sb.GI.Current, sb.GI.History[0]}
		}
		sb.GI.Current = u
		if clearBitmap {
			sb.Disk = UpToDate
			for _, p := range n.peers {
				if p.conn == api.Connected {
					sb.GI.Bitmap[p.slot] = 0
				}
			}
		}
	})
	if err != nil {
		return err
	}
	for _, p := range n.peers {
		if p.conn != api.Connected {
			continue
		}
		if clearBitmap {
			p.peerDisk = UpToDate
			to := p.repl
			if to == api.PausedSync {
				to = api.Established
			}
			p.settleLocked(to)
		}
		var f uint8
		if clearBitmap {
			f = protocol.StateNewUUID
		}
		p.sendStateLocked(f)
	}
	n.recomputeLocked()
	n.meta.FlushBitmaps()
	n.log.Info("new current UUID", "current", uuidString(u), "clear_bitmap", clearBitmap)
	return nil
}

// Status returns a snapshot of the node's state.
func (n *Node) Status() api.Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := api.Status{
		Resource: n.cfg.Resource, Node: n.cfg.Self.Name, NodeID: n.cfg.Self.ID, Role: n.role,
		Disk: n.sb.Disk.String(), Protocol: n.cfg.Protocol, Size: n.cfg.Size,
		CurrentUUID: uuidString(n.sb.GI.Current), JournalBytes: n.j.bytes, JournalMax: n.j.max, JournalAgeMS: n.j.age(time.Now()).Milliseconds(),
		Writes: n.writes, Peers: []api.PeerStatus{},
	}
	for _, p := range n.peers {
		ps := api.PeerStatus{
			Name: p.cfg.Name, NodeID: p.cfg.ID, Address: p.cfg.Addr, Connection: p.conn, Replication: p.repl,
			OutOfSyncKiB: p.bm.DirtyBytes() / 1024, BitmapUUID: uuidString(n.sb.GI.Bitmap[p.slot]),
			SplitBrain: p.splitBrain, LastError: p.lastErr,
			BytesSent: p.sentBytes.Load(), BytesReceived: p.recvBytes.Load(), BadFrames: p.badFrames.Load(),
			Connects: p.connects, Resyncs: p.resyncs, ResyncedBytes: p.resynced.Load(),
			Acks: p.acks, AckLatencyUS: p.ackLatency.Microseconds(),
		}
		if p.conn == api.Connected {
			ps.Role = p.peerRole.String()
			ps.Disk = p.peerDisk.String()
		}
		if p.repl == api.SyncSource || p.repl == api.SyncTarget {
			total := max(p.syncTotal, 1)
			left := p.bm.DirtyBytes()
			pct := 100 * float64(total-min(left, total)) / float64(total)
			ps.SyncPercent = &pct
		}
		p.syncStatusLocked(&ps)
		p.ls.fill(&ps)
		s.Peers = append(s.Peers, ps)
	}
	return s
}

// recomputeLocked refreshes the mask of peers that receive writes; n.mu
// held.
func (n *Node) recomputeLocked() {
	var m uint64
	for _, p := range n.peers {
		if Receiving(p.conn, p.repl) {
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
