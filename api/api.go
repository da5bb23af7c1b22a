// Package api is repd's public JSON surface: the status object and the
// events a node reports, and the vocabulary they are written in (roles,
// connection and replication states, protocols). The admin API serves
// them, repctl, the metrics exporter and the test harnesses read them, and
// integrators may decode them with this package.
//
// The JSON field names are stable: new fields may be added, none renamed or
// removed (e2e's schema test holds the README's table to these types).
package api

import (
	"encoding/json"
	"fmt"
	"time"
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

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Role) UnmarshalText(b []byte) error {
	switch string(b) {
	case "Primary":
		*r = Primary
	case "Secondary":
		*r = Secondary
	default:
		return fmt.Errorf("unknown role %q", b)
	}
	return nil
}

// ConnState is the connection state toward one peer.
type ConnState uint8

// Connection states.
const (
	StandAlone ConnState = iota
	Connecting
	Connected
)

var connNames = [...]string{"StandAlone", "Connecting", "Connected"}

func (c ConnState) String() string {
	if int(c) < len(connNames) {
		return connNames[c]
	}
	return fmt.Sprintf("ConnState(%d)", uint8(c))
}

// MarshalText implements encoding.TextMarshaler.
func (c ConnState) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *ConnState) UnmarshalText(b []byte) error {
	for i, name := range connNames {
		if name == string(b) {
			*c = ConnState(i)
			return nil
		}
	}
	return fmt.Errorf("unknown connection state %q", b)
}

// Repl is the replication state toward a connected peer.
type Repl uint8

// Replication states. PausedSync: the two nodes differ but neither is
// Primary (or the operator paused the resync), so no resync runs.
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

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Repl) UnmarshalText(b []byte) error {
	for i, name := range replNames {
		if name == string(b) {
			*r = Repl(i)
			return nil
		}
	}
	return fmt.Errorf("unknown replication state %q", b)
}

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

// UnmarshalText implements encoding.TextUnmarshaler; "a" and "c" are
// accepted too.
func (p *Protocol) UnmarshalText(b []byte) error {
	if len(b) == 1 {
		switch b[0] {
		case 'A', 'a':
			*p = ProtocolA
			return nil
		case 'C', 'c':
			*p = ProtocolC
			return nil
		}
	}
	return fmt.Errorf("unknown protocol %q: use \"A\" (asynchronous) or \"C\" (synchronous)", b)
}

// Event is a state change, for the events stream.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // role, disk, connection, replication, split-brain, verify, error, peer-role, peer-disk, snapshot, backup
	Peer    string    `json:"peer,omitempty"`
	Old     string    `json:"old,omitempty"`
	New     string    `json:"new,omitempty"`
	Message string    `json:"message,omitempty"`

	// Snapshot names the snapshot of a "snapshot" event, whose New is
	// created, deleted, invalidated (Message: why) or failed (the store
	// file failed: reads of every snapshot are refused); and the snapshot
	// a "backup" event's backup read (New: full, inc or failed).
	Snapshot string `json:"snapshot,omitempty"`
}

// Status is a snapshot of a node's state.
type Status struct {
	Resource     string   `json:"resource"`
	Node         string   `json:"node"`
	NodeID       uint8    `json:"node_id"`
	Role         Role     `json:"role"`
	Disk         string   `json:"disk"` // UpToDate, Outdated, Inconsistent, Diskless, Failed
	Protocol     Protocol `json:"protocol"`
	Size         int64    `json:"size"`
	CurrentUUID  string   `json:"current_uuid"`
	JournalBytes int64    `json:"journal_bytes"`
	JournalMax   int64    `json:"journal_max"`
	JournalAgeMS int64    `json:"journal_age_ms"`
	Writes       int64    `json:"writes"`
	// Quorum (all zero when quorum is off): whether this node has it, the
	// votes present and needed among the resource's voters, the Primary's
	// lease ("held", "expired", or "" on a Secondary) and how long it has
	// left, writes and flushes waiting for quorum, and why the last
	// election ended as it did.
	Quorum       bool         `json:"quorum"`
	Votes        int          `json:"votes"`
	VotesNeeded  int          `json:"votes_needed"`
	Voters       int          `json:"voters"`
	Lease        string       `json:"lease,omitempty"`
	LeaseLeftMS  int64        `json:"lease_left_ms,omitempty"`
	SuspendedIO  int          `json:"suspended_io"`
	Witness      bool         `json:"witness,omitempty"`
	AutoPromote  bool         `json:"auto_promote,omitempty"`
	LastElection string       `json:"last_election,omitempty"`
	Peers        []PeerStatus `json:"peers"`

	// Snapshots (all zero when snapshots are off): how many the node's
	// store holds (valid or not), its bytes of preserved data and its
	// capacity, and why it failed if its file had an I/O error.
	Snapshots             int    `json:"snapshots"`
	SnapshotStoreUsed     int64  `json:"snapshot_store_used_bytes"`
	SnapshotStoreCapacity int64  `json:"snapshot_store_capacity_bytes"`
	SnapshotStoreFailed   string `json:"snapshot_store_failed,omitempty"`

	// Backup is the node's backup record: the last successful backup
	// repctl backup reported to it, and the counts. The daemon fills it in;
	// nil where nothing keeps a record (the engine alone).
	Backup *BackupStatus `json:"backup,omitempty"`
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
	// Witness: the peer stores no data and only votes.
	Witness bool `json:"witness,omitempty"`
	// Votes: the peer's vote counts toward this node's quorum now.
	Votes bool `json:"votes"`
}

