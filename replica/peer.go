package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/protocol"
)

// peer is this node's side of its relation to one other node. Fields below
// the mutex comment are guarded by Node.mu.
type peer struct {
	n          *Node
	acks       int64         // ack frames received; n.mu
	ackLatency time.Duration // EWMA of send→ack; n.mu
	idx        int
	bit        uint64
	cfg        PeerConfig
	slot       int            // bitmap slot in the meta file
	bm         *bitmap.Bitmap // blocks the peer may lack

	incoming chan *protocol.Conn // authenticated connections from the listener
	kick     chan struct{}       // wake the run loop (connect, disconnect)

	sentBytes, recvBytes, badFrames, resynced atomic.Int64
	ls                                        linkStats  // transport: dedup, auth failures
	sy                                        peerSync   // resync progress, pause, verify (verify.go, csums.go)
	marks                                     markOrigin // why bm holds bits, on a Secondary (peerseq.go)

	// guarded by Node.mu
	conn        api.ConnState
	repl        api.Repl
	sess        *session
	discard     bool // next handshake: discard my data
	splitBrain  bool
	lastErr     string
	verdict     Verdict
	peerRole    api.Role
	peerDisk    Disk
	cursor      int64 // journal position of the next entry to ship
	ackFrom     int64 // journal position of the oldest entry maybe unacked
	sent        []sentMark
	resyncAcked []span // resync entries acked, bits cleared at the next barrier ack
	syncTotal   int64
	ackSeq      uint64 // the peer's cumulative ack
	haveSeq     uint64 // the peer holds every write up to it (peerseq.go)
	connects    int64
	resyncs     int64
}

type sentMark struct {
	seq uint64
	at  time.Time
}

type span struct {
	seq    uint64
	off, n int64
}

// session is one live connection to a peer.
type session struct {
	p      *peer
	c      *protocol.Conn
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}
	resync chan struct{}
	ap     *applier

	errOnce sync.Once
	err     error

	ctrlMu sync.Mutex
	ctrl   []ctrlMsg

	dd dedupState

	seqs, sentSeqs []protocol.PeerSeq // PeerSeqs to send, last sent (peerseq.go)
	leavingSeq     uint64             // the leaving Primary's final barrier (drain.go)
	sy             sessSync           // checksum resync, pacing (csums.go)
}

type ctrlMsg struct {
	t       protocol.Type
	f       protocol.Flags
	seq     uint64
	payload []byte
}

func (s *session) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// fail ends the session with err (the first error wins).
func (s *session) fail(err error) {
	s.errOnce.Do(func() { s.err = err })
	s.cancel()
}

func (s *session) queue(m ctrlMsg) {
	s.ctrlMu.Lock()
	s.ctrl = append(s.ctrl, m)
	s.ctrlMu.Unlock()
	s.wakeUp()
}

func (p *peer) kickLocked() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *peer) setConnLocked(c api.ConnState, msg string) {
	if p.conn == c {
		return
	}
	p.n.event("connection", p.cfg.Name, p.conn.String(), c.String(), msg)
	p.n.log.Info("connection state", "peer", p.cfg.Name, "old", p.conn, "new", c, "msg", msg)
	p.conn = c
	p.n.recomputeLocked()
}

func (p *peer) setReplLocked(r api.Repl) {
	if p.repl == r {
		return
	}
	p.n.event("replication", p.cfg.Name, p.repl.String(), r.String(), "")
	p.n.log.Info("replication state", "peer", p.cfg.Name, "old", p.repl, "new", r)
	p.repl = r
	p.n.recomputeLocked()
}

// settleLocked clears p's bitmap and sets its replication state to r in
// one step as far as the appliers are concerned: a write applied
// concurrently either sees p receiving (r) and marks nothing, or marks
// before the clear. n.mu held.
func (p *peer) settleLocked(r api.Repl) {
	p.n.markMu.Lock()
	defer p.n.markMu.Unlock()
	p.bm.ClearAll()
	p.marks.reset()
	p.setReplLocked(r)
}

func (p *peer) setErrLocked(err error) {
	p.lastErr = err.Error()
	p.n.event("error", p.cfg.Name, "", "", p.lastErr)
}

// restartLocked drops the live connection so it is renegotiated at once.
func (p *peer) restartLocked(why string) {
	if p.sess != nil {
		p.n.log.Info("restarting connection", "peer", p.cfg.Name, "why", why)
		p.sess.fail(fmt.Errorf("restart: %s", why))
	}
	p.kickLocked()
}

