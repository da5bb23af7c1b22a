package protocol

import (
	"encoding/binary"
	"fmt"
)

// Cluster-wide state changes and what a Secondary needs to know about its
// fellow peers. Part of the wire format; sent only to peers announcing
// FeatureCluster.
//
// Promotion is a two-phase change, like DRBD 9's cluster-wide state change:
// the node to be promoted sends PromoteReq (seq = a request token) to every
// connected peer and becomes Primary only once each answered PromoteReply
// (same seq) with an empty payload (granted). A non-empty payload is the
// UTF-8 reason of a refusal. A peer that granted holds the grant (it neither
// promotes itself nor grants anyone else) until the requester sends
// PromoteEnd (same seq) or the connection ends. The requester sends its new
// State before PromoteEnd, so the peer sees it Primary first.
//
// PeerSeqs, from a Primary to a Secondary, says for other nodes up to which
// write sequence number each holds every write of the Primary (it acked
// them and nothing older is marked out of sync toward it). A Secondary keeps
// the ranges of the writes it applied until every other node is known to
// hold them; if the Primary is lost first it marks them out of sync toward
// the nodes that may lack them.
//
//	count u8 | count × (node id u8 | seq u64)
//
// Lease (with quorum): a Primary asks every voter, a few times per
// timeout and at once when its data generation changes, to acknowledge
// its lease for that generation. seq is the request's token (its send
// time on the Primary's monotonic clock, in nanoseconds), the payload the
// generation (u64). LeaseAck carries the same seq and generation; with
// FlagLeaseRefused its payload is the UTF-8 reason instead. A voter that
// acknowledges promises not to help another node to the Primary role for
// a while after it received the request (replica/quorum.go).
//
// The frame types are TypePromoteReq, TypePromoteReply, TypePromoteEnd,
// TypePeerSeqs, TypeLease and TypeLeaseAck (types.go). A PromoteReq's one
// optional payload byte, 1, marks an election.

// StateQuorate in a State's flags: the sender is a Primary holding its
// lease (a quorum acknowledged its data generation). Every write
// acknowledged anywhere under quorum is in its data: a node whose data
// diverged from it discards its changes and resyncs from it.
const StateQuorate uint8 = 1 << 4

// FlagLeaseRefused marks a LeaseAck that refuses the lease.
const FlagLeaseRefused Flags = 1 << 0

// FeatureCluster: answers PromoteReq and understands PromoteEnd, PeerSeqs
// and StateOutdated.
const FeatureCluster uint64 = 1 << 3

// StateOutdated in a State's flags: the sending Primary is leaving (Close);
// the frame's seq is its final barrier. A receiver whose connection ends
// before it acknowledged that barrier lacks writes: it marks its disk
// Outdated.
const StateOutdated uint8 = 1 << 5

// PeerSeq is one node's entry in PeerSeqs.
type PeerSeq struct {
	NodeID uint8
	Seq    uint64
}

// MaxPeerSeqs bounds the entries of one PeerSeqs payload.
const MaxPeerSeqs = 64

// AppendPeerSeqs appends a PeerSeqs payload.
func AppendPeerSeqs(b []byte, ps []PeerSeq) []byte {
	if len(ps) > MaxPeerSeqs {
		ps = ps[:MaxPeerSeqs]
	}
	b = append(b, uint8(len(ps)))
	for _, p := range ps {
		b = append(b, p.NodeID)
		b = binary.LittleEndian.AppendUint64(b, p.Seq)
	}
	return b
}

// DecodePeerSeqs parses a PeerSeqs payload, appending to ps.
func DecodePeerSeqs(p []byte, ps []PeerSeq) ([]PeerSeq, error) {
	d := decoder{p: p}
	n := int(d.u8())
	if n > MaxPeerSeqs || len(d.p) != 9*n {
		return ps, fmt.Errorf("%w: PeerSeqs says %d entries in %d bytes", ErrCorrupt, n, len(p))
	}
	for range n {
		ps = append(ps, PeerSeq{NodeID: d.u8(), Seq: d.u64()})
	}
	return ps, d.done("PeerSeqs")
}
