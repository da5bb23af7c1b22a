// Package decide holds the decisions of the replication engine as plain
// functions of their inputs: how two nodes that connect relate and who
// resyncs from whom (Compare, Plan), who may be promoted or demoted, when a
// new data generation starts (NeedRotate, Rotate), which peers receive
// writes, and the automatic split-brain policy. No sockets, files, clocks
// or locks: the goroutines that move bytes, in package replica, call them,
// and table tests tell their stories.
package decide

import (
	"errors"
	"fmt"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/config"
)

// Disk is a disk state, as the meta file stores it.
type Disk = bitmap.DiskState

// Disk states.
const (
	Diskless     = bitmap.DiskDiskless
	Inconsistent = bitmap.DiskInconsistent
	Outdated     = bitmap.DiskOutdated
	UpToDate     = bitmap.DiskUpToDate
	Failed       = bitmap.DiskFailed
)

// Sentinel errors; replica exports the same values. A returned error wraps
// one of them with a sentence giving the reason and the remedy.
var (
	// ErrRefused: the operation is not allowed in the current state.
	ErrRefused = errors.New("refused")
	// ErrSplitBrain: two nodes both changed the data since they last agreed.
	ErrSplitBrain = errors.New("split brain")
	// ErrUnrelated: a peer's data shares no history with ours.
	ErrUnrelated = errors.New("unrelated data")
)

// Side is one node as seen in a connect decision: its role, disk, and
// generation identifiers, with Bitmap its bitmap UUID for the other node.
type Side struct {
	ID             uint8
	Name           string
	Role           api.Role
	Disk           Disk
	Current        uint64
	Bitmap         uint64
	History        [2]uint64
	Discard        bool // connect --discard-my-data
	CrashedPrimary bool
}

// Relation is how two nodes' data relate, from their generation identifiers.
type Relation uint8

// Relations.
const (
	RelInSync     Relation = iota // same current UUID
	RelMeNewer                    // I have changes the peer lacks
	RelPeerNewer                  // the peer has changes I lack
	RelSplitBrain                 // both changed since the common ancestor
	RelUnrelated                  // no common ancestor
)

var relNames = [...]string{"in sync", "this node newer", "peer newer", "split brain", "unrelated"}

func (r Relation) String() string { return relNames[r] }

// Verdict is the outcome of comparing two sides at connect.
type Verdict struct {
	Rel Relation
	// SourceIsMe: I am the sync source if a sync is needed (for RelInSync:
	// if the bitmaps hold anything).
	SourceIsMe bool
	// Full: the source must send every block; the bitmaps do not cover the
	// difference.
	Full bool
	// Err refuses the connection (wraps ErrRefused, ErrSplitBrain or
	// ErrUnrelated) with a sentence for the operator.
	Err error
	// CutResync: Err refuses because one side is Inconsistent (a resync
	// toward it was cut) with a generation diverging from the other's;
	// Rel is RelSplitBrain.
	CutResync bool
}

func inHistory(u uint64, h [2]uint64) bool { return u != 0 && (h[0] == u || h[1] == u) }

// Compare decides, from both sides' generation identifiers and roles, how
// two nodes that just connected relate and who would be the sync source.
// It is symmetric: Compare(a, b) and Compare(b, a) agree.
func Compare(me, peer Side) Verdict {
	v := relate(me, peer)
	if v.Rel == RelSplitBrain && !me.Discard && !peer.Discard {
		for _, pair := range [2][2]*Side{{&me, &peer}, {&peer, &me}} {
			if s, o := pair[0], pair[1]; s.Disk == Inconsistent {
				// A resync target's generation is the one it had before
				// the resync; it takes its source's when the resync
				// ends. Diverging generations then say nothing yet:
				// connect again later (seen when two nodes connected
				// just as both finished resyncs from a third).
				return Verdict{Rel: RelSplitBrain, CutResync: true, Err: fmt.Errorf("%w: %s is Inconsistent (a resync toward it is under way or was cut) and its generation (%s) diverges from %s's (%s); connecting again, after its resync ends this resolves, or run connect --discard-my-data on %s",
					ErrRefused, s.Name, api.FormatUUID(s.Current), o.Name, api.FormatUUID(o.Current), s.Name)}
			}
		}
		v.Err = fmt.Errorf("%w: %s and %s both changed the data since they were last connected; on the node whose changes should be dropped run: connect --discard-my-data (after demoting it), and connect on the other", ErrSplitBrain, me.Name, peer.Name)
		return v
	}
	if me.Role == api.Primary && peer.Role == api.Primary {
		return Verdict{Err: fmt.Errorf("%w: both %s and %s are Primary; demote one of them, then connect", ErrRefused, me.Name, peer.Name)}
	}
	if me.Discard && peer.Discard {
		return Verdict{Err: fmt.Errorf("%w: both %s and %s asked to discard their data; only the victim of a split brain may", ErrRefused, me.Name, peer.Name)}
	}
	for _, s := range []*Side{&me, &peer} {
		if s.Discard && s.Role == api.Primary {
			return Verdict{Err: fmt.Errorf("%w: %s is Primary and cannot discard its data; demote it first", ErrRefused, s.Name)}
		}
	}
	switch {
	case me.Discard:
		full := v.Rel == RelUnrelated
		v = Verdict{Rel: RelPeerNewer, Full: full}
	case peer.Discard:
		full := v.Rel == RelUnrelated
		v = Verdict{Rel: RelMeNewer, SourceIsMe: true, Full: full}
	}
	switch v.Rel {
	case RelUnrelated:
		v.Err = fmt.Errorf("%w: %s and %s have no common data generation (current %s vs %s); connect --discard-my-data on the node to overwrite with a full sync", ErrUnrelated, me.Name, peer.Name, api.FormatUUID(me.Current), api.FormatUUID(peer.Current))
	case RelPeerNewer:
		if me.Role == api.Primary {
			v.Err = fmt.Errorf("%w: peer %s has data this Primary (%s) lacks; demote %s so it can become the sync target, or disconnect", ErrRefused, peer.Name, me.Name, me.Name)
		}
	case RelMeNewer:
		if peer.Role == api.Primary {
			v.Err = fmt.Errorf("%w: this node (%s) has data the Primary %s lacks; demote %s so it can become the sync target, or disconnect", ErrRefused, me.Name, peer.Name, peer.Name)
		}
	}
	return v
}