// stateLocked builds the State frame for this peer; n.mu held.
func (p *peer) stateLocked(flags uint8) protocol.State {
	n := p.n
	gi := n.sb.GI
	st := protocol.State{
		Role: protocol.WireRole(n.role), Disk: protocol.WireDisk(n.sb.Disk), Repl: protocol.WireRepl(p.repl),
		Flags: flags, Current: gi.Current, Bitmap: gi.Bitmap[p.slot], History: gi.History,
		OutOfSync: uint64(p.bm.DirtyBytes()),
	}
	if p.discard {
		st.Flags |= protocol.StateDiscardMyData
	}
	if n.crashedPrimary {
		st.Flags |= protocol.StateCrashedPrim
	}
	if n.cfg.CSums {
		st.Flags |= protocol.StateCSums
	}
	return st
}

func (p *peer) sendStateLocked(flags uint8) {
	if p.sess == nil {
		return
	}
	st := p.stateLocked(flags)
	p.sess.queue(ctrlMsg{t: protocol.TypeState, payload: st.Append(nil)})
}

// goAheadLocked stops shipping to p (pull-ahead): everything it still owes
// an ack for is marked in its bitmap.
func (p *peer) goAheadLocked() {
	n := p.n
	n.j.drop(p.bit, p.ackFrom, func(e *entry) {
		if e.marks() {
			p.mark(e.off, e.n)
		}
		n.maybeDoneLocked(e)
	})
	p.resyncAcked = nil
	p.sent = nil
	p.setReplLocked(api.Ahead)
	n.log.Warn("journal full: pulling ahead of peer, which resyncs later", "peer", p.cfg.Name, "journal_bytes", n.j.bytes)
	p.sendStateLocked(0)
}

// run keeps the connection to p up until ctx is done: it dials (if this
// node has the lower id) or waits for the listener to hand over a
// connection, then runs a session; after a failure it backs off.
func (p *peer) run(ctx context.Context) {
	n := p.n
	backoff := n.cfg.ConnectInterval
	dials := n.cfg.Self.ID < p.cfg.ID
	for ctx.Err() == nil {
		n.mu.Lock()
		standalone := p.conn == api.StandAlone
		n.mu.Unlock()
		if standalone {
			p.drainIncoming()
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
			}
			continue
		}
		var c *protocol.Conn
		var err error
		if dials {
			c, err = p.dial(ctx)
		} else {
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
				continue
			case c = <-p.incoming:
			}
		}
		if err == nil {
			start := time.Now()
			err = p.session(ctx, c)
			if time.Since(start) > 2*n.cfg.Timeout {
				backoff = n.cfg.ConnectInterval
			}
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			n.mu.Lock()
			p.setErrLocked(err)
			n.unlock()
			n.log.Warn("peer connection failed", "peer", p.cfg.Name, "err", err)
		}
		t := time.NewTimer(jitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.kick:
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(newUUID()%uint64(d/2+1))
}

func (p *peer) drainIncoming() {
	for {
		select {
		case c := <-p.incoming:
			c.Refuse(time.Second, fmt.Sprintf("node %s is StandAlone toward %s (disconnected by the operator); run connect there", p.n.cfg.Self.Name, p.cfg.Name))
			c.Close()
		default:
			return
		}
	}
}

func (n *Node) hello() *protocol.Hello {
	return &protocol.Hello{Features: protocol.Features, Size: uint64(n.cfg.Size), Granularity: uint32(n.cfg.Granularity),
		NodeID: n.cfg.Self.ID, Nonce: protocol.NewNonce(), Resource: n.cfg.Resource, Name: n.cfg.Self.Name}
}

// dial connects to p and runs the handshake.
func (p *peer) dial(ctx context.Context) (*protocol.Conn, error) {
	n := p.n
	d := net.Dialer{Timeout: n.cfg.Timeout}
	nc, err := d.DialContext(ctx, "tcp", p.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s at %s: %w", p.cfg.Name, p.cfg.Addr, err)
	}
	if nc, err = p.clientTLS(ctx, nc); err != nil {
		return nil, err
	}
	c := protocol.NewConn(nc)
	c.SetDeadline(time.Now().Add(n.cfg.Timeout))
	h, err := protocol.Handshake(c, n.hello(), n.cfg.Secret, func(h *protocol.Hello) error {
		if h.NodeID != p.cfg.ID {
			return fmt.Errorf("%s expected node id %d at %s, found %s (id %d)", n.cfg.Self.Name, p.cfg.ID, p.cfg.Addr, h.Name, h.NodeID)
		}
		return nil
	})
	if err != nil {
		p.noteHandshakeErr(err)
		nc.Close()
		return nil, fmt.Errorf("handshake with %s: %w", p.cfg.Name, err)
	}
	p.setCodec(c, h)
	return c, nil
}

