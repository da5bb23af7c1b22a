package protocol

import "fmt"

// Type is a frame's message type. Part of the wire format.
type Type uint8

// Message types. Part of the wire format: values never change meaning.
// What each may carry, and when, is in typeTable below; the Reader
// enforces it.
const (
	TypeHello      Type = 1  // Hello; handshake only
	TypeAuth       Type = 2  // Auth; handshake only
	TypeRefuse     Type = 3  // UTF-8 reason; readable at any version
	TypeState      Type = 4  // State
	TypeWrite      Type = 5  // Write (or DedupWrite with FlagDedup); seq = sequence number
	TypeAck        Type = 6  // seq = every write up to seq applied (cumulative)
	TypeBarrier    Type = 7  // seq = barrier number (in the write sequence)
	TypeBarrierAck Type = 8  // seq = barrier durable, and all before it
	TypePing       Type = 9  // seq = token
	TypePong       Type = 10 // seq = token of the ping answered
	TypeBitmap     Type = 11 // Bitmap extents; FlagLast on the final one
	TypeResyncReq  Type = 12 // Range: target asks for blocks (reserved)
	TypeResyncDone Type = 13 // ResyncDone; seq = last barrier of the resync
	// TypeDataReq asks the sender for the full data of write seq (dedup.go).
	TypeDataReq Type = 14
	// 15 reserved.

	// Checksum-based resync and online verify (sync.go).

	// TypeCsums: Hashes of blocks the sync target has marked; the source
	// keeps the bits of blocks that differ and clears the others.
	TypeCsums Type = 16
	// TypeCsumsDone: the sync target sent the hashes of every marked
	// block; the source now sends the blocks still marked.
	TypeCsumsDone Type = 17
	// TypeVerify: Hashes of the verify source's blocks; seq is a sequence
	// number in the write stream, so both sides hash the same state.
	TypeVerify Type = 18
	// TypeVerifyReply: Mismatches, the verify target's answer to one
	// Verify (seq = the Verify's).
	TypeVerifyReply Type = 19

	// Promotion and peer sequence numbers (cluster.go).

	TypePromoteReq   Type = 20 // seq = request token
	TypePromoteReply Type = 21 // seq = the request's token; UTF-8 refusal, empty when granted
	TypePromoteEnd   Type = 22 // seq = the request's token
	TypePeerSeqs     Type = 23 // PeerSeqs

	// Quorum: a Primary's lease (cluster.go).

	// TypeLease: seq = the request's token (its send time on the Primary's
	// monotonic clock, ns); payload: the data generation (u64).
	TypeLease Type = 24
	// TypeLeaseAck: seq = the request's token; payload: the generation
	// acknowledged, or with FlagLeaseRefused the UTF-8 reason.
	TypeLeaseAck Type = 25

	// Snapshots (snapshot.go).

	// TypeSnapshot: seq = a sequence number in the write stream; payload:
	// the snapshot's name.
	TypeSnapshot Type = 26
	// TypeSnapshotAck: seq = the Snapshot's; with FlagSnapshotFailed the
	// UTF-8 reason it was not created.
	TypeSnapshotAck Type = 27
	// TypeSnapshotReq: seq = request token; payload: SnapshotReq.
	TypeSnapshotReq Type = 28
	// TypeSnapshotReply: seq = the request's token; payload: the nodes
	// that created it, or with FlagSnapshotFailed the UTF-8 reasons.
	TypeSnapshotReply Type = 29

	typeMax = TypeSnapshotReply
)

// When a frame type may travel.
const (
	preAuth  = 1 << iota // during the handshake, before both sides proved the secret
	postAuth             // after the handshake
)

// typeInfo is what the Reader and Writer know of a frame type.
type typeInfo struct {
	name  string
	when  uint8  // preAuth, postAuth or both
	limit uint32 // the most payload bytes, encoded and decoded
}

// Payload bounds of the message types (see each type's layout).
const (
	// MaxReason bounds the UTF-8 text of Refuse and PromoteReply frames;
	// Conn.Refuse cuts longer reasons.
	MaxReason = 1024
	// MaxHelloSize is the largest Hello payload: the fixed fields and two
	// names of MaxNameLen bytes.
	MaxHelloSize = helloFixed + 2*(2+MaxNameLen)
	// MaxPreAuthPayload bounds every frame read before the handshake
	// completed, whatever its type.
	MaxPreAuthPayload = MaxReason
	stateSize         = 4 + 5*8 + 1 + 8
	hashesHead        = 8 + 8 + 4
	maxHashesSize     = hashesHead + MaxSums*SumSize
	maxMismatchesSize = 16 + 4 + MaxSums*16
	maxBitmapSize     = 4 + MaxExtents*16
	maxPeerSeqsSize   = 1 + MaxPeerSeqs*9
)

// typeTable is every frame type: its name, when it may travel and how
// much it may carry. Part of the wire format. A type missing here is
// unknown and refused.
var typeTable = [typeMax + 1]typeInfo{
	TypeHello:         {"Hello", preAuth, MaxHelloSize},
	TypeAuth:          {"Auth", preAuth, AuthSize},
	TypeRefuse:        {"Refuse", preAuth | postAuth, MaxReason},
	TypeState:         {"State", postAuth, stateSize},
	TypeWrite:         {"Write", postAuth, MaxPayload},
	TypeAck:           {"Ack", postAuth, 0},
	TypeBarrier:       {"Barrier", postAuth, 0},
	TypeBarrierAck:    {"BarrierAck", postAuth, 0},
	TypePing:          {"Ping", postAuth, 0},
	TypePong:          {"Pong", postAuth, 0},
	TypeBitmap:        {"Bitmap", postAuth, maxBitmapSize},
	TypeResyncReq:     {"ResyncReq", postAuth, 16},
	TypeResyncDone:    {"ResyncDone", postAuth, 8},
	TypeDataReq:       {"DataReq", postAuth, 0},
	TypeCsums:         {"Csums", postAuth, maxHashesSize},
	TypeCsumsDone:     {"CsumsDone", postAuth, 0},
	TypeVerify:        {"Verify", postAuth, maxHashesSize},
	TypeVerifyReply:   {"VerifyReply", postAuth, maxMismatchesSize},
	TypePromoteReq:    {"PromoteReq", postAuth, 1}, // 1: an election
	TypePromoteReply:  {"PromoteReply", postAuth, MaxReason},
	TypePromoteEnd:    {"PromoteEnd", postAuth, 0},
	TypePeerSeqs:      {"PeerSeqs", postAuth, maxPeerSeqsSize},
	TypeLease:         {"Lease", postAuth, 8},
	TypeLeaseAck:      {"LeaseAck", postAuth, MaxReason},
	TypeSnapshot:      {"Snapshot", postAuth, MaxNameLen},
	TypeSnapshotAck:   {"SnapshotAck", postAuth, MaxReason},
	TypeSnapshotReq:   {"SnapshotReq", postAuth, maxSnapshotReqSize},
	TypeSnapshotReply: {"SnapshotReply", postAuth, MaxReason},
}

// info returns t's entry, or nil for an unknown type.
func (t Type) info() *typeInfo {
	if t == 0 || t > typeMax || typeTable[t].name == "" {
		return nil
	}
	return &typeTable[t]
}

func (t Type) String() string {
	if ti := t.info(); ti != nil {
		return ti.name
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// MaxPayloadOf is the most payload bytes a frame of type t may carry (0
// for an unknown type).
func MaxPayloadOf(t Type) int {
	if ti := t.info(); ti != nil {
		return int(ti.limit)
	}
	return 0
}
