package replica

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/decide"
	"github.com/repd/repd/replica/internal/journal"
)

func (n *Node) peerByName(name string) (*peer, error) {
	p := n.byName[name]
	if p == nil {
		return nil, fmt.Errorf("%w: %q is not a peer of resource %s", ErrUnknownPeer, name, n.cfg.Resource)
	}
	return p, nil
}

// peer is this node's side of its relation to one other node. Fields below
// the mutex comment are guarded by Node.mu.
type peer struct {
	n      *Node
	idx    int    // index in Node.peers; -1 for a vote-only peer
	bit    uint64 // 1<<idx; 0 for a vote-only peer
	cfg    PeerConfig
	slot   int            // bitmap slot in the meta file; -1 for a vote-only peer
	bitmap *bitmap.Bitmap // blocks the peer may lack; nil for a vote-only peer
	// voteOnly: the peer or this node is a witness; their sessions carry
	// no data (witness.go).
	voteOnly bool

	incoming chan *protocol.Conn // authenticated connections from the listener
	kick     chan struct{}       // wake the run loop (connect, disconnect)

	features atomic.Uint64 // the peer's Hello features (last handshake)
	stats    peerStats     // counters (status.go)
	sync     peerSync      // resync progress, pause, verify (resync.go, csums.go, verify.go)
	marks    markOrigin    // why the bitmap holds bits, on a Secondary (peerseq.go)
	snapReqs atomic.Int32  // its snapshot requests this Primary serves (snapshot.go)

	// guarded by Node.mu
	conn       api.ConnState
	repl       api.Repl
	sess       *session
	discard    bool // next handshake: discard my data
	splitBrain bool
	lastErr    string
	verdict    decide.Verdict
	peerRole   api.Role
	peerDisk   bitmap.DiskState
	progress   journal.Progress // what was shipped to the peer, what it acknowledged
	state      protocol.State   // the peer's last State
	// leaseExpiry (on a Primary): until when the peer's acknowledgement of
	// a lease request for the current generation counts (quorum.go).
	leaseExpiry time.Duration
	syncTotal   int64
	connects    int64
	resyncs     int64
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
	p.n.recomputeLeaseLocked() // the votes present changed
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
	p.bitmap.ClearAll()
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
	gi := n.super.GI
	st := protocol.State{
		Role: protocol.WireRole(n.role), Disk: protocol.WireDisk(n.super.Disk), Repl: protocol.WireRepl(p.repl),
		Flags: flags, Current: gi.Current, History: gi.History,
		AppliedFrom: uint8(n.lastAppliedBy.Load()), Applied: n.lastApplied.Load(),
	}
	if p.bitmap != nil {
		st.Bitmap = gi.Bitmap[p.slot]
		st.OutOfSync = uint64(p.bitmap.DirtyBytes())
	}
	if p.discard {
		st.Flags |= protocol.StateDiscardMyData
	}
	if n.role == api.Primary && n.quorumOn() && n.leaseHeld() {
		st.Flags |= protocol.StateQuorate
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

// noteStateLocked records the State p announced: its role and disk (with
// an event on a change), and the rest for elections. n.mu held.
func (p *peer) noteStateLocked(st *protocol.State) {
	n := p.n
	role, disk := api.Role(st.Role), bitmap.DiskState(st.Disk)
	if role != p.peerRole {
		n.event("peer-role", p.cfg.Name, p.peerRole.String(), role.String(), "")
		p.peerRole = role
	}
	if disk != p.peerDisk {
		n.event("peer-disk", p.cfg.Name, p.peerDisk.String(), disk.String(), "")
		p.peerDisk = disk
	}
	p.state = *st
	n.notePrimaryLocked(p)
	n.recomputeLeaseLocked()
}

// lostLocked is what becomes of an entry the peer will not acknowledge
// (dropped by a disconnect, a timeout, a pull-ahead): its range is marked
// out of sync toward the peer and it completes for the others; n.mu held.
func (p *peer) lostLocked(e *journal.Entry) {
	if e.Marks() {
		p.mark(e.Off, e.N)
	}
	p.n.maybeDoneLocked(e)
}

// goAheadLocked stops shipping to p (pull-ahead): everything it still owes
// an ack for is marked in its bitmap.
func (p *peer) goAheadLocked() {
	n := p.n
	p.setReplLocked(api.Ahead)
	n.dropLeaseLocked(p)
	n.journal.Drop(&p.progress, p.bit, p.lostLocked)
	n.log.Warn("journal full: pulling ahead of peer, which resyncs later", "peer", p.cfg.Name, "journal_bytes", n.journal.Bytes)
	p.sendStateLocked(0)
}

// broadcastStateLocked sends our State to every connected peer but except;
// n.mu held.
func (n *Node) broadcastStateLocked(except *peer) {
	for _, q := range n.all {
		if q != except && q.conn == api.Connected {
			q.sendStateLocked(0)
		}
	}
}

// mark marks [off, off+n) out of sync toward p for any reason but a soft
// mark (peerseq.go).
func (p *peer) mark(off, n int64) {
	p.bitmap.Set(off, n)
	p.marks.setHard()
}

// markAll marks the whole device out of sync toward p.
func (p *peer) markAll() {
	p.bitmap.SetAll()
	p.marks.setHard()
}

func (n *Node) peersNamedLocked(name string) ([]*peer, error) {
	if name == "" {
		return n.peers, nil
	}
	p, err := n.dataPeerLocked(name)
	if err != nil {
		return nil, err
	}
	return []*peer{p}, nil
}

// dataPeerLocked finds the named peer and refuses a vote-only one for the
// verbs that move data. n.mu held.
func (n *Node) dataPeerLocked(name string) (*peer, error) {
	p, err := n.peerByName(name)
	if err != nil {
		return nil, err
	}
	if p.voteOnly {
		if n.cfg.Self.Witness {
			return nil, n.witnessRefusal("a data verb")
		}
		return nil, fmt.Errorf("%w: %s is a witness: it holds no data", ErrRefused, name)
	}
	return p, nil
}

// connectedPeerLocked finds the named peer (or the first connected one) and
// refuses one that is not connected; n.mu held.
func (n *Node) connectedPeerLocked(name string) (*peer, error) {
	if name == "" {
		for _, p := range n.peers {
			if p.conn == api.Connected && p.sess != nil {
				return p, nil
			}
		}
		return nil, fmt.Errorf("%w: no peer is connected", ErrRefused)
	}
	p, err := n.dataPeerLocked(name)
	if err != nil {
		return nil, err
	}
	if p.conn != api.Connected || p.sess == nil {
		return nil, fmt.Errorf("%w: peer %s is not connected", ErrRefused, name)
	}
	return p, nil
}