func (p *peer) setCodec(c *protocol.Conn, h *protocol.Hello) {
	p.ls.features.Store(h.Features)
	codec := p.n.codec
	if codec == protocol.CodecS2 && h.Features&protocol.FeatureS2 == 0 || codec == protocol.CodecZstd && h.Features&protocol.FeatureZstd == 0 {
		codec = protocol.CodecNone
	}
	c.SetCodec(codec, p.n.cfg.CompressionLevel)
}

// accept serves the peer listener: each connection is authenticated and
// handed to its peer's run loop.
func (n *Node) accept(ctx context.Context, ln net.Listener) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.handshakeIncoming(ctx, nc)
		}()
	}
}

func (n *Node) handshakeIncoming(ctx context.Context, nc net.Conn) {
	nc, done, ok := n.admit(ctx, nc)
	if !ok {
		return
	}
	c := protocol.NewConn(nc)
	c.SetDeadline(time.Now().Add(n.cfg.Timeout))
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	var p *peer
	h, err := protocol.Handshake(c, n.hello(), n.cfg.Secret, func(h *protocol.Hello) error {
		for _, q := range n.peers {
			if q.cfg.ID == h.NodeID {
				p = q
			}
		}
		switch {
		case p == nil:
			return fmt.Errorf("node %s (id %d) is not a peer of resource %s on %s; add it to the configuration", h.Name, h.NodeID, n.cfg.Resource, n.cfg.Self.Name)
		case p.cfg.ID > n.cfg.Self.ID:
			return fmt.Errorf("%s (id %d) dials %s (id %d), not the other way round", n.cfg.Self.Name, n.cfg.Self.ID, h.Name, h.NodeID)
		}
		if err := checkPeerCert(nc, p.cfg.Name); err != nil {
			return err
		}
		n.mu.Lock()
		standalone := p.conn == api.StandAlone
		n.mu.Unlock()
		if standalone {
			return fmt.Errorf("node %s is StandAlone toward %s (disconnected by the operator or after a split brain); run connect there", n.cfg.Self.Name, h.Name)
		}
		return nil
	})
	done(err)
	if err != nil {
		n.log.Warn("refused incoming peer connection", "remote", nc.RemoteAddr().String(), "err", err)
		if p != nil {
			p.noteHandshakeErr(err)
			n.mu.Lock()
			p.setErrLocked(fmt.Errorf("incoming connection from %s: %w", nc.RemoteAddr(), err))
			n.unlock()
		} else {
			n.mu.Lock()
			n.event("error", "", "", "", fmt.Sprintf("refused connection from %s: %v", nc.RemoteAddr(), err))
			n.unlock()
		}
		nc.Close()
		return
	}
	p.setCodec(c, h)
	c.SetDeadline(time.Time{})
	// Replace whatever is waiting; a live session is superseded (the peer
	// would not dial again if it still had it).
	n.mu.Lock()
	if p.sess != nil {
		p.sess.fail(errors.New("superseded by a new connection from the peer"))
	}
	n.mu.Unlock()
	for {
		select {
		case p.incoming <- c:
			return
		case old := <-p.incoming:
			old.Close()
		case <-ctx.Done():
			nc.Close()
			return
		}
	}
}

// errRefusedHere marks a session refused by our own verdict (already
// logged).
type verdictError struct{ err error }

func (e *verdictError) Error() string { return e.err.Error() }
func (e *verdictError) Unwrap() error { return e.err }

