package protocol

import (
	"fmt"
	"slices"
)

// Snapshots in the write stream. Part of the wire format; sent only to
// peers announcing FeatureSnapshot.
//
// A snapshot is a point of the Primary's write sequence. The Primary sends
// Snapshot (seq = its sequence number, payload = the snapshot's name) to
// the nodes that take it, in order with the writes: a receiver takes the
// snapshot once every earlier write is applied and flushed, before any
// later one is applied, and answers SnapshotAck (same seq; an empty
// payload when the snapshot was created, else the UTF-8 reason it was
// not) before its cumulative Ack covers seq.
//
// A Secondary asks the Primary for a snapshot with SnapshotReq (seq = a
// request token) and gets SnapshotReply (same seq) once the snapshot
// exists on the nodes asked for, or failed on one of them.
//
//	Snapshot       name (1..MaxNameLen bytes: letters, digits, '-', '_', '.')
//	SnapshotAck    empty: created; with FlagSnapshotFailed the UTF-8 reason
//	SnapshotReq    flags u8 | count u8 | count × node id u8 | name
//	SnapshotReply  the names of the nodes that created it, comma-separated;
//	               with FlagSnapshotFailed the UTF-8 reasons instead
//
// SnapshotReq's flags: SnapAll (every connected UpToDate node; no ids
// follow). Without SnapAll and with no ids the snapshot is for the
// requester only.

// FeatureSnapshot: takes snapshots in the write stream (Snapshot,
// SnapshotAck) and asks for them (SnapshotReq, SnapshotReply). Builds
// before 2026-12-06 announced it with bit 5, FeatureFrameMAC's, which a
// link without frame MACs clears: such a peer is taken for one that
// cannot take snapshots (refused with "upgrade it"), never for one that
// can.
const FeatureSnapshot uint64 = 1 << 6

// FlagSnapshotFailed marks a SnapshotAck or SnapshotReply whose snapshot
// was not created (on some node, for a reply); the payload says why.
const FlagSnapshotFailed Flags = 1 << 0

// SnapAll in a SnapshotReq's flags: every connected UpToDate node.
const SnapAll uint8 = 1 << 0

// MaxSnapshotNodes bounds the node ids of one SnapshotReq (node ids are
// 0..15 in a resource file; the bound leaves room).
const MaxSnapshotNodes = 64

const maxSnapshotReqSize = 2 + MaxSnapshotNodes + MaxNameLen

// DecodeSnapshotName checks a Snapshot payload: a name of 1 to MaxNameLen
// letters, digits, '-', '_' or '.' (it becomes an NBD export name,
// RESOURCE@NAME).
func DecodeSnapshotName(p []byte) (string, error) {
	if !ValidName(string(p)) {
		return "", fmt.Errorf("%w: Snapshot names %s: want 1 to %d letters, digits, '-', '_' or '.'", ErrCorrupt, quoteName(string(p)), MaxNameLen)
	}
	return string(p), nil
}

// SnapshotReq is a Secondary's request for a snapshot.
type SnapshotReq struct {
	Name  string
	All   bool    // every connected UpToDate node
	Nodes []uint8 // the nodes to take it (none and not All: the requester)
}

// Append appends the payload encoding of r to b. Names and node lists
// beyond the bounds are the caller's error: Decode refuses them.
func (r *SnapshotReq) Append(b []byte) []byte {
	var f uint8
	if r.All {
		f |= SnapAll
	}
	b = append(b, f, uint8(len(r.Nodes)))
	b = append(b, r.Nodes...)
	return append(b, r.Name...)
}

// Decode parses a SnapshotReq payload: known flags only, at most
// MaxSnapshotNodes distinct ids (none with SnapAll), a valid name.
func (r *SnapshotReq) Decode(p []byte) error {
	d := decoder{p: p}
	f := d.u8()
	n := int(d.u8())
	if d.bad {
		return fmt.Errorf("%w: short SnapshotReq payload", ErrCorrupt)
	}
	if f&^SnapAll != 0 {
		return fmt.Errorf("%w: SnapshotReq flags %#x", ErrCorrupt, f)
	}
	if n > MaxSnapshotNodes || n > len(d.p) || f&SnapAll != 0 && n != 0 {
		return fmt.Errorf("%w: SnapshotReq lists %d nodes in %d bytes (at most %d, none with all)", ErrCorrupt, n, len(d.p), MaxSnapshotNodes)
	}
	ids := d.bytes(n)
	r.All = f&SnapAll != 0
	r.Nodes = append(r.Nodes[:0], ids...)
	for i, id := range r.Nodes {
		if slices.Contains(r.Nodes[:i], id) {
			return fmt.Errorf("%w: SnapshotReq lists node %d twice", ErrCorrupt, id)
		}
	}
	name, err := DecodeSnapshotName(d.p)
	if err != nil {
		return err
	}
	r.Name = name
	return nil
}

// SnapshotReason reads the text of a SnapshotAck or SnapshotReply (a
// reason, or a reply's node names), cleaned for a log line (ReasonText).
func SnapshotReason(p []byte) string { return ReasonText(p) }
