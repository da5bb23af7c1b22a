package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/repd/repd/bitmap"
)

// Role is a node's role.
type Role uint8

// Roles.
const (
	Secondary Role = 0
	Primary   Role = 1
)

func (r Role) String() string {
	if r == Primary {
		return "Primary"
	}
	return "Secondary"
}

// MarshalText implements encoding.TextMarshaler.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Disk is a disk state (UpToDate, Inconsistent, ...), as stored in the meta
// file.
type Disk = bitmap.DiskState

// Disk states.
const (
	Diskless     = bitmap.DiskDiskless
	Inconsistent = bitmap.DiskInconsistent
	Outdated     = bitmap.DiskOutdated
	UpToDate     = bitmap.DiskUpToDate
	Failed       = bitmap.DiskFailed
)

// ConnState is the connection state toward one peer.
type ConnState uint8

// Connection states.
const (
	StandAlone ConnState = iota
	Connecting
	Connected
)

func (c ConnState) String() string {
	switch c {
	case StandAlone:
		return "StandAlone"
	case Connecting:
		return "Connecting"
	case Connected:
		return "Connected"
	}
	return fmt.Sprintf("ConnState(%d)", uint8(c))
}

// MarshalText implements encoding.TextMarshaler.
func (c ConnState) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// Repl is the replication state toward a connected peer.
type Repl uint8

// Replication states. PausedSync: the two nodes differ but neither is
// Primary, so no resync runs until one of them is promoted (a resync between
// two secondaries could race the primary's own stream).
const (
	ReplOff Repl = iota
	Established
	SyncSource
	SyncTarget
	PausedSync
	Ahead
	Behind
	VerifySource
	VerifyTarget
)

var replNames = [...]string{"Off", "Established", "SyncSource", "SyncTarget", "PausedSync", "Ahead", "Behind", "VerifySource", "VerifyTarget"}

func (r Repl) String() string {
	if int(r) < len(replNames) {
		return replNames[r]
	}
	return fmt.Sprintf("Repl(%d)", uint8(r))
}

// MarshalText implements encoding.TextMarshaler.
func (r Repl) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Protocol is the replication protocol.
type Protocol byte

// Protocols: A completes a write once it is written locally and journaled;
// C once every connected peer has it too.
const (
	ProtocolA Protocol = 'A'
	ProtocolC Protocol = 'C'
)

func (p Protocol) String() string { return string(rune(p)) }

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) { return []byte{byte(p)}, nil }

// Sentinel errors, for the admin API to map to exit codes. Returned errors
// wrap one of them with a sentence giving the reason and the remedy.
var (
	// ErrRefused: the operation is not allowed in the current state.
	ErrRefused = errors.New("refused")
	// ErrNotPrimary: an I/O that needs the Primary role; wraps EPERM too.
	ErrNotPrimary = errors.New("not primary")
	// ErrUnknownPeer: no such peer in the configuration.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrClosed: the node is closed.
	ErrClosed = errors.New("node closed")
	// ErrSplitBrain: two nodes both changed the data since they last agreed.
	ErrSplitBrain = errors.New("split brain")
	// ErrUnrelated: a peer's data shares no history with ours.
	ErrUnrelated = errors.New("unrelated data")
)

// Event is a state change, for the events stream.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // role, disk, connection, replication, split-brain, error, peer-role, peer-disk
	Peer    string    `json:"peer,omitempty"`
	Old     string    `json:"old,omitempty"`
	New     string    `json:"new,omitempty"`
	Message string    `json:"message,omitempty"`
}

// Status is a snapshot of the node's state.
type Status struct {
	Resource     string       `json:"resource"`
	Node         string       `json:"node"`
	NodeID       uint8        `json:"node_id"`
	Role         Role         `json:"role"`
	Disk         string       `json:"disk"`
	Protocol     Protocol     `json:"protocol"`
	Size         int64        `json:"size"`
	CurrentUUID  string       `json:"current_uuid"`
	JournalBytes int64        `json:"journal_bytes"`
	JournalMax   int64        `json:"journal_max"`
	JournalAgeMS int64        `json:"journal_age_ms"`
	Writes       int64        `json:"writes"`
	Peers        []PeerStatus `json:"peers"`
}

// PeerStatus is one peer's part of Status.
type PeerStatus struct {
	Name         string    `json:"name"`
	NodeID       uint8     `json:"node_id"`
	Address      string    `json:"address"`
	Connection   ConnState `json:"connection"`
	Replication  Repl      `json:"replication"`
	Role         string    `json:"role,omitempty"`
	Disk         string    `json:"disk,omitempty"`
	OutOfSyncKiB int64     `json:"out_of_sync_kib"`
	SyncPercent  *float64  `json:"sync_percent,omitempty"`
	// Resync progress (while SyncSource, SyncTarget or PausedSync).
	SyncLeftBytes       int64 `json:"sync_left_bytes,omitempty"`
	SyncRateBytesPerSec int64 `json:"sync_rate_bytes_per_sec,omitempty"`
	SyncETASeconds      int64 `json:"sync_eta_seconds,omitempty"`
	SyncPausedByUser    bool  `json:"sync_paused_by_user,omitempty"`
	CSumsEqualBytes     int64 `json:"csums_equal_bytes,omitempty"` // checksum resync: bytes found equal, not sent
	// Online verify: progress while VerifySource/VerifyTarget, and the
	// differences the last verify found (marked out of sync).
	VerifyPercent      *float64 `json:"verify_percent,omitempty"`
	VerifiedBytes      int64    `json:"verified_bytes,omitempty"`
	VerifyMismatchKiB  int64    `json:"verify_mismatches_kib"`
	VerifyRateBytesSec int64    `json:"verify_rate_bytes_per_sec,omitempty"`
	BitmapUUID         string   `json:"bitmap_uuid,omitempty"`
	SplitBrain         bool     `json:"split_brain,omitempty"`
	LastError          string   `json:"last_error,omitempty"`
	BytesSent          int64    `json:"bytes_sent"`
	BytesReceived      int64    `json:"bytes_received"`
	BadFrames          int64    `json:"bad_frames"`
	Connects           int64    `json:"connects"`
	Resyncs            int64    `json:"resyncs"`
	ResyncedBytes      int64    `json:"resynced_bytes"`
	Acks               int64    `json:"acks"`           // write acknowledgements received from the peer
	AckLatencyUS       int64    `json:"ack_latency_us"` // recent send→ack latency (EWMA), µs
	// Transport: data bytes of the writes and resync blocks shipped
	// (before dedup and compression), and LogicalBytes / BytesSent.
	LogicalBytes     int64   `json:"bytes_logical"`
	CompressionRatio float64 `json:"compression_ratio"`
	DedupBlocks      int64   `json:"dedup_blocks"`      // 4 KiB blocks sent as references
	DedupBytesSaved  int64   `json:"dedup_bytes_saved"` // their data, not sent
	ZeroBlocks       int64   `json:"zero_blocks"`       // 4 KiB zero blocks sent as markers
	DedupMisses      int64   `json:"dedup_misses"`      // references the peer could not resolve (data resent)
	AuthFailures     int64   `json:"auth_failures"`     // handshakes with the peer that failed authentication
}

// String renders a status as indented JSON (for logs and tests).
func (s Status) String() string {
	b, _ := json.MarshalIndent(s, "", "  ")
	return string(b)
}

func uuidString(u uint64) string {
	if u == 0 {
		return ""
	}
	return fmt.Sprintf("%016X", u)
}