// session runs one authenticated connection: state exchange, verdict,
// bitmap exchange, then the sender, receiver, appliers and resync until it
// fails.
func (p *peer) session(ctx context.Context, c *protocol.Conn) error {
	n := p.n
	nc := c.NetConn()
	defer nc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &session{p: p, c: c, ctx: sctx, cancel: cancel, wake: make(chan struct{}, 1), resync: make(chan struct{}, 1)}
	s.sy.csumsDone = make(chan struct{}, 1)
	stop := context.AfterFunc(sctx, func() { nc.Close() })
	defer stop()

	c.SetDeadline(time.Now().Add(n.cfg.Timeout))
	n.mu.Lock()
	me := p.sideLocked()
	mine := p.stateLocked(0)
	n.mu.Unlock()
	if err := c.Send(0, protocol.TypeState, 0, 0, mine.Append(nil), nil); err != nil {
		return fmt.Errorf("send state: %w", err)
	}
	f, err := c.ReadFrame(0)
	if err != nil {
		return p.readErr("read state", err)
	}
	if f.Type == protocol.TypeRefuse {
		return &protocol.RefusedError{Reason: string(f.Payload)}
	}
	if f.Type != protocol.TypeState {
		return fmt.Errorf("%w: %s instead of State", protocol.ErrUnexpected, f.Type)
	}
	var theirs protocol.State
	if err := theirs.Decode(f.Payload); err != nil {
		return err
	}
	them := Side{ID: p.cfg.ID, Name: p.cfg.Name, Role: api.Role(theirs.Role), Disk: Disk(theirs.Disk), Current: theirs.Current,
		Bitmap: theirs.Bitmap, History: theirs.History, Discard: theirs.Flags&protocol.StateDiscardMyData != 0,
		CrashedPrimary: theirs.Flags&protocol.StateCrashedPrim != 0}
	s.sy.csums = n.cfg.CSums && theirs.Flags&protocol.StateCSums != 0
	v := Compare(me, them)
	if errors.Is(v.Err, ErrSplitBrain) {
		v = p.autoResolve(v, &me, &them, int64(theirs.OutOfSync))
	}
	if v.Err != nil {
		c.Refuse(time.Second, v.Err.Error())
		n.mu.Lock()
		p.verdict = v
		if errors.Is(v.Err, ErrSplitBrain) || errors.Is(v.Err, ErrUnrelated) {
			p.splitBrain = errors.Is(v.Err, ErrSplitBrain)
			if p.splitBrain {
				n.event("split-brain", p.cfg.Name, "", "", v.Err.Error())
			}
			n.log.Error("refusing peer: data diverged; no data touched", "peer", p.cfg.Name, "err", v.Err)
			p.setConnLocked(api.StandAlone, v.Err.Error())
		}
		n.unlock()
		return &verdictError{v.Err}
	}
	if err := p.exchangeBitmaps(c); err != nil {
		return err
	}
	if v.Full {
		p.markAll()
	}
	plan := Plan(v, me, them, p.bm.Count() > 0)
	if plan == api.SyncSource && p.sy.userPaused {
		plan = api.PausedSync // pause-sync by the operator
	}
	c.SetDeadline(time.Time{})

	n.mu.Lock()
	if n.role != me.Role || n.sb.Disk != me.Disk && plan != api.SyncTarget {
		n.mu.Unlock()
		return errors.New("local state changed during the handshake; renegotiating")
	}
	if plan == api.SyncTarget {
		if err := n.persist(func(sb *bitmap.Superblock) {
			sb.Disk = Inconsistent
			sb.Flags |= bitmap.FlagResyncTarget
		}); err != nil {
			n.mu.Unlock()
			return err
		}
	}
	settle := plan == api.Established && v.Rel == RelInSync && n.role == api.Secondary && them.Role == api.Secondary
	if settle {
		p.bm.ClearAll() // before the checks below; settleLocked clears again atomically
	}
	if plan == api.Established && n.role == api.Primary && p.bm.Count() > 0 && !n.detached.Load() {
		plan = api.SyncSource // written to while we were negotiating
	}
	p.sess = s
	p.verdict = v
	p.discard = false
	p.lastErr = ""
	p.splitBrain = false
	p.connects++
	p.peerRole, p.peerDisk = them.Role, them.Disk
	p.cursor, p.ackFrom = n.j.end(), n.j.end()
	p.sent, p.resyncAcked = nil, nil
	p.setConnLocked(api.Connected, fmt.Sprintf("%s (%s)", v.Rel, plan))
	if settle {
		p.settleLocked(plan)
	} else {
		p.setReplLocked(plan)
	}
	if plan == api.SyncSource {
		p.startSyncLocked()
		p.syncStartedLocked()
	}
	if plan == api.SyncTarget {
		p.targetStartLocked(s, 0)
	}
	if plan == api.Established && n.sb.GI.Bitmap[p.slot] != 0 && p.bm.Count() == 0 {
		n.persist(func(sb *bitmap.Superblock) { sb.GI.Bitmap[p.slot] = 0 })
	}
	p.sendStateLocked(0)
	n.unlock()
	n.log.Info("peer connected", "peer", p.cfg.Name, "relation", v.Rel.String(), "replication", plan.String(), "out_of_sync", p.bm.DirtyBytes())

	s.ap = newApplier(s)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.fail(s.send()) }()
	go func() { defer wg.Done(); s.fail(s.resyncLoop()) }()
	go func() {
		defer wg.Done()
		err := s.receive()
		s.ap.close()
		s.fail(err)
	}()
	wg.Wait()
	s.ap.wait()
	if k := n.appliedLost(p); k > 0 {
		n.log.Info("connection to the sender ended: marked its writes other nodes may lack", "peer", p.cfg.Name, "writes", k)
	}

	n.mu.Lock()
	p.sess = nil
	p.promoteLostLocked()
	if err := p.leftLocked(s); err != nil {
		n.log.Error("marking the disk Outdated failed", "err", err)
	}
	lost := n.j.drop(p.bit, p.ackFrom, func(e *entry) {
		if e.marks() {
			p.mark(e.off, e.n)
		}
		n.maybeDoneLocked(e)
	})
	n.j.trim()
	p.sent, p.resyncAcked = nil, nil
	p.setReplLocked(api.ReplOff)
	if p.conn == api.Connected {
		p.setConnLocked(api.Connecting, s.err.Error())
	}
	n.recomputeLocked()
	n.unlock()
	n.meta.FlushBitmaps()
	n.log.Warn("peer disconnected", "peer", p.cfg.Name, "err", s.err, "unacked_marked", lost)
	if ctx.Err() != nil {
		return nil
	}
	return s.err
}