// ResolveCutResync resolves Compare's CutResync refusal v when the other
// side is the Primary that holds its lease (meLease, peerLease: each
// side's flag): the Inconsistent side discards its data (Discard is set on
// it) and becomes that Primary's sync target for the whole device, as the
// victim of a split brain would. The Primary has every write acknowledged
// under quorum, and an Inconsistent node holds nothing that matters (it
// cannot be promoted); after a cut resync and a divergence the bitmaps are
// not trusted to cover the difference, hence Full. Otherwise v stands
// (it resolves when a resync from another node ends): a resync runs only
// from a Primary, so no second stream races that one. Both sides reach the
// same answer from the same roles, disks and flags. ok reports a
// resolution; victim is the side that discards.
func ResolveCutResync(v Verdict, me, peer *Side, meLease, peerLease bool) (_ Verdict, victim *Side, ok bool) {
	switch {
	case !v.CutResync:
		return v, nil, false
	case peer.Role == api.Primary && peerLease && me.Disk == Inconsistent:
		victim = me
	case me.Role == api.Primary && meLease && peer.Disk == Inconsistent:
		victim = peer
	default:
		return v, nil, false
	}
	victim.Discard = true
	r := Compare(*me, *peer)
	if r.Err != nil { // not met: an Inconsistent side is never Primary
		victim.Discard = false
		return v, nil, false
	}
	r.Full = true
	return r, victim, true
}

func relate(me, peer Side) Verdict {
	switch {
	case me.Current == 0 && peer.Current == 0:
		return Verdict{Rel: RelInSync, SourceIsMe: preferSource(me, peer)}
	case me.Current == 0:
		return Verdict{Rel: RelPeerNewer, Full: true}
	case peer.Current == 0:
		return Verdict{Rel: RelMeNewer, SourceIsMe: true, Full: true}
	case me.Current == peer.Current:
		return Verdict{Rel: RelInSync, SourceIsMe: preferSource(me, peer)}
	case me.Bitmap != 0 && me.Bitmap == peer.Current:
		return Verdict{Rel: RelMeNewer, SourceIsMe: true}
	case peer.Bitmap != 0 && peer.Bitmap == me.Current:
		return Verdict{Rel: RelPeerNewer}
	case me.Bitmap != 0 && me.Bitmap == peer.Bitmap,
		inHistory(me.Bitmap, peer.History), inHistory(peer.Bitmap, me.History),
		inHistory(me.History[0], peer.History), inHistory(me.History[1], peer.History):
		return Verdict{Rel: RelSplitBrain}
	case inHistory(peer.Current, me.History):
		return Verdict{Rel: RelMeNewer, SourceIsMe: true, Full: true}
	case inHistory(me.Current, peer.History):
		return Verdict{Rel: RelPeerNewer, Full: true}
	}
	return Verdict{Rel: RelUnrelated}
}

// preferSource breaks the tie of two in-sync nodes whose bitmaps hold
// something: the Primary, else the one that crashed as Primary (its
// activity log marked the hot extents), else the UpToDate one, else the
// lower node id.
func preferSource(me, peer Side) bool {
	switch {
	case me.Role != peer.Role:
		return me.Role == api.Primary
	case me.CrashedPrimary != peer.CrashedPrimary:
		return me.CrashedPrimary
	case (me.Disk == UpToDate) != (peer.Disk == UpToDate):
		return me.Disk == UpToDate
	}
	return me.ID < peer.ID
}

