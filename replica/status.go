package replica

import (
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/pace"
	"github.com/repd/repd/replica/internal/snapstore"
)

// peerStats are a peer's counters, atomics updated by the session's
// goroutines and read by Status without Node.mu.
type peerStats struct {
	sent, received atomic.Int64 // bytes on the wire
	badFrames      atomic.Int64 // frames that failed their checks
	resynced       atomic.Int64 // resync bytes the peer acknowledged
	logical        atomic.Int64 // data bytes of the writes and resync blocks shipped
	dedupBlocks    atomic.Int64 // blocks sent as references
	zeroBlocks     atomic.Int64 // blocks sent as zero markers
	dedupMisses    atomic.Int64 // references the peer could not resolve (DataReq)
	authFailures   atomic.Int64 // handshakes refused for a failed authentication
}

func (l *peerStats) fill(ps *api.PeerStatus) {
	ps.BytesSent = l.sent.Load()
	ps.BytesReceived = l.received.Load()
	ps.BadFrames = l.badFrames.Load()
	ps.ResyncedBytes = l.resynced.Load()
	ps.LogicalBytes = l.logical.Load()
	ps.DedupBlocks = l.dedupBlocks.Load()
	ps.DedupBytesSaved = ps.DedupBlocks * protocol.DedupBlock
	ps.ZeroBlocks = l.zeroBlocks.Load()
	ps.DedupMisses = l.dedupMisses.Load()
	ps.AuthFailures = l.authFailures.Load()
	if ps.BytesSent > 0 {
		ps.CompressionRatio = float64(ps.LogicalBytes) / float64(ps.BytesSent)
	}
}

// Status returns a snapshot of the node's state.
func (n *Node) Status() api.Status {
	var snap snapstore.Stats
	if n.snap != nil {
		snap = n.snap.Stats() // not under n.mu: a Create holds the store
	}
	if p := n.snapBroken.Load(); p != nil && snap.Failed == "" {
		snap.Failed = *p
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	s := api.Status{
		Resource: n.cfg.Resource, Node: n.cfg.Self.Name, NodeID: n.cfg.Self.ID, Role: n.role,
		Disk: n.super.Disk.String(), Protocol: n.cfg.Protocol, Size: n.cfg.Size,
		CurrentUUID: api.FormatUUID(n.super.GI.Current), JournalBytes: n.journal.Bytes, JournalMax: n.journal.Max, JournalAgeMS: n.journal.Age(time.Now()).Milliseconds(),
		Writes: n.writes, Peers: []api.PeerStatus{},
		Snapshots: snap.Snapshots, SnapshotStoreUsed: snap.Used, SnapshotStoreCapacity: snap.Capacity, SnapshotStoreFailed: snap.Failed,
	}
	n.quorumStatusLocked(&s)
	for _, p := range n.all {
		ps := api.PeerStatus{
			Name: p.cfg.Name, NodeID: p.cfg.ID, Address: p.cfg.Addr, Connection: p.conn, Replication: p.repl,
			SplitBrain: p.splitBrain, LastError: p.lastErr,
			Connects: p.connects, Resyncs: p.resyncs,
			Acks: p.progress.Acks, AckLatencyUS: p.progress.Latency.Microseconds(),
			Witness: p.cfg.Witness, Votes: n.quorumOn() && p.peerVotes(),
		}
		if p.conn == api.Connected {
			ps.Role = p.peerRole.String()
			ps.Disk = p.peerDisk.String()
		}
		if p.bitmap != nil {
			ps.OutOfSyncKiB = p.bitmap.DirtyBytes() / 1024
			ps.BitmapUUID = api.FormatUUID(n.super.GI.Bitmap[p.slot])
			if p.repl == api.SyncSource || p.repl == api.SyncTarget {
				total := max(p.syncTotal, 1)
				left := p.bitmap.DirtyBytes()
				pct := 100 * float64(total-min(left, total)) / float64(total)
				ps.SyncPercent = &pct
			}
			p.syncStatusLocked(&ps)
		}
		p.stats.fill(&ps)
		s.Peers = append(s.Peers, ps)
	}
	return s
}

// syncStatusLocked fills the resync and verify progress of ps; n.mu held.
func (p *peer) syncStatusLocked(ps *api.PeerStatus) {
	now := time.Now()
	ps.SyncPausedByUser = p.sync.userPaused
	ps.CSumsEqualBytes = p.sync.csumsEqual.Load()
	ps.VerifyMismatchKiB = p.sync.verifyMismatch / 1024
	switch p.repl {
	case api.SyncSource, api.SyncTarget, api.PausedSync:
		if p.repl == api.PausedSync && !p.sync.userPaused {
			break
		}
		total := max(p.syncTotal, 1)
		left := p.bitmap.DirtyBytes()
		if p.repl == api.SyncTarget {
			left = max(p.syncTotal-p.sync.recvResync.Load(), 0)
			if left == 0 && p.bitmap.Count() > 0 {
				left = min(p.bitmap.DirtyBytes(), p.n.cfg.Granularity)
			}
		}
		left = min(left, total)
		pct := 100 * float64(total-left) / float64(total)
		ps.SyncPercent = &pct
		ps.SyncLeftBytes = left
		if p.repl != api.PausedSync {
			ps.SyncRateBytesPerSec = p.sync.meter.Sample(now, total-left)
			ps.SyncETASeconds = int64(pace.ETA(left, ps.SyncRateBytesPerSec).Seconds() + 0.5)
		}
	case api.VerifySource, api.VerifyTarget:
		total := max(p.sync.verifyTotal, 1)
		done := min(p.sync.verifyDone, total)
		pct := 100 * float64(done) / float64(total)
		ps.VerifyPercent = &pct
		ps.VerifiedBytes = done
		ps.VerifyRateBytesSec = p.sync.verifyMeter.Sample(now, done)
		ps.SyncLeftBytes = total - done
		ps.SyncETASeconds = int64(pace.ETA(total-done, ps.VerifyRateBytesSec).Seconds() + 0.5)
	}
}
