// Package chaos injects faults into repd clusters and checks that nothing
// acknowledged is ever lost (issue 8).
//
// A Workload writes through NBD with several pipelined connections; every
// block it writes carries a header naming the write (writer, seq) and a
// checksum, and every request is stamped on a logical clock when it is sent
// and when its reply arrives. After a fault and the recovery, Check reads the
// device back and decides, block by block, whether the content is one the
// history allows:
//
//   - protocol C (and any surviving primary): a block holds a write x, or
//     zeroes, such that no acknowledged write y to that block was sent after
//     x was acknowledged (y would have superseded x). A write in flight at a
//     fault (sent, never acknowledged) may or may not be there.
//   - protocol A after a failover: the disk is a prefix of the history:
//     if the device shows a write sent at clock T, every write acknowledged
//     before T is there (or superseded), block by block.
//
// A Follower is a Workload that follows the Primary, as a failover client
// would (quorum.go's scenarios, with auto-promote): it writes to whichever
// data node is Primary and holds its lease, and moves to the successor
// when requests fail or hang there; every write is recorded with the node
// that served it. CheckExclusive then requires that at no instant two
// nodes acknowledged writes: no acknowledgement by a node after another
// node's acknowledgement that came after the route to the first was
// opened. The events of every node (`repctl events`) must show no split
// brain and no node becoming Primary without an UpToDate disk.
//
// Scenarios start real repd processes (built once per run) on 127.0.0.x
// addresses with a faultnet.Proxy on every peer link: a harness.Cluster
// (the lower node id dials, so each node gets its own resource file in
// which the peers it dials are listed at their proxy's address). A
// Scenario runs a Schedule, a list of timed actions derived from a seed; a
// failure prints the seed and the schedule, and
// `go run ./chaos/cmd/soak -seed N -scenario NAME` replays it.
package chaos
