package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/ctxtime"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/dedup"
	"github.com/repd/repd/replica/internal/journal"
)

// dedupState is a session's dedup state.
type dedupState struct {
	tx     *dedup.Encoder // shipper only; nil: dedup is off for this session
	txInit bool
	head   []byte // the shipper's scratch for DedupWrite heads

	rx dedupRx // receiver only

	mu     sync.Mutex
	resend []*journal.Entry // writes whose data the peer asked for; refs held
}

// dedupRx is the receiver's side: the hole (the seq of a write whose data
// was requested) and the sequence frames held back behind it.
type dedupRx struct {
	hole      uint64
	held      []protocol.Frame
	heldBytes int64 // their payloads, bounded by maxHeldBytes
	dw        protocol.DedupWrite
}

// session is one live connection to a peer.
type session struct {
	p       *peer
	c       *protocol.Conn
	ctx     context.Context
	cancel  context.CancelFunc
	wake    chan struct{}
	resync  chan struct{}
	applier *applier

	errOnce sync.Once
	err     error

	ctrlMu    sync.Mutex
	ctrl      []ctrlMsg
	ctrlBytes int64 // capacity of the payloads in ctrl, bounded by maxCtrlBytes
	// ctrlSending is the capacity of the payloads the writer took out of
	// ctrl and is writing: they count against maxCtrlBytes until they are
	// written, so that a peer that stops reading cannot make the node
	// hold a full queue and a taken one (twice the bound).
	ctrlSending int64

	dedup    dedupState
	frameErr error // the writer's first frame write error (sender.go); txMu

	// The writer (sender.go): whoever holds txMu writes frames to c and
	// flushes; txAgain asks the holder for one more pass. ackSent is the
	// last cumulative ack written, for the receiver's check without txMu.
	txMu    sync.Mutex
	txAgain atomic.Bool
	tx      txState
	ackSent atomic.Uint64
	running atomic.Bool // run started the goroutines: a pass may write
	// appliedSinceAck counts the sequence frames the receiver handled
	// since it last checked for an ack to send (receiver.go); receiver only.
	appliedSinceAck int

	// The Primary's lease requests to the peer (sender.go; quorum.go):
	// when the last went, and whether one is due at once. Node.mu.
	lastLease time.Time
	leaseDue  bool

	seqs, sentSeqs []protocol.PeerSeq // PeerSeqs to send, last sent (peerseq.go)
	leavingSeq     uint64             // the leaving Primary's final barrier (drain.go)
	sync           sessSync           // checksum resync, pacing (csums.go)
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

// What a peer can make this node hold for a session. Both are far above
// what a peer that reads its frames and follows the protocol causes: the
// bounds fail a session whose peer does not read (the control frames it
// asked for pile up behind a blocked sender) or sends whole writes behind a
// dedup reference it never resolves.
const (
	maxCtrlBytes     = 32 << 20 // control frames queued for the sender
	maxCtrlMsgs      = 1 << 16
	ctrlBackpressure = 4 << 20  // a checksum resync's hashes wait above this
	maxHeldBytes     = 96 << 20 // frames held behind an unresolved dedup reference
	maxHeldFrames    = 1 << 15
)

// errCtrlOverflow ends a session whose control queue overflowed.
var errCtrlOverflow = fmt.Errorf("more than %d control frames or %d MiB queued for the peer: it does not read them", maxCtrlMsgs, maxCtrlBytes>>20)

// queue queues a control frame for the sender and wakes it; past the
// bound the session fails instead of growing.
func (s *session) queue(m ctrlMsg) {
	if s.enqueue(m) {
		s.wakeUp()
	}
}

// enqueue queues a control frame for the next pass of the writer without
// waking the sender: the caller pumps. False if the session failed on the
// bound.
func (s *session) enqueue(m ctrlMsg) bool {
	s.ctrlMu.Lock()
	// The capacity, what the payload holds: an append-grown one (a
	// VerifyReply of 2,068 bytes holds 3,072) counted by its length let
	// 32 MiB of payloads hold 47.5 MiB.
	s.ctrlBytes += int64(cap(m.payload))
	over := s.ctrlBytes+s.ctrlSending > maxCtrlBytes || len(s.ctrl) >= maxCtrlMsgs
	if !over {
		s.ctrl = append(s.ctrl, m)
	}
	s.ctrlMu.Unlock()
	if over {
		s.fail(errCtrlOverflow)
	}
	return !over
}

// queueWait is queue for a producer that can wait (a checksum resync's
// hashes): while much is queued it waits for the sender to catch up.
func (s *session) queueWait(m ctrlMsg) error {
	for {
		s.ctrlMu.Lock()
		busy := s.ctrlBytes > ctrlBackpressure
		s.ctrlMu.Unlock()
		if !busy {
			s.queue(m)
			return nil
		}
		if err := ctxtime.Sleep(s.ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// session runs one authenticated connection: the negotiation
// (handshake.go), then the sender, the receiver with its appliers and the
// resync until one of them fails, then the teardown.
func (p *peer) session(ctx context.Context, c *protocol.Conn) error {
	nc := c.NetConn()
	defer nc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &session{p: p, c: c, ctx: sctx, cancel: cancel, wake: make(chan struct{}, 1), resync: make(chan struct{}, 1)}
	s.sync.csumsDone = make(chan struct{}, 1)
	stop := context.AfterFunc(sctx, func() { nc.Close() })
	defer stop()
	negotiate := p.negotiate
	if p.voteOnly {
		negotiate = p.negotiateVote
	}
	if err := negotiate(s); err != nil {
		return err
	}
	s.run()
	err := p.teardown(s)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// run runs the session's goroutines until the session fails, and waits for
// them and for the writes being applied.
func (s *session) run() {
	p, n := s.p, s.p.n
	var wg sync.WaitGroup
	if p.voteOnly {
		s.running.Store(true)
		wg.Add(2)
		go func() { defer wg.Done(); s.fail(s.send()) }()
		go func() { defer wg.Done(); s.fail(s.receive()) }()
		wg.Wait()
		return
	}
	s.applier = newApplier(s)
	s.running.Store(true) // pumps may write now (the applier is set)
	wg.Add(3)
	go func() { defer wg.Done(); s.fail(s.send()) }()
	go func() { defer wg.Done(); s.fail(s.resyncLoop()) }()
	go func() {
		defer wg.Done()
		err := s.receive()
		s.applier.close()
		s.fail(err)
	}()
	wg.Wait()
	s.applier.wait()
	// Writes the peer asked for again (onDataReq) that the sender did not
	// resend before the session ended: their hold ends here, or a write
	// that lent its buffer (lend) would never complete.
	s.dedup.mu.Lock()
	left := s.dedup.resend
	s.dedup.resend = nil
	s.dedup.mu.Unlock()
	s.release(left)
	if k := n.appliedLost(p); k > 0 {
		n.log.Info("connection to the sender ended: marked its writes other nodes may lack", "peer", p.cfg.Name, "writes", k)
	}

}

// teardown detaches the ended session s from p: whatever p still owed an
// ack for is marked out of sync, the connection goes back to Connecting.
// It returns the session's error.
func (p *peer) teardown(s *session) error {
	n := p.n
	n.mu.Lock()
	p.sess = nil
	p.promoteLostLocked()
	if err := p.leftLocked(s); err != nil {
		n.log.Error("marking the disk Outdated failed", "err", err)
	}
	p.setReplLocked(api.ReplOff) // p receives no more writes
	if p.conn == api.Connected {
		p.setConnLocked(api.Connecting, s.err.Error())
	}
	// Before any write completes without p (the drop below completes
	// them): p's lease acknowledgement no longer counts.
	n.dropLeaseLocked(p)
	lost := n.journal.Drop(&p.progress, p.bit, p.lostLocked)
	n.journal.Trim()
	n.recomputeLocked()
	n.unlock()
	n.log.Warn("peer disconnected", "peer", p.cfg.Name, "err", s.err, "unacked_marked", lost)
	if !p.voteOnly {
		if err := n.flushBitmaps("peer disconnected"); err != nil {
			n.log.Error("marks of the writes the peer missed are not durable", "peer", p.cfg.Name, "err", err)
		}
	}
	return s.err
}

func (p *peer) readErr(what string, err error) error {
	if errors.Is(err, protocol.ErrCorrupt) {
		p.stats.badFrames.Add(1)
	}
	return fmt.Errorf("%s from %s: %w", what, p.cfg.Name, err)
}
