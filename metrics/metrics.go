// Package metrics serves a node's Prometheus metrics and its health probe on
// one TCP listener:
//
//	GET /metrics  Prometheus text format
//	GET /health   200 {"node","role","disk"} only on an UpToDate Primary, else 503
//
// The health endpoint is what a load balancer or an intelligent DNS probe
// checks, so clients are sent to whichever node is Primary.
package metrics

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/repd/repd/api"
)

// Source is what metrics are read from at scrape time.
type Source interface {
	Status() api.Status
}

// Metrics holds a node's registry and the request instruments the NBD
// server feeds.
type Metrics struct {
	reg      *prometheus.Registry
	src      Source
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	byCmd    map[string]*cmdMetrics // resolved once: no label lookup per request
}

type cmdMetrics struct {
	requests, bytes, errors prometheus.Counter
	latency                 prometheus.Observer
}

// New builds the registry for src.
func New(src Source) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), src: src}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "repd_nbd_requests_total", Help: "NBD requests answered, by command.",
	}, []string{"cmd"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "repd_nbd_bytes_total", Help: "NBD payload bytes, by command.",
	}, []string{"cmd"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "repd_nbd_errors_total", Help: "NBD requests answered with an error, by command.",
	}, []string{"cmd"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "repd_nbd_request_seconds",
		Help:    "NBD request latency from parse to reply, by command.",
		Buckets: prometheus.ExponentialBuckets(10e-6, 2.5, 14),
	}, []string{"cmd"})
	m.byCmd = map[string]*cmdMetrics{}
	for _, c := range []string{"read", "write", "flush", "trim", "cache", "write_zeroes", "unknown"} {
		m.byCmd[c] = m.forCmd(c)
	}
	m.reg.MustRegister(m.requests, m.bytes, m.errors, m.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{src: src})
	return m
}

// ObserveRequest records one answered NBD request (nbd.Server.OnRequest).
func (m *Metrics) ObserveRequest(cmd string, n int64, d time.Duration, err error) {
	c := m.byCmd[cmd]
	if c == nil {
		c = m.forCmd(cmd)
	}
	c.requests.Inc()
	c.bytes.Add(float64(n))
	c.latency.Observe(d.Seconds())
	if err != nil {
		c.errors.Inc()
	}
}

func (m *Metrics) forCmd(cmd string) *cmdMetrics {
	return &cmdMetrics{
		requests: m.requests.WithLabelValues(cmd),
		bytes:    m.bytes.WithLabelValues(cmd),
		errors:   m.errors.WithLabelValues(cmd),
		latency:  m.latency.WithLabelValues(cmd),
	}
}

// Handler serves /metrics and /health.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		s := m.src.Status()
		code := http.StatusServiceUnavailable
		// Only a Primary whose writes are acknowledged: UpToDate and,
		// with quorum, holding its lease (a Primary cut off from the
		// quorum answers 503 before another node takes over).
		if s.Role == api.Primary && s.Disk == "UpToDate" && (s.VotesNeeded == 0 || s.Lease == "held") {
			code = http.StatusOK
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]string{"node": s.Node, "resource": s.Resource, "role": s.Role.String(), "disk": s.Disk})
	})
	return mux
}

// stateCollector turns a status snapshot into gauges at scrape time.
type stateCollector struct{ src Source }