func (p *peer) readErr(what string, err error) error {
	if errors.Is(err, protocol.ErrCorrupt) {
		p.badFrames.Add(1)
	}
	return fmt.Errorf("%s from %s: %w", what, p.cfg.Name, err)
}

// sideLocked is this node as the connect decision sees it; n.mu held.
func (p *peer) sideLocked() Side {
	n := p.n
	return Side{ID: n.cfg.Self.ID, Name: n.cfg.Self.Name, Role: n.role, Disk: n.sb.Disk, Current: n.sb.GI.Current,
		Bitmap: n.sb.GI.Bitmap[p.slot], History: n.sb.GI.History, Discard: p.discard, CrashedPrimary: n.crashedPrimary}
}

// exchangeBitmaps sends our bitmap for the peer as extents and ORs the
// peer's into it: both sides then hold the union.
func (p *peer) exchangeBitmaps(c *protocol.Conn) error {
	bm := p.bm
	blocks := bm.Blocks()
	var ex []protocol.Extent
	var buf []byte
	send := func(last bool) error {
		var f protocol.Flags
		if last {
			f = protocol.FlagLast
		}
		buf = protocol.AppendExtents(buf[:0], ex)
		ex = ex[:0]
		return c.W.WriteFrame(protocol.TypeBitmap, f, 0, buf, nil)
	}
	for i := int64(0); ; {
		s, ok := bm.NextSet(i)
		if !ok {
			break
		}
		e, ok := bm.NextClear(s)
		if !ok {
			e = blocks
		}
		ex = append(ex, protocol.Extent{Start: uint64(s), Count: uint64(e - s)})
		if len(ex) == protocol.MaxExtents {
			if err := send(false); err != nil {
				return err
			}
		}
		i = e
	}
	if err := send(true); err != nil {
		return err
	}
	if err := c.Flush(0); err != nil {
		return fmt.Errorf("send bitmap: %w", err)
	}
	var got []protocol.Extent
	for {
		f, err := c.ReadFrame(0)
		if err != nil {
			return p.readErr("read bitmap", err)
		}
		if f.Type == protocol.TypeRefuse {
			return &protocol.RefusedError{Reason: string(f.Payload)}
		}
		if f.Type != protocol.TypeBitmap {
			return fmt.Errorf("%w: %s during bitmap exchange", protocol.ErrUnexpected, f.Type)
		}
		got, err = protocol.DecodeExtents(f.Payload, got[:0])
		if err != nil {
			return err
		}
		for _, e := range got {
			if e.Start >= uint64(blocks) || e.Count > uint64(blocks)-e.Start {
				return fmt.Errorf("%w: bitmap extent %d+%d beyond %d blocks", protocol.ErrCorrupt, e.Start, e.Count, blocks)
			}
			bm.SetBlocks(int64(e.Start), int64(e.Start+e.Count))
		}
		if len(got) > 0 {
			p.marks.setHard() // the peer's bits: not our soft marks
		}
		if f.Flags&protocol.FlagLast != 0 {
			return nil
		}
	}
}

// startSyncLocked makes p a sync target of this node; n.mu held.
func (p *peer) startSyncLocked() {
	p.syncTotal = p.bm.DirtyBytes()
	p.resyncs++
	p.resyncAcked = nil
	if p.sess != nil {
		select {
		case p.sess.resync <- struct{}{}:
		default:
		}
	}
}

