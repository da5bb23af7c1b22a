package result

// Drills is what the drills measured.
type Drills struct {
	RTO *RTOResult `json:"rto,omitempty"`
	// RTOAuto: automatic failover, one case per timeout.
	RTOAuto []RTOAutoResult `json:"rto_auto,omitempty"`
	RPO     []RPOResult     `json:"rpo,omitempty"`
	Resync  *ResyncResult   `json:"resync,omitempty"`
	Wire    []WireResult    `json:"wire,omitempty"`
	Sync    *SyncResult     `json:"sync,omitempty"`
	Floor   *FloorResult    `json:"floor,omitempty"`
	Backup  *BackupResult   `json:"backup,omitempty"`
}

// BackupResult: the backup drill (issue 19). Two nodes, protocol C, the
// device filled; backups taken from the Secondary (bravo) with repctl
// backup: a full one, then after 1 % of the device was rewritten in random
// 64 KiB blocks an incremental one; then fio on the Primary without a
// backup, during backups from the Secondary, and with a fresh snapshot on
// the Primary itself (copy-on-write).
type BackupResult struct {
	DeviceBytes int64   `json:"device_bytes"`
	Quick       bool    `json:"quick,omitempty"`
	FillMBps    float64 `json:"fill_mbps"` // fio 1 MiB seq write over the device, replicated
	// RewrittenBytes: what the rewrite wrote between the two backups, in
	// distinct 64 KiB blocks.
	RewrittenBytes int64      `json:"rewritten_bytes"`
	Full           *BackupRun `json:"full,omitempty"`
	// Incs: the incremental backups, each after its own rewrite of 1 %;
	// Inc is their median by wall time, the one judged.
	Incs []BackupRun `json:"incs,omitempty"`
	Inc  *BackupRun  `json:"inc,omitempty"`
	// IncReadShare: the incremental's bytes read over the device;
	// IncTimeRatio: its wall time over the full's.
	IncReadShare float64 `json:"inc_read_share"`
	IncTimeRatio float64 `json:"inc_time_ratio"`
	// Verify: the incremental point (its qcow2 chain) compared with its
	// snapshot's export by qemu-img compare: "identical", or what differed.
	Verify string `json:"verify,omitempty"`
	// Load: the fio runs on the Primary (4 KiB random writes, QD32), in
	// the order run.
	Load        []BackupLoad `json:"load,omitempty"`
	LoadSeconds int          `json:"load_seconds"` // each run's measured time, after a 1 s ramp
	// BaseIOPS: the mean of the runs without snapshot or backup;
	// BackupRatio and SnapshotRatio: the run during backups from the
	// Secondary, and the run with a fresh snapshot on the Primary, over it.
	BaseIOPS float64 `json:"base_iops"`
	// BackupRatios: each run during backups over the mean of the base
	// runs just before and after it; BackupRatio is their median.
	BackupRatios  []float64 `json:"backup_ratios,omitempty"`
	BackupRatio   float64   `json:"backup_ratio"`
	SnapshotRatio float64   `json:"snapshot_ratio"`
	// SecondarySnapshotRatio: the run with a fresh snapshot on the
	// Secondary alone (its copy-on-write, no backup reading), over base.
	SecondarySnapshotRatio float64 `json:"secondary_snapshot_ratio"`
	// SecondaryLazyRatio: the same with a lazy snapshot (repctl backup's).
	SecondaryLazyRatio float64 `json:"secondary_lazy_ratio"`
	// CtlFloorMs: the wall time of a repctl status just before the
	// incremental backup: process start and scheduling on this machine,
	// part of every backup's wall time.
	CtlFloorMs float64  `json:"ctl_floor_ms"`
	Notes      []string `json:"notes,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// BackupRun is one repctl backup of the backup drill.
type BackupRun struct {
	Kind     string  `json:"kind"`
	Snapshot string  `json:"snapshot"`
	WallMs   float64 `json:"wall_ms"` // repctl backup, start to exit
	// What the node recorded from repctl's report (POST /v1/backup).
	ReportedSeconds float64 `json:"reported_seconds"`
	BytesRead       int64   `json:"bytes_read"`
	FileBytes       int64   `json:"file_bytes"`
	Error           string  `json:"error,omitempty"`
}

// BackupLoad is one fio run of the backup drill.
type BackupLoad struct {
	// Case: "base" (no snapshot anywhere), "backup" (full backups from the
	// Secondary, one after another, for the whole run), "backup-paced"
	// (the same with repctl backup --rate Rate), "snapshot" (a
	// snapshot taken on the Primary just before the run) or
	// "snapshot-secondary" (one taken on the Secondary alone).
	Case  string  `json:"case"`
	IOPS  float64 `json:"iops"`
	P99Us float64 `json:"p99_us"`
	// Backups: repctl backups that ran during the run ("backup");
	// StoreBytes: the snapshot store of the node with the snapshot after
	// the run (what copy-on-write preserved).
	Backups    int    `json:"backups,omitempty"`
	Rate       string `json:"rate,omitempty"`
	StoreBytes int64  `json:"store_bytes,omitempty"`
	Error      string `json:"error,omitempty"`
}

// RTOResult: kill -9 of the primary under fio load until the first write
// the new primary acknowledges.
type RTOResult struct {
	Protocol string `json:"protocol"`
	Link     string `json:"link"`
	// DetectMs: from the kill until the secondary shows the peer gone
	// (repd's own detection: the TCP connection to the dead process ends).
	DetectMs float64 `json:"detect_ms"`
	// PromoteMs: `repctl primary` on the secondary, including retries.
	PromoteMs float64 `json:"promote_ms"`
	// FirstWriteMs: NBD connect and one 4 KiB write on the new primary.
	FirstWriteMs float64 `json:"first_write_ms"`
	TotalMs      float64 `json:"total_ms"`
	Promote      string  `json:"promote"`
	LoadIOPS     float64 `json:"load_iops,omitempty"` // fio's write IOPS before the kill
	Error        string  `json:"error,omitempty"`
}

// RTOAutoResult: two data nodes and a witness with quorum and
// auto-promote; fio writes to the Primary; the Primary's host is cut off
// (a partition at the proxies on its peer links, not a TCP close); a
// failover client tries each surviving data node until a write completes.
// Times are from the cut.
type RTOAutoResult struct {
	Protocol string `json:"protocol"`
	Link     string `json:"link"`
	// The quorum and lease settings: timeout as configured ("2s", or
	// "default"), and what follows from it.
	Timeout     string  `json:"timeout"`
	TimeoutMs   float64 `json:"timeout_ms"`
	LeaseMs     float64 `json:"lease_ms"`   // a lease request's acknowledgement counts this long
	PromiseMs   float64 `json:"promise_ms"` // a voter helps no other Primary for this long after it last heard from one (9/8 timeout)
	Quorum      string  `json:"quorum"`     // e.g. "majority: 2 of 3 votes (alpha, bravo, witness tie)"
	OnNoQuorum  string  `json:"on_no_quorum"`
	AutoPromote bool    `json:"auto_promote"`
	LoadIOPS    float64 `json:"load_iops,omitempty"` // fio's writes/s on the Primary before the cut
	// SuspendedMs: the old Primary suspends I/O (its lease ran out; its
	// event); 0 if not seen.
	SuspendedMs float64 `json:"old_primary_suspended_ms,omitempty"`
	// LeaseEndMs: the old Primary's lease was over by then at the latest
	// (its status polled every 20 ms: an answer "held, N ms left" bounds
	// it, as nothing renews it after the cut); 0 if no answer said held.
	// It must come before ElectedMs.
	LeaseEndMs float64 `json:"old_primary_lease_end_ms,omitempty"`
	// ElectedMs: the successor becomes Primary (its role event).
	ElectedMs float64 `json:"elected_ms"`
	// TotalMs: a write completes on the successor: the RTO.
	TotalMs   float64 `json:"total_ms"`
	Successor string  `json:"successor"`
	Attempts  int     `json:"client_attempts"` // connections the failover client opened
	// Rejoined: after the partition healed the old Primary came back as
	// an UpToDate Secondary (how long that took, or what went wrong).
	Rejoined string `json:"rejoined"`
	LoadAvg  string `json:"loadavg"` // at the cut
	Error    string `json:"error,omitempty"`
}

// RPOResult: acknowledged writes missing on the promoted secondary after
// kill -9 of the primary.
type RPOResult struct {
	Protocol     string  `json:"protocol"`
	Link         string  `json:"link"`
	JournalBound int64   `json:"journal_bound_bytes"` // journal-size
	JournalAtEnd int64   `json:"journal_bytes_before_kill"`
	WriteSeconds float64 `json:"write_seconds"`
	Acked        int64   `json:"acked_writes"`
	AckedBytes   int64   `json:"acked_bytes"`
	WriteMBps    float64 `json:"write_mb_per_s"`
	LostWrites   int64   `json:"lost_writes"`
	LostBytes    int64   `json:"lost_bytes"`
	// LostSeconds is how far back the loss reaches: the kill time minus
	// the acknowledgment time of the oldest lost write.
	LostSeconds float64 `json:"lost_seconds"`
	Promote     string  `json:"promote"`
	Error       string  `json:"error,omitempty"`
}

// ResyncResult: the secondary down while the primary writes, then back.
type ResyncResult struct {
	OutageSeconds float64 `json:"outage_write_seconds"`
	WrittenBytes  int64   `json:"written_bytes"`  // fio, during the outage
	DirtyBytes    int64   `json:"dirty_bytes"`    // out-of-sync on the primary before the restart
	ResyncedBytes int64   `json:"resynced_bytes"` // the primary's counter, delta
	WireBytes     int64   `json:"wire_bytes"`     // bytes_sent to the peer, delta
	ConnectMs     float64 `json:"connect_ms"`     // restart until Connected
	ResyncMs      float64 `json:"resync_ms"`      // Connected until in sync
	TotalMs       float64 `json:"total_ms"`       // restart until in sync
	RateMBps      float64 `json:"rate_mb_per_s"`  // resynced bytes over ResyncMs
	DirtyRateMBps float64 `json:"dirty_mb_per_s"` // dirty bytes over ResyncMs
	FioWriteMBps  float64 `json:"fio_write_mb_per_s"`
	Error         string  `json:"error,omitempty"`
}

// WireResult is bytes on the replication link per logical byte written, for
// one kind of data and one compression setting (issue 5).
type WireResult struct {
	Data        string  `json:"data"` // csv, repeat-4k, random
	Compression string  `json:"compression"`
	WriteSize   int     `json:"write_size"`
	Logical     int64   `json:"logical_bytes"` // written through NBD
	Wire        int64   `json:"wire_bytes"`    // bytes_sent to the peer, delta
	Ratio       float64 `json:"ratio"`         // Wire / Logical
	// Counters are the daemon's own logical/wire/dedup counters (delta),
	// when it reports them.
	Counters map[string]float64 `json:"counters,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// SyncResult is what the sync drill measured (issue 4).
type SyncResult struct {
	DeviceBytes int64 `json:"device_bytes"`
	Quick       bool  `json:"quick,omitempty"` // --quick: a smaller device
	CSums       bool  `json:"csums"`           // csums = true for the resyncs (the checksum case always has it)
	// RefMBps: fio 1 MiB sequential writes QD8 over the whole device
	// through the primary with the peer connected, at the start and at the
	// end of the drill; RefMeanMBps is their mean, the reference.
	RefMBps []float64 `json:"ref_seqwrite_mb_per_s"`
	// PrefillMBps is the same fio job before them, into the fresh sparse
	// backing files: not part of the reference (the resyncs write into
	// allocated blocks), reported for information.
	PrefillMBps float64       `json:"prefill_mb_per_s"`
	RefMeanMBps float64       `json:"ref_mean_mb_per_s"`
	Resync      []SyncCase    `json:"resync,omitempty"`
	CSumsResync *CSumsCase    `json:"csums_resync,omitempty"`
	Verify      *VerifyResult `json:"verify,omitempty"`
	Notes       []string      `json:"notes,omitempty"`
	Error       string        `json:"error,omitempty"`
}

// SyncCase is one resync after 10 % of the device was written while the
// peer was disconnected.
type SyncCase struct {
	Name         string  `json:"name"`          // "1m", "4k"
	WriteSize    int64   `json:"write_size"`    // fio's block size
	WrittenBytes int64   `json:"written_bytes"` // fio's io_size: distinct blocks
	DirtyBytes   int64   `json:"dirty_bytes"`   // out_of_sync on the primary before the connect
	ResyncMs     float64 `json:"resync_ms"`     // SyncSource until Established (events)
	ConnectMs    float64 `json:"connect_to_done_ms"`
	RateMBps     float64 `json:"rate_mb_per_s"` // dirty bytes over ResyncMs
	Ratio        float64 `json:"ratio_to_ref"`  // RateMBps / RefMeanMBps
	WireSent     int64   `json:"wire_sent_bytes"`
	WireReceived int64   `json:"wire_received_bytes"`
	Timing       string  `json:"timing"` // "events", or how else it was timed
	Error        string  `json:"error,omitempty"`
}

// CSumsCase is `repctl invalidate-remote` of an identical device with
// checksum-based resync: the target sends hashes, the source only the
// blocks that differ (none).
type CSumsCase struct {
	ResyncMs     float64 `json:"resync_ms"`
	RateMBps     float64 `json:"rate_mb_per_s"` // device over ResyncMs
	SourceSent   int64   `json:"source_sent_bytes"`
	SourcePct    float64 `json:"source_sent_pct"`
	HashesRecv   int64   `json:"hashes_received_bytes"`
	HashesPct    float64 `json:"hashes_received_pct"`
	EqualBytes   int64   `json:"csums_equal_bytes,omitempty"` // the source's counter
	ResyncedDiff int64   `json:"resynced_bytes"`              // resynced_bytes delta
	Timing       string  `json:"timing"`
	Error        string  `json:"error,omitempty"`
}

// VerifyResult is `repctl verify` of the whole device.
type VerifyResult struct {
	Ms          float64 `json:"ms"` // VerifySource until it ends (events)
	RateMBps    float64 `json:"rate_mb_per_s"`
	MismatchKiB int64   `json:"mismatch_kib"`
	WireSent    int64   `json:"wire_sent_bytes"`
	WireRecv    int64   `json:"wire_received_bytes"`
	Timing      string  `json:"timing"`
	Message     string  `json:"message,omitempty"` // the daemon's verify event
	Error       string  `json:"error,omitempty"`
}

// FloorOK is the floor drill's result if it ran without error, else nil.
func (d *Drills) FloorOK() *FloorResult {
	if d == nil || d.Floor == nil || d.Floor.Error != "" {
		return nil
	}
	return d.Floor
}

// FloorResult is the floor drill: the least CPU time a peer's copy of one
// write can cost on this machine, whatever the implementation: the write's
// bytes sent over loopback TCP, received, and written with pwrite into a
// file like the nodes' backing files. No framing, checksums, acks or
// scheduling of repd's: a bare loop, so that a replicated target's CPU per
// write is at least standalone's plus this much.
type FloorResult struct {
	// Us4K: per 4 KiB write at a random block (frames sent in batches of
	// 64, read in 512 KiB gulps).
	Us4K float64 `json:"us_per_4k_write"`
	// Us1M: per 1 MiB sequential write.
	Us1M float64 `json:"us_per_1m_write"`
	// PwriteUs4K: the pwrite alone, per 4 KiB write.
	PwriteUs4K float64 `json:"pwrite_us_per_4k"`
	// RTTUs4K: the median wall time of one 4 KiB write's round trip at
	// queue depth 1: sent over loopback TCP, received by a goroutine that
	// was waiting for it, written with pwrite, answered with 8 bytes that
	// the sender was waiting for, both sides goroutines of one process.
	RTTUs4K float64 `json:"rtt_us_4k_p50,omitempty"`
	// RTTUs4KProcess: the same round trip with the receiving side in a
	// process of its own, as a Secondary is: each side wakes the other's
	// thread. What protocol C adds to a write's latency at queue depth 1
	// on one machine is at least this, less the local pwrite that
	// overlaps it.
	RTTUs4KProcess float64 `json:"rtt_us_4k_process_p50,omitempty"`
	// MACUs4K, MACUs1M: the CPU time to tag a frame of a 4 KiB (1 MiB)
	// write and to check the tag, as repd's frame MAC does (AES-256-GCM
	// by internal/gmac, the frame as additional data): what a
	// peer link with a secret adds per write to Us4K (Us1M).
	MACUs4K float64 `json:"mac_us_4k,omitempty"`
	MACUs1M float64 `json:"mac_us_1m,omitempty"`
	// DatasyncUs: the mean wall time of fdatasync on a file like a
	// node's after 8 writes of 16 KiB at random places (the database
	// job's cycle: what a flush must make durable). DatasyncSharedUs: the
	// same with a second file doing the same at the same time, as a
	// Secondary's flush does under protocol C on this machine, where every
	// node's files share one disk. Not CPU time: the disk's.
	DatasyncUs       float64 `json:"datasync_us,omitempty"`
	DatasyncSharedUs float64 `json:"datasync_shared_us,omitempty"`
	Error            string  `json:"error,omitempty"`
}