// Plan turns a verdict into my replication state toward the peer once the
// bitmaps were exchanged and OR'ed (dirty: the union holds bits). A resync
// runs only from a Primary source (or toward a node that discards its data):
// between two Secondaries it waits (PausedSync) until one is promoted, so it
// never races a Primary's stream to the same target.
func Plan(v Verdict, me, peer Side, dirty bool) api.Repl {
	if v.Err != nil {
		return api.ReplOff
	}
	if failedDisk(me.Disk) || failedDisk(peer.Disk) {
		// A Failed disk is neither read nor written by a resync. A
		// detached Primary still replicates to an in-sync peer.
		if v.Rel == RelInSync && !v.Full && (me.Role == api.Primary && !failedDisk(peer.Disk) || peer.Role == api.Primary && !failedDisk(me.Disk)) {
			return api.Established
		}
		return api.ReplOff
	}
	if v.Rel == RelInSync && !dirty && !v.Full {
		return api.Established
	}
	if v.Rel == RelInSync && !v.Full && me.Role != api.Primary && peer.Role != api.Primary &&
		!me.CrashedPrimary && !peer.CrashedPrimary && me.Disk == UpToDate && peer.Disk == UpToDate {
		// Two secondaries of the same generation: their marks only
		// tracked writes both received from the Primary while they were
		// apart from each other. Nothing to sync; the caller clears them.
		return api.Established
	}
	src, dst := peer, me
	if v.SourceIsMe {
		src, dst = me, peer
	}
	if src.Disk != UpToDate && src.Disk != Outdated {
		return api.PausedSync
	}
	if src.Role != api.Primary && !dst.Discard {
		return api.PausedSync
	}
	if v.SourceIsMe {
		return api.SyncSource
	}
	return api.SyncTarget
}

func failedDisk(d Disk) bool { return d == Failed || d == Diskless }

// PeerView is what promote and the write path need to know of one peer.
type PeerView struct {
	Name      string
	Connected bool // connection established (any replication state)
	Role      api.Role
	Repl      api.Repl
	Newer     bool // the peer has data this node lacks (it would be our sync source)
}

// CanPromote says whether this node may become Primary.
func CanPromote(force bool, disk Disk, peers []PeerView) error {
	for _, p := range peers {
		if p.Connected && p.Role == api.Primary {
			return fmt.Errorf("%w: peer %s is Primary; demote it first or disconnect", ErrRefused, p.Name)
		}
	}
	switch disk {
	case Diskless, Failed:
		return fmt.Errorf("%w: local disk is %s; attach a working disk first", ErrRefused, disk)
	case UpToDate:
	default:
		if !force {
			return fmt.Errorf("%w: local disk is %s; use --force to promote anyway", ErrRefused, disk)
		}
	}
	if !force {
		for _, p := range peers {
			if p.Connected && p.Newer {
				return fmt.Errorf("%w: peer %s has newer data than this node; promote %s instead, or use --force", ErrRefused, p.Name, p.Name)
			}
		}
	}
	return nil
}

// CanDemote says whether this node may become Secondary.
func CanDemote(role api.Role) error {
	if role != api.Primary {
		return fmt.Errorf("%w: this node is already Secondary", ErrRefused)
	}
	return nil
}

// Receiving says whether a peer in this connection and replication state
// gets the primary's writes. Every other peer has them marked in its
// bitmap instead.
func Receiving(c api.ConnState, r api.Repl) bool {
	return c == api.Connected && (r == api.Established || r == api.SyncSource || r == api.VerifySource || r == api.VerifyTarget)
}

// NeedRotate says whether a Primary about to write must first start a new
// current UUID: some peer that does not receive the write has no bitmap
// UUID yet (the generation it last saw is not remembered).
func NeedRotate(peerBitmapUUIDs []uint64, receiving []bool) bool {
	for i, u := range peerBitmapUUIDs {
		if !receiving[i] && u == 0 {
			return true
		}
	}
	return false
}

// Rotate starts a new current UUID: every peer that is away and has no
// bitmap UUID gets the old current one (the generation it was last in sync
// with); the old current UUID goes to the history.
func Rotate(current uint64, bitmaps []uint64, history [2]uint64, away []bool, fresh uint64) (uint64, [2]uint64) {
	for i := range bitmaps {
		if away[i] && bitmaps[i] == 0 {
			bitmaps[i] = current
		}
	}
	if current != 0 {
		history = [2]uint64{current, history[0]}
	}
	return fresh, history
}

// AutoResolve applies the automatic split-brain policy after-sb-0pri when
// neither side is Primary: with "discard-zero-changes", a side that made no
// changes (nothing marked toward the other) discards its data; when neither
// made any, the higher node id does. It says which side discards; both are
// false when the policy does not apply (the operator decides).
func AutoResolve(policy config.SplitBrainPolicy, me, peer Side, myChanges, peerChanges int64) (discardMe, discardPeer bool) {
	if policy != config.SplitBrainDiscardZeroChanges || me.Role == api.Primary || peer.Role == api.Primary {
		return false, false
	}
	switch {
	case myChanges == 0 && peerChanges == 0:
		return me.ID > peer.ID, me.ID < peer.ID
	case myChanges == 0:
		return true, false
	case peerChanges == 0:
		return false, true
	}
	return false, false
}
