package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
)

type fixed api.Status

func (f fixed) Status() api.Status { return api.Status(f) }

// The transport counters of every peer are exported.
func TestTransportMetrics(t *testing.T) {
	m := New(fixed{Role: api.Primary, Disk: "UpToDate", Peers: []api.PeerStatus{{
		Name: "beta", BytesSent: 1000, LogicalBytes: 4000, CompressionRatio: 4, DedupBlocks: 3, DedupBytesSaved: 3 * 4096,
		ZeroBlocks: 2, DedupMisses: 1, AuthFailures: 5, BadFrames: 7,
	}}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`repd_peer_logical_bytes_total{peer="beta"} 4000`,
		`repd_peer_sent_bytes_total{peer="beta"} 1000`,
		`repd_peer_compression_ratio{peer="beta"} 4`,
		`repd_peer_dedup_blocks_total{peer="beta"} 3`,
		`repd_peer_dedup_saved_bytes_total{peer="beta"} 12288`,
		`repd_peer_zero_blocks_total{peer="beta"} 2`,
		`repd_peer_dedup_misses_total{peer="beta"} 1`,
		`repd_peer_auth_failures_total{peer="beta"} 5`,
		`repd_peer_bad_frames_total{peer="beta"} 7`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("missing %s", want)
		}
	}
}

// /health answers 200 only on an UpToDate Primary that, with quorum, holds
// its lease; the quorum gauges follow the status.
func TestHealthAndQuorum(t *testing.T) {
	for _, c := range []struct {
		s    api.Status
		code int
	}{
		{api.Status{Role: api.Primary, Disk: "UpToDate"}, 200}, // quorum off
		{api.Status{Role: api.Primary, Disk: "UpToDate", VotesNeeded: 2, Votes: 2, Quorum: true, Lease: "held"}, 200},
		{api.Status{Role: api.Primary, Disk: "UpToDate", VotesNeeded: 2, Votes: 1, Lease: "expired"}, 503},
		{api.Status{Role: api.Secondary, Disk: "UpToDate", VotesNeeded: 2, Votes: 3, Quorum: true}, 503},
		{api.Status{Role: api.Primary, Disk: "Failed"}, 503},
	} {
		rec := httptest.NewRecorder()
		New(fixed(c.s)).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/health", nil))
		if rec.Code != c.code {
			t.Errorf("%+v: /health %d, want %d", c.s, rec.Code, c.code)
		}
	}
	m := New(fixed{Role: api.Primary, Disk: "UpToDate", VotesNeeded: 2, Votes: 2, Voters: 3, Quorum: true, Lease: "held", LeaseLeftMS: 1500, SuspendedIO: 0,
		Peers: []api.PeerStatus{{Name: "tie", Witness: true, Votes: true}}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{"repd_quorum 1", "repd_quorum_votes 2", "repd_quorum_votes_needed 2", "repd_quorum_voters 3",
		"repd_lease_held 1", "repd_lease_left_seconds 1.5", `repd_peer_votes{peer="tie"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("missing %s", want)
		}
	}
}

// The snapshot store's figures are exported from the status.
func TestSnapshotMetrics(t *testing.T) {
	m := New(fixed{Snapshots: 3, SnapshotStoreUsed: 5 << 20, SnapshotStoreCapacity: 1 << 30})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{"repd_snapshots 3", "repd_snapshot_store_used_bytes 5.24288e+06", "repd_snapshot_store_capacity_bytes 1.073741824e+09"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("missing %s", want)
		}
	}
}

// The backup record is exported: the last success's gauges once there is
// one, the counts always; nothing without a record.
func TestBackupMetrics(t *testing.T) {
	scrape := func(s api.Status) string {
		rec := httptest.NewRecorder()
		New(fixed(s)).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		return string(body)
	}
	end := time.Date(2026, 12, 5, 13, 0, 0, 500e6, time.UTC)
	body := scrape(api.Status{Backup: &api.BackupStatus{Backups: 7, Failures: 2, Last: &api.BackupReport{
		Time: end, Kind: api.BackupInc, BytesRead: 10 << 20, FileBytes: 11 << 20, Duration: 2.5, Dir: "/b", Snapshot: "s7"}}})
	for _, want := range []string{
		"repd_backup_last_success_timestamp_seconds 1.7964756005e+09",
		"repd_backup_last_size_bytes 1.1534336e+07",
		"repd_backup_last_read_bytes 1.048576e+07",
		"repd_backup_last_duration_seconds 2.5",
		"repd_backup_last_full 0",
		"repd_backups_total 7",
		"repd_backup_failures_total 2",
		"# TYPE repd_backups_total counter",
		"# TYPE repd_backup_last_success_timestamp_seconds gauge",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("missing %s", want)
		}
	}
	// Failures only: the counts, no last-success gauges (an alert on
	// their age must not see a made-up time).
	body = scrape(api.Status{Backup: &api.BackupStatus{Failures: 1, LastFailure: &api.BackupReport{Time: end, Error: "x", Dir: "/b"}}})
	if !strings.Contains(body, "repd_backup_failures_total 1") || !strings.Contains(body, "repd_backups_total 0") ||
		strings.Contains(body, "repd_backup_last_success_timestamp_seconds ") {
		t.Errorf("failures only:\n%s", grepBackup(body))
	}
	if body = scrape(api.Status{}); strings.Contains(body, "repd_backup") {
		t.Errorf("backup metrics without a record:\n%s", grepBackup(body))
	}
}

func grepBackup(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, "repd_backup") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
