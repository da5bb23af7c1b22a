package replica

import (
	"errors"
	"fmt"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/decide"
)

// verdictError marks a session refused by our own verdict (already
// logged).
type verdictError struct{ err error }

func (e *verdictError) Error() string { return e.err.Error() }

func (e *verdictError) Unwrap() error { return e.err }

// sideLocked is this node as the connect decision sees it; n.mu held.
func (p *peer) sideLocked() decide.Side {
	n := p.n
	return decide.Side{ID: n.cfg.Self.ID, Name: n.cfg.Self.Name, Role: n.role, Disk: n.super.Disk, Current: n.super.GI.Current,
		Bitmap: n.super.GI.Bitmap[p.slot], History: n.super.GI.History, Discard: p.discard, CrashedPrimary: n.crashedPrimary}
}

// exchangeBitmaps sends our bitmap for the peer as extents and ORs the
// peer's into it: both sides then hold the union.
func (p *peer) exchangeBitmaps(c *protocol.Conn) error {
	bm := p.bitmap
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
		f, err := p.expect(c, protocol.TypeBitmap, "bitmap")
		if err != nil {
			return err
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

// autoResolve applies Config.AfterSB0Pri to a split-brain verdict: when it
// picks a victim, the sides are compared again as if the victim had
// connected with --discard-my-data. Both nodes reach the same choice.
func (p *peer) autoResolve(v decide.Verdict, me, them *decide.Side, theirChanges int64) decide.Verdict {
	n := p.n
	dm, dp := decide.AutoResolve(n.cfg.AfterSB0Pri, *me, *them, p.bitmap.DirtyBytes(), theirChanges)
	if !dm && !dp {
		return v
	}
	me.Discard, them.Discard = dm, dp
	victim := n.cfg.Self.Name
	if dp {
		victim = p.cfg.Name
	}
	n.log.Warn("split brain resolved by after-sb-0pri discard-zero-changes", "peer", p.cfg.Name, "victim", victim)
	n.mu.Lock()
	n.event("split-brain", p.cfg.Name, "", "", "resolved automatically (after-sb-0pri discard-zero-changes): "+victim+" discards its data")
	n.unlock()
	return decide.Compare(*me, *them)
}

// exchangeStates sends mine and reads the peer's State: the first step of
// a data session's negotiation and of a vote-only one (witness.go).
func (p *peer) exchangeStates(c *protocol.Conn, mine protocol.State) (protocol.State, error) {
	var theirs protocol.State
	if err := c.Send(0, protocol.TypeState, 0, 0, mine.Append(nil), nil); err != nil {
		return theirs, fmt.Errorf("send state: %w", err)
	}
	f, err := p.expect(c, protocol.TypeState, "state")
	if err != nil {
		return theirs, err
	}
	if err := theirs.Decode(f.Payload); err != nil {
		return theirs, err
	}
	return theirs, nil
}

// negotiate runs the start of a session on an authenticated connection:
// both sides send their State, the generation identifiers decide how their
// data relate (decide.Compare) and who resyncs from whom (decide.Plan),
// the bitmaps are exchanged and OR'ed, and the session is attached to p.
// A refusal (split brain, two Primaries, unrelated data) is sent to the
// peer and returned as a *verdictError.
func (p *peer) negotiate(s *session) error {
	n, c := p.n, s.c
	c.SetDeadline(time.Now().Add(n.cfg.Timeout))
	n.mu.Lock()
	me := p.sideLocked()
	mine := p.stateLocked(0)
	n.mu.Unlock()
	theirs, err := p.exchangeStates(c, mine)
	if err != nil {
		return err
	}
	them := decide.Side{ID: p.cfg.ID, Name: p.cfg.Name, Role: api.Role(theirs.Role), Disk: bitmap.DiskState(theirs.Disk), Current: theirs.Current,
		Bitmap: theirs.Bitmap, History: theirs.History, Discard: theirs.Flags&protocol.StateDiscardMyData != 0,
		CrashedPrimary: theirs.Flags&protocol.StateCrashedPrim != 0}
	s.sync.csums = n.cfg.CSums && theirs.Flags&protocol.StateCSums != 0
	v, err := p.quorumVerdict(&me, &them, mine.Flags&protocol.StateQuorate != 0, theirs.Flags&protocol.StateQuorate != 0, int64(theirs.OutOfSync))
	if err != nil {
		c.Refuse(time.Second, err.Error())
		return &verdictError{err}
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
	plan := decide.Plan(v, me, them, p.bitmap.Count() > 0)
	if plan == api.SyncSource && p.sync.userPaused {
		plan = api.PausedSync // pause-sync by the operator
	}
	c.SetDeadline(time.Time{})

	n.mu.Lock()
	if n.role != me.Role || n.super.Disk != me.Disk && plan != api.SyncTarget {
		n.mu.Unlock()
		return errors.New("local state changed during the handshake; renegotiating")
	}
	if plan == api.SyncTarget {
		if err := n.persist(func(sb *bitmap.Superblock) {
			sb.Disk = diskInconsistent
			sb.Flags |= bitmap.FlagResyncTarget
		}); err != nil {
			n.mu.Unlock()
			return err
		}
	}
	settle := plan == api.Established && v.Rel == decide.RelInSync && n.role == api.Secondary && them.Role == api.Secondary
	if settle {
		p.bitmap.ClearAll() // before the checks below; settleLocked clears again atomically
	}
	if plan == api.Established && n.role == api.Primary && p.bitmap.Count() > 0 && !n.detached.Load() {
		plan = api.SyncSource // written to while we were negotiating
	}
	if plan == api.Established && n.super.GI.Bitmap[p.slot] != 0 && p.bitmap.Count() == 0 {
		// In sync: the generation the peer was last seen at is history.
		if err := n.persist(func(sb *bitmap.Superblock) { sb.GI.Bitmap[p.slot] = 0 }); err != nil {
			n.mu.Unlock()
			return err
		}
	}
	p.sess = s
	p.verdict = v
	p.discard = false
	p.lastErr = ""
	p.splitBrain = false
	p.connects++
	p.peerRole, p.peerDisk = them.Role, them.Disk
	p.state = theirs
	n.notePrimaryLocked(p)
	n.journal.Start(&p.progress)
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
	p.sendStateLocked(0)
	n.unlock()
	n.log.Info("peer connected", "peer", p.cfg.Name, "relation", v.Rel.String(), "replication", plan.String(), "out_of_sync", p.bitmap.DirtyBytes())
	return nil
}

// expect reads the next frame of the negotiation, which must be of type t:
// a Refuse becomes a *protocol.RefusedError, any other type an error.
func (p *peer) expect(c *protocol.Conn, t protocol.Type, what string) (protocol.Frame, error) {
	f, err := c.ReadFrame(0)
	if err != nil {
		return f, p.readErr("read "+what, err)
	}
	if f.Type == protocol.TypeRefuse {
		return f, &protocol.RefusedError{Reason: protocol.ReasonText(f.Payload)}
	}
	if f.Type != t {
		return f, fmt.Errorf("%w: %s from %s while waiting for %s", protocol.ErrUnexpected, f.Type, p.cfg.Name, t)
	}
	return f, nil
}

// noteDiscard logs and reports (a discard event) that victim's data is
// discarded by a resync from the Primary with quorum, and why.
func (p *peer) noteDiscard(victim, logMsg, why string) {
	n := p.n
	n.log.Warn(logMsg, "peer", p.cfg.Name, "victim", victim)
	n.mu.Lock()
	n.event("discard", p.cfg.Name, "", victim, why)
	n.unlock()
}

// quorumVerdict compares the two sides at connect, with what quorum adds
// (quorum.go): of two Primaries the one without its lease steps down (it
// was replaced) and both connect again; data diverged from a Primary that
// holds its lease (meQuorate, themQuorate: the flags each side sent) is the
// other side's, never acknowledged under quorum, and is discarded by a
// resync from that Primary; any other divergence waits for that Primary
// instead of being reported as split brain. The error is a quiet refusal:
// connect again later.
func (p *peer) quorumVerdict(me, them *decide.Side, meQuorate, themQuorate bool, theirChanges int64) (decide.Verdict, error) {
	n := p.n
	if !n.quorumOn() {
		v := decide.Compare(*me, *them)
		if errors.Is(v.Err, ErrSplitBrain) {
			v = p.autoResolve(v, me, them, theirChanges)
		}
		return v, nil
	}
	if me.Role == api.Primary && them.Role == api.Primary {
		switch {
		case themQuorate && !meQuorate:
			n.mu.Lock()
			n.stepDownLocked(fmt.Sprintf("%s is Primary and holds its lease", p.cfg.Name))
			n.unlock()
			return decide.Verdict{}, fmt.Errorf("%w: %s stepped down for %s, the Primary with quorum; connecting again", ErrRefused, n.cfg.Self.Name, p.cfg.Name)
		case meQuorate && !themQuorate:
			return decide.Verdict{}, fmt.Errorf("%w: %s holds the lease as Primary; %s must step down; connecting again", ErrRefused, n.cfg.Self.Name, p.cfg.Name)
		case !meQuorate && !themQuorate:
			return decide.Verdict{}, fmt.Errorf("%w: %s and %s are both Primary and neither holds its lease; waiting for one to be confirmed", ErrRefused, n.cfg.Self.Name, p.cfg.Name)
		}
	}
	v := decide.Compare(*me, *them)
	if v.CutResync {
		r, victim, ok := decide.ResolveCutResync(v, me, them, meQuorate, themQuorate)
		if ok {
			p.noteDiscard(victim.Name, "cut resync resolved by the Primary with quorum",
				fmt.Sprintf("%s is Inconsistent after a cut resync, with a generation that diverged from the Primary's; the Primary, which holds its lease, resyncs the whole device to it", victim.Name))
		}
		return r, nil
	}
	if !errors.Is(v.Err, ErrSplitBrain) && !errors.Is(v.Err, ErrUnrelated) && !(v.Rel == decide.RelPeerNewer && me.Role == api.Primary) {
		return v, nil
	}
	switch {
	case themQuorate:
		me.Discard = true
	case meQuorate:
		them.Discard = true
	default:
		return decide.Verdict{}, fmt.Errorf("%w: the data of %s and %s diverged; with quorum the Primary that holds its lease decides; connecting again later", ErrRefused, n.cfg.Self.Name, p.cfg.Name)
	}
	if me.Role == api.Primary && me.Discard {
		n.mu.Lock()
		n.stepDownLocked(fmt.Sprintf("%s is Primary with quorum and its data diverged from this node's", p.cfg.Name))
		n.unlock()
		return decide.Verdict{}, fmt.Errorf("%w: %s stepped down; connecting again", ErrRefused, n.cfg.Self.Name)
	}
	victim := n.cfg.Self.Name
	if them.Discard {
		victim = p.cfg.Name
	}
	p.noteDiscard(victim, "diverged data resolved by quorum",
		fmt.Sprintf("%s's changes since it last shared a generation with the Primary that holds quorum were never acknowledged under quorum: they are discarded by a resync", victim))
	return decide.Compare(*me, *them), nil
}