// send is the session's only writer: control frames, the cumulative ack,
// the journal entries for this peer, and pings, batched into one flush.
func (s *session) send() error {
	p, n := s.p, s.p.n
	c := s.c
	tick := time.NewTicker(max(n.cfg.Timeout/8, 10*time.Millisecond))
	defer tick.Stop()
	var (
		ctrl     []ctrlMsg
		batch    []*entry
		head     [protocol.WriteHeadSize]byte
		sentAck  uint64
		lastSend = time.Now()
		written  = c.W.BytesWritten()
	)
	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-s.wake:
			// Let the other goroutines of this wave (writers, appliers)
			// add to the batch: one flush then carries them all.
			runtime.Gosched()
		case <-tick.C:
		}
		now := time.Now()
		s.ctrlMu.Lock()
		ctrl, s.ctrl = s.ctrl, ctrl[:0]
		s.ctrlMu.Unlock()

		n.mu.Lock()
		batch = batch[:0]
		var bytes int
		// Entries before the journal's head are freed: none waits for us.
		p.cursor = max(p.cursor, n.j.base)
		maxBytes := int(min(4<<20, n.j.max/4))
		full := func() bool { return len(batch) >= 1024 || bytes >= maxBytes }
		for p.cursor < n.j.end() && !full() {
			e := n.j.at(p.cursor)
			if e.ship&p.bit != 0 && e.pend&p.bit != 0 {
				if !e.ready {
					break
				}
				e.refs++
				batch = append(batch, e)
				bytes += len(e.data)
			}
			p.cursor++
		}
		if full() && p.cursor < n.j.end() {
			// Entries wait behind a full batch: go round again without
			// waiting for a wake (theirs came when they became ready and
			// is spent).
			s.wakeUp()
		}
		if len(batch) > 0 {
			p.sent = append(p.sent, sentMark{seq: batch[len(batch)-1].seq, at: now})
		}
		var timeout error
		if len(p.sent) > 0 && now.Sub(p.sent[0].at) > n.cfg.Timeout {
			timeout = fmt.Errorf("peer %s did not acknowledge writes within %v; dropping it (its bitmap covers what it missed)", p.cfg.Name, n.cfg.Timeout)
		}
		peerSeqs := s.peerSeqsLocked()
		if p.repl == api.Ahead && n.j.bytes <= n.j.max/4 {
			p.setReplLocked(api.SyncSource)
			p.startSyncLocked()
			p.sendStateLocked(0)
		}
		n.unlock()
		if timeout != nil {
			s.release(batch)
			return timeout
		}
		for _, m := range ctrl {
			c.W.WriteFrame(m.t, m.f, m.seq, m.payload, nil)
		}
		if peerSeqs != nil {
			c.W.WriteFrame(protocol.TypePeerSeqs, 0, 0, peerSeqs, nil)
		}
		resent := s.shipResends(head[:0])
		if a := s.ap.acked.Load(); a > sentAck {
			c.W.WriteFrame(protocol.TypeAck, 0, a, nil, nil)
			sentAck = a
		}
		for _, e := range batch {
			switch e.kind {
			case kBarrier:
				c.W.WriteFrame(protocol.TypeBarrier, 0, e.seq, nil, nil)
			case kVerify:
				c.W.WriteFrame(protocol.TypeVerify, 0, e.seq, e.data, nil)
			default:
				f := e.flags
				if e.kind == kResync {
					f |= protocol.FlagResync
				}
				s.shipWrite(e, f, head[:0])
			}
		}
		if c.W.Buffered() == 0 && now.Sub(lastSend) > n.cfg.Timeout/4 {
			c.W.WriteFrame(protocol.TypePing, 0, uint64(now.UnixNano()), nil, nil)
		}
		var err error
		if c.W.Buffered() > 0 {
			err = c.Flush(n.cfg.Timeout)
			lastSend = now
		}
		s.release(batch)
		s.release(resent)
		if w := c.W.BytesWritten(); w != written {
			p.sentBytes.Add(w - written)
			written = w
		}
		if err != nil {
			return fmt.Errorf("send to %s: %w", p.cfg.Name, err)
		}
	}
}

func (s *session) release(batch []*entry) {
	if len(batch) == 0 {
		return
	}
	n := s.p.n
	n.mu.Lock()
	for _, e := range batch {
		e.refs--
		n.maybeDoneLocked(e)
	}
	n.j.trim()
	n.mu.Unlock()
}

