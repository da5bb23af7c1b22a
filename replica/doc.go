// Package replica is the replication engine: roles, per-peer connections,
// the journal and write path, resync and verify, and generation
// identifiers. A Node serves the nbd.Device interface over a local Store
// and replicates every write to its peers.
//
// # State and its owners
//
// The decisions (how two nodes' data relate on connect, who resyncs from
// whom, who may be promoted, when a new generation starts) are plain
// functions in internal/decide. The journal of writes not yet acknowledged
// by every peer, the in-flight overlap set and each peer's progress through
// the journal (what was shipped, acknowledged, is known held) are logic-only
// units in internal/journal; the sender's dedup index and encoder are in
// internal/dedup; resync pacing arithmetic in internal/pace. They take no
// locks and touch no sockets or files; the types here drive them.
//
//   - Node (node.go) owns the role, its copy of the meta file's superblock
//     (generation identifiers, disk state), the journal and in-flight set,
//     the mask of peers that receive writes, and the promotion in progress
//     (roles.go), and its part in quorum: the lease it holds as Primary,
//     the promise it keeps as a voter, the Primary it supports
//     (quorum.go). The write path is write.go; the operator's verbs are
//     roles.go, syncops.go, verify.go and link.go (connect, disconnect).
//   - peer (peer.go) is this node's relation to one other node for the
//     node's lifetime: connection and replication state, what the peer
//     announced (role, disk), its out-of-sync bitmap, its journal progress
//     and resync bookkeeping, counters. Its connection comes and goes
//     (link.go: dial, accept, back-off, TLS and admission).
//   - session (session.go) is one live connection to a peer, from
//     negotiation (handshake.go) to teardown. Its goroutines own their own
//     state: the sender (sender.go) its dedup encoder and batches, the
//     receiver (receiver.go) the frames held back behind a dedup miss, the
//     applier (apply.go) the received writes in flight, the resync loop
//     (resync.go, csums.go, verify.go) its pacing.
//   - What a Secondary knows of the other nodes' copies (peerseq.go), the
//     local disk failure policy (diskfail.go) and a leaving Primary's last
//     barrier (drain.go) act on the state above.
//   - Snapshots (snapshot.go): the node's copy-on-write store
//     (internal/snapstore), which every change of the live device passes
//     first; a snapshot is a journal entry that is a barrier here and, as
//     a Snapshot frame, on the peers that take it. A lazy one
//     (SnapshotLazy, a backup's) is the asking node's choice alone, and
//     its barrier skips the disk flush where the store can mark itself
//     unsynced instead (no BarrierAck then); reads of the exports yield
//     to writes (SnapshotReadMinRate).
//
// # Locking
//
// Node.mu guards the Node's and every peer's state (fields of peer below
// its "guarded by Node.mu" line); atomics are read without it. Store,
// meta-file bitmap and socket I/O happen outside it, except the rare
// superblock updates (role and generation changes, Node.persist), which
// are made durable under it so no write can slip past them. Events are
// queued under Node.mu and delivered in order by Node.unlock after it is
// released. Lock order: Node.mu, then Node.markMu (appliers' marks vs a
// bitmap clear), then the applied ring's lock, then a peer's markOrigin
// lock; applier.mu, session.ctrlMu and the dedup resend lock are leaves.
// Methods named ...Locked are called with Node.mu held.
//
// # Semantics worth knowing
//
//   - Flush under protocol C sends a barrier to every peer that receives
//     writes and waits for each to fdatasync; under protocol A it is a
//     local fdatasync only (the barrier is sent, not awaited).
//   - Peers with the lower node id dial; the higher accepts. A peer that
//     does not ack within Timeout is dropped, its unacked writes marked in
//     its bitmap; reconnects back off from ConnectInterval to 5s, forever,
//     until Disconnect.
//   - Resync runs only from a Primary (or toward a node connected with
//     --discard-my-data). Two Secondaries whose data differ wait in
//     PausedSync until one of them is promoted; two Secondaries of the same
//     generation settle to Established.
//   - All-zero blocks are resynced as zeroes ranges, without data.
//   - Checksum-based resync (Config.CSums) and online verify: csums.go,
//     verify.go. Resync and verify are paced by ResyncRate/ResyncMinRate
//     within half of JournalBytes.
//   - A Primary crashed (FlagPrimary still set at Open): the activity log's
//     hot extents are marked toward every peer. The flag is cleared on a
//     clean demote or Close only after the data is flushed and the
//     activity log released.
//   - Promotion is a two-phase cluster-wide change (roles.go); a failing
//     local disk is detached per on-io-error (diskfail.go); a Secondary
//     keeps what other nodes may lack until the Primary confirms it
//     (peerseq.go); a closing Primary drains its journal (drain.go).
//   - Not yet done: a Primary as SyncTarget (refused: demote it first),
//     reads served from a peer on a detached Primary.
//
// # Quorum, lease and failover
//
// With Config.Quorum a Primary acknowledges I/O only while it holds a
// lease: a quorum of voters (data nodes and witnesses) acknowledged its
// current data generation within the timeout, counted from the request's
// send time. Each acknowledging voter promises not to help another node to
// the Primary role until 9/8 of the timeout after it last heard from that
// Primary, on its own clock; quorums intersect, so the old Primary stops
// acknowledging before any successor can be elected, whatever the clocks'
// rates within ±5.8 %. A Primary that loses a data peer drops that peer's
// acknowledgement and starts a new generation before any write completes
// without it, and a voter never grants the Primary role to a node older
// than what it knows: no node lacking an acknowledged protocol-C write is
// elected. Witnesses (witness.go) hold no data, only the newest generation
// announced to them. Elections (election.go) pick the best candidate the
// quorum sees. quorum.go has the details; docs/quorum.md the argument.
package replica