var (
	descRole       = prometheus.NewDesc("repd_role_primary", "1 if this node is Primary.", nil, nil)
	descDisk       = prometheus.NewDesc("repd_disk_state", "1 for the node's current disk state.", []string{"state"}, nil)
	descJournal    = prometheus.NewDesc("repd_journal_bytes", "Bytes of writes in the journal not yet acknowledged by every peer.", nil, nil)
	descJournalMax = prometheus.NewDesc("repd_journal_max_bytes", "The journal's bound.", nil, nil)
	descWrites     = prometheus.NewDesc("repd_writes_total", "Writes completed on this node as Primary.", nil, nil)
	descConn       = prometheus.NewDesc("repd_peer_connected", "1 if the peer is Connected.", []string{"peer"}, nil)
	descRepl       = prometheus.NewDesc("repd_peer_replication_state", "1 for the peer's replication state.", []string{"peer", "state"}, nil)
	descOOS        = prometheus.NewDesc("repd_peer_out_of_sync_bytes", "Bytes marked out of sync toward the peer.", []string{"peer"}, nil)
	descSent       = prometheus.NewDesc("repd_peer_sent_bytes_total", "Bytes sent on the wire to the peer.", []string{"peer"}, nil)
	descRecv       = prometheus.NewDesc("repd_peer_received_bytes_total", "Bytes received on the wire from the peer.", []string{"peer"}, nil)
	descBad        = prometheus.NewDesc("repd_peer_bad_frames_total", "Frames from the peer that failed their checksum or parse.", []string{"peer"}, nil)
	descConnects   = prometheus.NewDesc("repd_peer_connects_total", "Connections established with the peer.", []string{"peer"}, nil)
	descAcks       = prometheus.NewDesc("repd_peer_acks_total", "Write acknowledgements received from the peer.", []string{"peer"}, nil)
	descAckLat     = prometheus.NewDesc("repd_peer_ack_latency_seconds", "Recent replication latency to the peer, send to ack (moving average).", []string{"peer"}, nil)
	descSyncRate   = prometheus.NewDesc("repd_peer_resync_rate_bytes", "Current resync rate with the peer, bytes per second.", []string{"peer"}, nil)
	descSyncLeft   = prometheus.NewDesc("repd_peer_resync_left_bytes", "Bytes the running resync with the peer still has to move.", []string{"peer"}, nil)
	descVerifyMis  = prometheus.NewDesc("repd_peer_verify_mismatch_bytes", "Bytes the last online verify with the peer found different.", []string{"peer"}, nil)
	descResynced   = prometheus.NewDesc("repd_peer_resynced_bytes_total", "Bytes resynced with the peer.", []string{"peer"}, nil)
	descSplit      = prometheus.NewDesc("repd_peer_split_brain", "1 if split brain was detected with the peer.", []string{"peer"}, nil)

	descLogical    = prometheus.NewDesc("repd_peer_logical_bytes_total", "Data bytes of the writes and resync blocks shipped to the peer, before dedup and compression.", []string{"peer"}, nil)
	descRatio      = prometheus.NewDesc("repd_peer_compression_ratio", "Logical bytes shipped to the peer per byte sent on the wire (dedup and compression).", []string{"peer"}, nil)
	descDedup      = prometheus.NewDesc("repd_peer_dedup_blocks_total", "4 KiB blocks sent to the peer as references to data it holds.", []string{"peer"}, nil)
	descDedupSaved = prometheus.NewDesc("repd_peer_dedup_saved_bytes_total", "Data bytes not sent to the peer thanks to dedup references.", []string{"peer"}, nil)
	descZero       = prometheus.NewDesc("repd_peer_zero_blocks_total", "4 KiB all-zero blocks sent to the peer as markers.", []string{"peer"}, nil)
	descDedupMiss  = prometheus.NewDesc("repd_peer_dedup_misses_total", "Dedup references the peer could not resolve (the data was resent).", []string{"peer"}, nil)
	descAuthFail   = prometheus.NewDesc("repd_peer_auth_failures_total", "Handshakes with the peer (or from its address) that failed authentication.", []string{"peer"}, nil)

	descQuorum    = prometheus.NewDesc("repd_quorum", "1 if this node has quorum (always 1 with quorum off).", nil, nil)
	descVotes     = prometheus.NewDesc("repd_quorum_votes", "Votes present, this node's included.", nil, nil)
	descVotesNeed = prometheus.NewDesc("repd_quorum_votes_needed", "Votes quorum needs (0: quorum off).", nil, nil)
	descVoters    = prometheus.NewDesc("repd_quorum_voters", "Voters of the resource: data nodes and witnesses.", nil, nil)
	descLease     = prometheus.NewDesc("repd_lease_held", "1 if this Primary holds its lease (quorum acknowledged it).", nil, nil)
	descLeaseLeft = prometheus.NewDesc("repd_lease_left_seconds", "How long this Primary's lease has left.", nil, nil)
	descSuspended = prometheus.NewDesc("repd_io_suspended", "Writes and flushes waiting for quorum.", nil, nil)
	descPeerVotes = prometheus.NewDesc("repd_peer_votes", "1 if the peer's vote counts toward quorum now.", []string{"peer"}, nil)

	descSnapshots = prometheus.NewDesc("repd_snapshots", "Snapshots in this node's store, valid or not.", nil, nil)
	descSnapUsed  = prometheus.NewDesc("repd_snapshot_store_used_bytes", "Bytes of preserved data in the snapshot store.", nil, nil)
	descSnapCap   = prometheus.NewDesc("repd_snapshot_store_capacity_bytes", "Bytes of preserved data the snapshot store may hold (0: snapshots off).", nil, nil)

	// The backup record (absent where nothing keeps one; the last-backup
	// gauges absent until the first success is reported).
	descBackupTime     = prometheus.NewDesc("repd_backup_last_success_timestamp_seconds", "When the last successful backup reported to this node finished (Unix time).", nil, nil)
	descBackupSize     = prometheus.NewDesc("repd_backup_last_size_bytes", "Size of the qcow2 file the last successful backup wrote.", nil, nil)
	descBackupRead     = prometheus.NewDesc("repd_backup_last_read_bytes", "Bytes the last successful backup read from its snapshot.", nil, nil)
	descBackupDuration = prometheus.NewDesc("repd_backup_last_duration_seconds", "How long the last successful backup took.", nil, nil)
	descBackupFull     = prometheus.NewDesc("repd_backup_last_full", "1 if the last successful backup was full, 0 if incremental.", nil, nil)
	descBackups        = prometheus.NewDesc("repd_backups_total", "Successful backups reported to this node.", nil, nil)
	descBackupFailures = prometheus.NewDesc("repd_backup_failures_total", "Failed backups reported to this node.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRole, descDisk, descJournal, descJournalMax, descWrites, descConn, descRepl, descOOS, descSent, descRecv, descBad, descConnects, descAcks, descAckLat, descSyncRate, descSyncLeft, descVerifyMis, descResynced, descSplit,
		descLogical, descRatio, descDedup, descDedupSaved, descZero, descDedupMiss, descAuthFail,
		descQuorum, descVotes, descVotesNeed, descVoters, descLease, descLeaseLeft, descSuspended, descPeerVotes,
		descSnapshots, descSnapUsed, descSnapCap,
		descBackupTime, descBackupSize, descBackupRead, descBackupDuration, descBackupFull, descBackups, descBackupFailures} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descRole, b2f(s.Role == api.Primary))
	for _, st := range []string{"Diskless", "Inconsistent", "Outdated", "UpToDate", "Failed"} {
		gauge(descDisk, b2f(s.Disk == st), st)
	}
	gauge(descJournal, float64(s.JournalBytes))
	gauge(descJournalMax, float64(s.JournalMax))
	counter(descWrites, float64(s.Writes))
	gauge(descQuorum, b2f(s.VotesNeeded == 0 || s.Quorum))
	gauge(descVotes, float64(s.Votes))
	gauge(descVotesNeed, float64(s.VotesNeeded))
	gauge(descVoters, float64(s.Voters))
	gauge(descLease, b2f(s.Lease == "held"))
	gauge(descLeaseLeft, float64(s.LeaseLeftMS)/1e3)
	gauge(descSuspended, float64(s.SuspendedIO))
	gauge(descSnapshots, float64(s.Snapshots))
	gauge(descSnapUsed, float64(s.SnapshotStoreUsed))
	gauge(descSnapCap, float64(s.SnapshotStoreCapacity))
	if b := s.Backup; b != nil {
		counter(descBackups, float64(b.Backups))
		counter(descBackupFailures, float64(b.Failures))
		if l := b.Last; l != nil {
			gauge(descBackupTime, float64(l.Time.UnixNano())/1e9)
			gauge(descBackupSize, float64(l.FileBytes))
			gauge(descBackupRead, float64(l.BytesRead))
			gauge(descBackupDuration, l.Duration)
			gauge(descBackupFull, b2f(l.Kind == api.BackupFull))
		}
	}
	for _, p := range s.Peers {
		gauge(descPeerVotes, b2f(p.Votes), p.Name)
		gauge(descConn, b2f(p.Connection == api.Connected), p.Name)
		for _, st := range []api.Repl{api.ReplOff, api.Established, api.SyncSource, api.SyncTarget, api.PausedSync, api.Ahead, api.Behind} {
			gauge(descRepl, b2f(p.Replication == st), p.Name, st.String())
		}
		gauge(descOOS, float64(p.OutOfSyncKiB*1024), p.Name)
		counter(descSent, float64(p.BytesSent), p.Name)
		counter(descRecv, float64(p.BytesReceived), p.Name)
		counter(descBad, float64(p.BadFrames), p.Name)
		counter(descConnects, float64(p.Connects), p.Name)
		counter(descResynced, float64(p.ResyncedBytes), p.Name)
		counter(descAcks, float64(p.Acks), p.Name)
		gauge(descAckLat, float64(p.AckLatencyUS)/1e6, p.Name)
		gauge(descSyncRate, float64(p.SyncRateBytesPerSec), p.Name)
		gauge(descSyncLeft, float64(p.SyncLeftBytes), p.Name)
		gauge(descVerifyMis, float64(p.VerifyMismatchKiB*1024), p.Name)
		gauge(descSplit, b2f(p.SplitBrain), p.Name)
		counter(descLogical, float64(p.LogicalBytes), p.Name)
		gauge(descRatio, p.CompressionRatio, p.Name)
		counter(descDedup, float64(p.DedupBlocks), p.Name)
		counter(descDedupSaved, float64(p.DedupBytesSaved), p.Name)
		counter(descZero, float64(p.ZeroBlocks), p.Name)
		counter(descDedupMiss, float64(p.DedupMisses), p.Name)
		counter(descAuthFail, float64(p.AuthFailures), p.Name)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