// receive reads frames until the connection fails.
func (s *session) receive() error {
	p, n := s.p, s.p.n
	c := s.c
	read := c.R.BytesRead()
	for {
		f, err := c.ReadFrame(n.cfg.Timeout)
		if r := c.R.BytesRead(); r != read {
			p.recvBytes.Add(r - read)
			read = r
		}
		if err != nil {
			if s.ctx.Err() != nil {
				return s.ctx.Err()
			}
			if errors.Is(err, protocol.ErrCorrupt) {
				n.log.Error("bad frame from peer: closing the connection; resync repairs", "peer", p.cfg.Name, "err", err)
			}
			return p.readErr("receive", err)
		}
		switch f.Type {
		case protocol.TypeWrite, protocol.TypeBarrier, protocol.TypeResyncDone, protocol.TypeVerify:
			// In sequence order, held back while a write's data is
			// requested (dedup.go).
			if err := s.seqFrame(f); err != nil {
				return err
			}
		case protocol.TypeDataReq:
			if err := s.onDataReq(f.Seq); err != nil {
				return err
			}
		case protocol.TypeCsums:
			if err := s.onCsums(f.Payload); err != nil {
				return err
			}
		case protocol.TypeCsumsDone:
			s.onCsumsDone()
		case protocol.TypeVerifyReply:
			if err := s.onVerifyReply(f.Payload); err != nil {
				return err
			}
		case protocol.TypeAck:
			n.onAck(p, f.Seq, false)
		case protocol.TypeBarrierAck:
			n.onAck(p, f.Seq, true)
		case protocol.TypePromoteReq:
			p.onPromoteReq(s, f.Seq)
		case protocol.TypePromoteReply:
			p.onPromoteReply(f.Seq, string(f.Payload))
		case protocol.TypePromoteEnd:
			p.onPromoteEnd(f.Seq)
		case protocol.TypePeerSeqs:
			ps, err := protocol.DecodePeerSeqs(f.Payload, nil)
			if err != nil {
				return p.readErr("PeerSeqs", err)
			}
			n.onPeerSeqs(p, ps)
		case protocol.TypePing:
			s.queue(ctrlMsg{t: protocol.TypePong, seq: f.Seq})
		case protocol.TypePong:
		case protocol.TypeState:
			var st protocol.State
			if err := st.Decode(f.Payload); err != nil {
				return p.readErr("state", err)
			}
			if st.Flags&protocol.StateOutdated != 0 && api.Role(st.Role) == api.Primary {
				s.leavingSeq = f.Seq // drain.go
			}
			if err := p.onState(&st); err != nil {
				return err
			}
		case protocol.TypeRefuse:
			return &protocol.RefusedError{Reason: string(f.Payload)}
		default:
			return fmt.Errorf("%w: %s frame from %s after the handshake", protocol.ErrUnexpected, f.Type, p.cfg.Name)
		}
	}
}

// onAck handles a cumulative ack (or barrier ack) of seq from p.
func (n *Node) onAck(p *peer, seq uint64, barrier bool) {
	n.mu.Lock()
	p.ackFrom = n.j.ack(p.bit, p.ackFrom, seq, func(e *entry) {
		e.acked |= p.bit
		switch e.kind {
		case kResync:
			p.resyncAcked = append(p.resyncAcked, span{seq: e.seq, off: e.off, n: e.n})
			p.resynced.Add(e.n)
		case kBarrier:
			// The peer acks past a barrier only once it made
			// everything before it durable.
			p.clearResyncedLocked(e.seq)
		}
		n.maybeDoneLocked(e)
	})
	if seq > p.ackSeq {
		p.ackSeq = seq
	}
	if p.repl == api.Established && p.bm.Count() == 0 {
		p.haveSeq = p.ackSeq
	}
	i := 0
	for i < len(p.sent) && p.sent[i].seq <= seq {
		i++
	}
	if i > 0 {
		// Replication latency: from the send of the newest batch this ack
		// covers to the ack (an EWMA, weight 1/8).
		d := time.Since(p.sent[i-1].at)
		if p.ackLatency == 0 {
			p.ackLatency = d
		} else {
			p.ackLatency += (d - p.ackLatency) / 8
		}
	}
	p.acks++
	p.sent = p.sent[i:]
	if barrier {
		p.clearResyncedLocked(seq)
	}
	n.j.trim()
	n.mu.Unlock()
}

// clearResyncedLocked clears the bits of the resync blocks acked before
// barrier seq, which the peer made durable; n.mu held.
func (p *peer) clearResyncedLocked(seq uint64) {
	k := 0
	for _, r := range p.resyncAcked {
		if r.seq < seq {
			p.bm.Clear(r.off, r.n)
		} else {
			p.resyncAcked[k] = r
			k++
		}
	}
	p.resyncAcked = p.resyncAcked[:k]
}