// String renders a status as indented JSON (for logs and tests).
func (s Status) String() string {
	b, _ := json.MarshalIndent(s, "", "  ")
	return string(b)
}

// Peer returns the named peer's status, or false.
func (s *Status) Peer(name string) (PeerStatus, bool) {
	for _, p := range s.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return PeerStatus{}, false
}

// FormatUUID writes a generation identifier as status and logs show it:
// 16 hex digits, or "" for none (0).
func FormatUUID(u uint64) string {
	if u == 0 {
		return ""
	}
	return fmt.Sprintf("%016X", u)
}

// SnapshotInfo describes one snapshot of a node (repctl snapshot list).
type SnapshotInfo struct {
	Name string `json:"name"`
	Node string `json:"node"`
	// Created is when the node took it; AgeSeconds how long before the
	// list was made.
	Created    time.Time `json:"created"`
	AgeSeconds int64     `json:"age_seconds"`
	// Bytes is the preserved data the snapshot reads from the store (its
	// chunks overwritten since it was taken, shared copies included);
	// ExclusiveBytes the part only it uses: what deleting it frees.
	Bytes          int64 `json:"bytes"`
	ExclusiveBytes int64 `json:"exclusive_bytes"`
	// Valid is false once the snapshot cannot be read any more: Reason
	// says why (the store was full, an I/O error) and Invalidated when.
	Valid  bool   `json:"valid"`
	Reason string `json:"reason,omitempty"`
	// Lazy: its copies are synced in the background (repctl backup's
	// snapshots, snapshot create --lazy); a power loss or kernel crash
	// while some were not yet synced invalidates it.
	Lazy        bool       `json:"lazy,omitempty"`
	Invalidated *time.Time `json:"invalidated,omitempty"`
}

// SnapshotList is a node's snapshots, oldest first, and its store.
type SnapshotList struct {
	Resource string `json:"resource"`
	Node     string `json:"node"`
	// Enabled is false when resource.snapshot-store-size is 0.
	Enabled       bool  `json:"enabled"`
	CapacityBytes int64 `json:"capacity_bytes"`
	UsedBytes     int64 `json:"used_bytes"`
	// PrewriteLeftBytes: of a store created since repd started, the bytes
	// it has yet to write once with zeroes in the background (0: done).
	PrewriteLeftBytes int64          `json:"prewrite_left_bytes,omitempty"`
	Failed            string         `json:"failed,omitempty"`
	Snapshots         []SnapshotInfo `json:"snapshots"`
}

// SnapshotResult is what taking a snapshot did: the nodes that created it,
// and a note on how it was taken when that is worth knowing.
type SnapshotResult struct {
	Name    string   `json:"name"`
	Created []string `json:"created"`
	Note    string   `json:"note,omitempty"`
}

// Backup kinds of a BackupReport.
const (
	BackupFull = "full"
	BackupInc  = "inc"
)

// BackupReport is one backup as repctl backup reports it to the node whose
// snapshot it read (admin POST /v1/backup): a success names its Kind, a
// failure carries Error instead.
type BackupReport struct {
	// Time is when the backup finished (or failed).
	Time time.Time `json:"time"`
	// Kind is BackupFull or BackupInc; empty for a failure.
	Kind string `json:"kind,omitempty"`
	// BytesRead is what the backup read from the snapshot's export;
	// FileBytes the size of the qcow2 file it wrote.
	BytesRead int64 `json:"bytes_read"`
	FileBytes int64 `json:"file_bytes"`
	// Duration is how long the backup took, in seconds.
	Duration float64 `json:"duration"`
	// Dir is the backup directory (on the host that ran repctl), Snapshot
	// the snapshot the backup read.
	Dir      string `json:"dir"`
	Snapshot string `json:"snapshot"`
	// Error says why the backup failed; empty for a success.
	Error string `json:"error,omitempty"`
}

// BackupStatus is a node's backup record (Status.Backup): the last
// successful backup reported to it and the counts of reports, kept across
// restarts.
type BackupStatus struct {
	// Last is the last successful backup; nil before the first.
	Last *BackupReport `json:"last,omitempty"`
	// Backups and Failures count the successes and failures reported.
	Backups  int64 `json:"backups"`
	Failures int64 `json:"failures"`
	// LastFailure is the last failure reported; nil if none.
	LastFailure *BackupReport `json:"last_failure,omitempty"`
}
