// Package bitmap keeps what a node knows about which of its blocks a peer is
// missing: per-peer dirty bitmaps (Bitmap), the activity log of extents that
// may have writes in flight, and the meta file (Meta) that persists both
// together with the superblock (identity, generation identifiers, disk state,
// flags). It knows nothing of replication: the engine decides what the GI and
// flags mean.
//
// # Bitmaps
//
// A Bitmap has one bit per block of Granularity bytes (a power of two, 512 B
// to 1 MiB); a set bit means the block may differ on the peer and must be
// resynced. Bit i is bit i%64 of little-endian 64-bit word i/64, both in
// memory, in MarshalBinary (exchanged between peers) and in the meta file.
//
// # Activity log
//
// The device is cut into AL extents of ALExtentSize bytes (4 MiB by default).
// At most ALExtents of them are hot. Before the first write into an extent,
// Activate persists an AL transaction whose hot set includes it; before an
// extent leaves the hot set, the data written into it (the caller's
// SyncDataBeforeEvict) and the bitmap pages covering it are made durable.
// So after a crash, every block written on this node but perhaps not on a peer
// is either marked in the on-disk bitmap or lies in an extent of the newest
// AL record, and MarkHotOutOfSync marks those extents toward every peer. The
// engine activates the replicated writes a Secondary applies too: after its
// system went down (the superblock's boot ID says so), the writes it had
// acknowledged but not synced lie in the hot extents as well.
//
// # Meta file layout
//
// All integers are little-endian. Offsets are in bytes. The layout, magics,
// field offsets and enum values are part of the on-disk format.
//
//	offset                   size
//	0                        4096   superblock slot 0
//	4096                     4096   superblock slot 1
//	8192                     4×R    AL ring: 4 transaction records of R bytes
//	8192+4R                  P×B    bitmaps: one per peer slot, B bytes each
//
// where R = 4096×⌈(32 + 4×ALExtents + 8)/4096⌉ (4 KiB for up to 1014 extents),
// P = MaxPeers and B = 4096×⌈8×⌈blocks/64⌉/4096⌉ with blocks = ⌈Size/Granularity⌉.
//
// A superblock slot (4096 bytes). The two slots are written alternately; the
// valid slot with the higher sequence number wins, so a torn write of one slot
// leaves the other:
//
//	+0    8  magic "REPDMETA"
//	+8    4  format version (1)
//	+12   4  flags (FlagPrimary, FlagResyncTarget, FlagCleanShutdown, ...)
//	+16   8  sequence number
//	+24   8  instance: random, chosen by Create; AL records must carry it
//	+32   8  device size, bytes
//	+40   8  bitmap granularity, bytes
//	+48   8  AL extent size, bytes
//	+56   4  AL extents (hot extents at most)
//	+60   1  node id
//	+61   1  disk state (0 Diskless, 1 Inconsistent, 2 Outdated, 3 UpToDate, 4 Failed)
//	+62   1  max peers (1..32)
//	+63   1  resource name length (1..64)
//	+64  64  resource name, zero padded
//	+128  8  current UUID (0: no data generation yet)
//	+136  8  history UUID 0
//	+144  8  history UUID 1
//	+152  8  reserved, zero
//	+160 64  peer slot table: 32 × { flags u8 (bit 0: in use), node id u8 }
//	+224 32  reserved, zero
//	+256 256 bitmap UUIDs: 32 × u64, one per peer slot
//	+512 16  boot ID of the system at the daemon's last open (zero: unknown;
//	         written as zero before it was defined, so readers of format 1
//	         without it ignore it)
//	+528 ... reserved, zero
//	+4088 8  xxhash64 of bytes +0..+4088
//
// An AL transaction record (R bytes). Every record holds the complete hot set;
// the valid record with the highest sequence number (and the superblock's
// instance) wins, so a torn record leaves the previous one:
//
//	+0     8  magic "REPDALTX"
//	+8     8  instance (as in the superblock)
//	+16    8  sequence number
//	+24    4  n: number of hot extents
//	+28    4  reserved, zero
//	+32  4×n  hot extent numbers, u32, strictly ascending
//	...       zero
//	+R-8   8  xxhash64 of bytes +0..+R-8
//
// A bitmap area (B bytes) holds the bitmap's words as in MarshalBinary,
// zero padded. It is written in whole 4 KiB pages and carries no checksum: a
// torn page holds, for each bit, its old or its new value, and bits are only
// cleared once the peer has the block durably.
package bitmap