// onState handles a State frame from a connected peer.
func (p *peer) onState(st *protocol.State) error {
	n := p.n
	n.mu.Lock()
	defer n.unlock()
	role, disk := api.Role(st.Role), Disk(st.Disk)
	if role == api.Primary && n.role == api.Primary {
		err := fmt.Errorf("%w: both %s and %s are Primary; demote one of them", ErrRefused, n.cfg.Self.Name, p.cfg.Name)
		n.log.Error("two primaries", "peer", p.cfg.Name)
		return err
	}
	if role != p.peerRole {
		n.event("peer-role", p.cfg.Name, p.peerRole.String(), role.String(), "")
		p.peerRole = role
	}
	if disk != p.peerDisk {
		n.event("peer-disk", p.cfg.Name, p.peerDisk.String(), disk.String(), "")
		p.peerDisk = disk
	}
	if (disk == Failed || disk == Diskless) && role != api.Primary {
		p.peerDiskFailedLocked()
		return nil
	}
	if st.Flags&protocol.StateNewUUID != 0 {
		err := n.persist(func(sb *bitmap.Superblock) {
			if sb.GI.Current != 0 && sb.GI.Current != st.Current {
				sb.GI.History = [2]uint64{sb.GI.Current, sb.GI.History[0]}
			}
			sb.GI.Current = st.Current
			sb.Disk = UpToDate
			sb.Flags &^= bitmap.FlagResyncTarget
			for _, q := range n.peers {
				if q.conn == api.Connected {
					sb.GI.Bitmap[q.slot] = 0
				}
			}
		})
		for _, q := range n.peers {
			if q.conn == api.Connected {
				to := q.repl
				if to == api.PausedSync {
					to = api.Established
				}
				q.settleLocked(to)
			}
		}
		if err == nil {
			// A State this node sent before it adopted the UUID may still
			// be on its way and would leave the peers believing it
			// Inconsistent: say UpToDate after it.
			n.broadcastStateLocked(nil)
		}
		return err
	}
	if p.syncStateLocked(api.Repl(st.Repl)) {
		return nil
	}
	switch api.Repl(st.Repl) {
	case api.Ahead:
		if p.repl != api.Behind {
			p.setReplLocked(api.Behind)
			if n.sb.Disk == UpToDate {
				return n.persist(func(sb *bitmap.Superblock) { sb.Disk = Outdated })
			}
		}
		return nil
	case api.SyncSource:
		if p.repl != api.SyncTarget {
			p.setReplLocked(api.SyncTarget)
			p.targetStartLocked(p.sess, int64(st.OutOfSync))
			return n.persist(func(sb *bitmap.Superblock) {
				sb.Disk = Inconsistent
				sb.Flags |= bitmap.FlagResyncTarget
			})
		}
		return nil
	}
	// Two secondaries that were apart now share a generation (one of them
	// finished a resync from the Primary): they are in sync.
	// Not after a crash as Primary: the activity log's marks must resync.
	if p.repl == api.PausedSync && role == api.Secondary && n.role == api.Secondary && st.Current == n.sb.GI.Current &&
		disk == UpToDate && n.sb.Disk == UpToDate && !n.crashedPrimary && st.Flags&protocol.StateCrashedPrim == 0 {
		p.settleLocked(api.Established)
		p.sendStateLocked(0)
		if n.sb.GI.Bitmap[p.slot] != 0 {
			return n.persist(func(sb *bitmap.Superblock) { sb.GI.Bitmap[p.slot] = 0 })
		}
		return nil
	}
	// In sync with a Primary that started a new generation: follow it.
	if role == api.Primary && p.repl == api.Established && n.sb.Disk == UpToDate && st.Current != 0 && st.Current != n.sb.GI.Current {
		away := make([]bool, len(n.sb.GI.Bitmap))
		for _, q := range n.peers {
			away[q.slot] = q != p && !(q.conn == api.Connected && q.repl == api.Established)
		}
		err := n.persist(func(sb *bitmap.Superblock) {
			sb.GI.Current, sb.GI.History = Rotate(sb.GI.Current, sb.GI.Bitmap, sb.GI.History, away, st.Current)
		})
		n.broadcastStateLocked(p)
		return err
	}
	return nil
}

// broadcastStateLocked sends our State to every connected peer but except;
// n.mu held.
func (n *Node) broadcastStateLocked(except *peer) {
	for _, q := range n.peers {
		if q != except && q.conn == api.Connected {
			q.sendStateLocked(0)
		}
	}
}

// onResyncDone ends a resync on the target: every block the source had
// marked is here and durable; take the source's generation.
func (p *peer) onResyncDone(current uint64) error {
	n := p.n
	if n.detached.Load() {
		return nil
	}
	if err := n.st.Flush(context.Background()); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.unlock()
	err := n.persist(func(sb *bitmap.Superblock) {
		if sb.GI.Current != 0 && sb.GI.Current != current {
			sb.GI.History = [2]uint64{sb.GI.Current, sb.GI.History[0]}
		}
		sb.GI.Current = current
		sb.GI.Bitmap[p.slot] = 0
		sb.Disk = UpToDate
		sb.Flags &^= bitmap.FlagResyncTarget
	})
	if err != nil {
		return err
	}
	p.bm.ClearAll()
	n.meta.FlushBitmaps()
	// What the activity log marked is repaired now.
	n.crashedPrimary = false
	p.verdict = Verdict{Rel: RelInSync} // the connect-time verdict is history now
	p.setReplLocked(api.Established)
	n.log.Info("resync finished: UpToDate", "source", p.cfg.Name, "current", uuidString(current))
	n.broadcastStateLocked(nil)
	return nil
}
