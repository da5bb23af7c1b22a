// Package snapstore keeps copy-on-write snapshots of a block device in one
// store file per node: the preserved chunks, the snapshot table, and for
// every snapshot the blocks written after it (changed-block tracking, for
// incremental backups). It does file I/O only: the caller reads the live
// device for it (ReadFunc), holds the write barrier at Create, and ships
// nothing anywhere.
//
// # How the caller uses it
//
//	Open(path, Options{DeviceSize, BlockSize, Capacity, OnInvalidate, Logger})
//	before every change of live [off, off+n):  Preserve(ctx, off, n, readLive), then issue the change
//	at a barrier (no write between Preserve and completion, live flushed):  Create(name, now)
//	serve RESOURCE@NAME:  Get(name), ReadAt(ctx, name, p, off, readLive)
//	block status "changed since A (until B)":  ChangedRange(A, B, off, n, fn)
//	List, Delete, Stats, Close
//
// Every change of the live device goes through Preserve: on the Primary the
// NBD writes, trims and write-zeroes; on a Secondary the replicated writes
// and resync writes too, or its snapshots would see them. A Secondary takes
// a snapshot where the barrier is in the replication stream: after every
// write before it is applied (Preserve, write, flush) and before any after
// it starts. The store does not know roles, disk states or the stream; a
// snapshot of an Inconsistent disk is the caller's to refuse.
//
// Locking, for the caller: Preserve, ReadAt, ChangedRange and List run
// concurrently; Create, Delete and Close wait for the calls in progress. A
// ReadFunc must read the backing store directly, never wait for writes in
// flight or for the caller's barrier (see ReadFunc).
//
// # Copy-on-write and sharing
//
// The device is cut into chunks (ChunkSize, 64 KiB by default). Snapshots
// get sequence numbers (seq) from 1 up, never reused. The first time a chunk
// is changed after the newest valid snapshot N, its live content — which is
// then every snapshot's image of it that has no copy yet — is copied once
// into a free slot of the store, tagged with N's seq. A chunk's copies have
// ascending tags; snapshot S reads the chunk from the copy with the
// smallest tag >= seq(S), or from the live device if there is none (the
// chunk has not changed since S). A copy with tag t, next lower copy of the
// same chunk p (0 if none), serves the valid snapshots with seq in (p, t];
// when there are none it is freed (the GC rule, applied after Delete, after
// invalidation and at Open).
//
// Why 64 KiB: it is the unit of copy and of metadata. The first write into
// a chunk after a snapshot reads and writes a whole chunk: 4 KiB random
// writes pay 16 times their size once per chunk and snapshot. Each slot
// costs a 32-byte descriptor on disk and about 40 bytes in memory, and the
// fast path one bit per device chunk (200 KiB for 100 GiB). 4 KiB chunks
// would multiply the metadata and the commit traffic of sequential writes by
// 16; 1 MiB chunks would multiply random-write amplification by 16 and make
// the post-crash changed-block record coarse. 64 KiB is where qcow2 clusters
// and LVM thin-pool chunks settled for the same trade.
//
// # Crash safety
//
// The invariant: a snapshot never reads data written after it was taken.
// Preserve returns — so the caller issues the live write — only after the
// chunk's copy and its descriptor are durable (unless every valid snapshot
// is lazy: see Lazy snapshots). The descriptor holds a hash
// of the copy's data, so data and descriptor are written together and one
// fdatasync commits both: a round of the group commit writes the
// descriptors of every copy whose data is written, then syncs once, and
// concurrent copies share that sync (one sync per copy alone, one per
// batch under load). A crash before the sync completes may leave the
// descriptor on disk and the data not, or torn: at Open after an unclean
// shutdown, the data of every copy tagged with the newest valid snapshot
// is read and checked against its descriptor's hash, and a copy that
// fails is an unfinished one, freed exactly like a torn descriptor (its
// Preserve never returned: the chunk is unchanged on the live device, and
// the snapshot reads it there). Only those copies can be unfinished:
// copies are tagged with the newest valid snapshot, and every header change
// that makes another snapshot the newest (Create, Delete, invalidation)
// waits for the copies in flight and is durable before a copy with the new
// tag starts. Such a copy is always its chunk's last; a failing copy below
// another is damage. A descriptor is written only into a slot whose old
// content no valid snapshot needs, so a crash during its write loses
// nothing: a torn descriptor fails its checksum and is taken as free, and
// a slot whose old descriptor survives next to torn new data held a
// stale copy, which the GC rule frees. Freed slots are not rewritten: a
// stale descriptor (a copy for snapshots since deleted or invalidated) is
// recognized by the GC rule, because tags are seqs that are never reused.
// The cost is at Open after an unclean shutdown: reading the copies made
// since the newest snapshot (at most the store's used bytes). The data
// hash is xxhash64 seeded with the store's instance, which a writer of the
// live device does not know: it cannot choose data that collides with a
// slot's stale content; by chance the odds are 2^-64 per unfinished copy.
//
// Format version 1 (stores made before version 2) orders instead of
// hashing: a round writes the descriptors of copies whose data the
// previous round synced, then syncs, so a descriptor on disk always points
// at durable data, at two syncs per copy. Such a store is read and written
// in version 1 as long as it holds a snapshot (its copies have no data
// hash, and a conversion would have to read and rewrite them all); Open
// recreates a store that holds none, valid or invalid, in version 2.
//
// # Lazy snapshots
//
// A snapshot taken with CreateLazy is one whose loss costs only time (a
// backup's: without it the next backup is a full one). While every valid
// snapshot is lazy, a copy skips the commit's fdatasync: its data and
// descriptor are written (to the page cache) and Preserve returns, so the
// first write into a chunk no longer waits for the disk. Before the first
// such copy the header gets flagUnsynced and the system's boot ID
// (/proc/sys/kernel/random/boot_id), durably. A flusher syncs the store
// once DefaultLazySync has passed without a new copy (within two of the
// last one) and, when no copy came during that sync, writes a header
// without the flag; so do Close, Open and the Create of a durable
// snapshot (whose copies are synced again, since a copy serves every
// snapshot without one), and a header that clears the flag is written only
// after a sync of everything before it. The Create of a lazy snapshot
// while the flag is set keeps it: its sealed area and header are written
// without a sync (under the durable flag a power loss invalidates every
// snapshot, and a kill leaves them in the page cache), the header to the
// slot that does not hold the durable one, so that taking the next
// backup's snapshot does not wait for the last one's copies to reach the
// disk: any sync of the store file then costs a journal commit that
// writes them back (0.4-0.5 s under the bench's load). Delete under the
// flag is written the same way (1.1 s with its syncs): after a power loss
// a snapshot deleted then may be back, invalid.
// CreateLazyUnsynced is CreateLazy for a caller that did not sync the live device at the snapshot's point (repd's
// Secondary, which would otherwise hold every replicated write behind that
// fdatasync): the snapshot's entry is written with the flag set, as a
// lazy copy would set it, and every header that clears the flag is
// written only after Options.SyncLive has synced the live device too (the
// flusher, Open, Close, a durable Create); it is refused beside a valid
// durable snapshot, which a power loss would then take along. At Open
// after an unclean shutdown
// with the flag set: on the same boot repd died but the system did not, so
// the page cache holds every copy whose Preserve returned (the header
// written at Open syncs them first); on another boot, or where the boot ID
// is unknown, a live write may be on disk and its copy not, so every valid
// snapshot is invalidated (reason 4), and OnInvalidate is told; a lazy
// snapshot whose header was written without a sync may instead be gone
// (so may the changed blocks after it: they are an invalid snapshot's).
//
// Changed-block tracking: the blocks written in the current epoch (since the
// newest valid snapshot) are a bitmap in memory, set by Preserve before the
// write. Create writes it to its snapshot's area and syncs before the table
// marks the area sealed; Close does the same for the newest snapshot and
// marks the store clean. After an unclean shutdown the current epoch is
// rebuilt from the durable copies, which record exactly which chunks changed
// since each snapshot: the changed set is then whole chunks (a superset,
// never a subset, of the blocks written). Deleting or invalidating a
// snapshot folds its epoch into the valid snapshot before it (area written
// and synced before the table changes, so a crash in between only reports
// more blocks changed).
//
// A full store invalidates the snapshots that needed the copy (those with
// no copy of the chunk: the newest ones), durably, frees their copies and
// lets the write go on. An I/O error on the store file invalidates every
// snapshot (after a failed fdatasync nothing written before it can be
// trusted); the store then refuses new snapshots until reopened. What is
// assumed of the disk: power loss during a write leaves each byte of it old
// or new, and bytes it does not cover untouched (so a descriptor is never
// destroyed by a write of its neighbour: true of disks that write 512-byte
// sectors atomically). Header slots, areas and descriptors are protected by
// checksums and by write ordering, not by atomicity.
//
// # Store file layout
//
// All integers are little-endian. Offsets are in bytes. The layout, magics,
// field offsets and enum values are part of the on-disk format.
//
//	offset                 size
//	0                      16384   header slot 0
//	16384                  16384   header slot 1
//	32768                  64×A    changed-block areas, one per table entry
//	32768+64A              ...     slot groups: G bytes each, the last one partial
//
// where A = 4096×⌈8×⌈blocks/64⌉/4096⌉ with blocks = ⌈DeviceSize/BlockSize⌉,
// and a group is one descriptor page and 128 chunk slots, G = 4096+128×C
// with C = ChunkSize. Slot k's descriptor is at 32768+64A+⌊k/128⌋×G+(k%128)×32
// and its data at 32768+64A+⌊k/128⌋×G+4096+(k%128)×C. The file holds
// ⌊Capacity/C⌋ slots; its length is the end of the last one. Slot groups
// are reserved with fallocate; areas are reserved when a snapshot takes
// their table entry. A store Open creates may then be written with zeroes,
// group by group, where no copy has been (Options.Prewrite, prewrite.go):
// a never-used slot and its descriptor read as zeroes either way.
//
// A header slot (16384 bytes). A header is written to the slot that does
// not hold the newest durable header, and made durable (fdatasync or
// O_DSYNC) before the next write, so the slots alternate; the valid slot
// with the higher sequence number wins, so a torn write of one leaves the
// other. The one exception: while the durable header has flag bit 1
// (unsynced), a lazy snapshot's Create writes its header without a sync,
// to the same slot each time, never over the durable one (see Lazy
// snapshots):
//
//	+0     8  magic "REPDSNAP"
//	+8     4  format version (2; 1 is still read and written, see Crash safety)
//	+12    4  flags: bit 0 clean (closed cleanly: the newest snapshot's area is complete),
//	          bit 1 unsynced (copies of lazy snapshots, or the live device at one, may not be durable; see Lazy snapshots)
//	+16    8  header sequence number
//	+24    8  instance: random, chosen at creation; descriptors carry it
//	+32    8  device size, bytes
//	+40    8  chunk size, bytes
//	+48    8  block size (changed-block granularity), bytes
//	+56    8  capacity, bytes (a multiple of the chunk size)
//	+64    4  table entries (64)
//	+68    4  reserved, zero
//	+72    8  next snapshot sequence number (seqs start at 1)
//	+80   16  boot ID of the system that made unsynced copies or snapshots (flag bit 1), else zero
//	+96  160  reserved, zero
//	+256 64×128  snapshot table: 64 entries
//	+8448  ...  reserved, zero
//	+16376 8  xxhash64 of bytes +0..+16376
//
// A table entry (128 bytes; all zero when free):
//
//	+0   1  state: 0 free, 1 valid, 2 invalid
//	+1   1  flags: bit 0 sealed (its changed-block area is complete on disk),
//	        bit 1 lazy (CreateLazy, CreateLazyUnsynced)
//	+2   1  invalid reason: 1 store full, 2 store I/O error, 3 metadata damaged,
//	        4 the system went down while lazy copies were unsynced; 0 when valid
//	+3   1  name length (1..64)
//	+4   4  reserved, zero
//	+8   8  seq (creation order, from 1)
//	+16  8  created, Unix nanoseconds
//	+24  8  invalidated, Unix nanoseconds (0 when valid)
//	+32  8  reason detail: store full: byte offset of the chunk that needed a copy
//	+40 64  name (letters, digits, '-', '_', '.'), zero padded
//	+104 24 reserved, zero
//
// A changed-block area (A bytes) is the bitmap of an epoch: bit i (bit i%64
// of 64-bit word i/64) set when block i was written after the entry's
// snapshot and before the next valid one. It is meaningful only when the
// entry is sealed, or for the newest valid snapshot when the header is clean;
// it is always written whole.
//
// A slot descriptor (32 bytes; all zero when never written), version 2:
//
//	+0   8  chunk index (device offset / chunk size)
//	+8   8  tag: seq of the newest valid snapshot when the chunk was copied
//	+16  8  data hash: xxhash64, seeded with the instance, of the slot's
//	        data (the chunk's bytes: the device's last chunk may be short)
//	+24  8  checksum: xxhash64 of the instance (8 bytes) then bytes +0..+24
//
// Version 1: +16 holds the instance and +24 xxhash64 of bytes +0..+24;
// there is no data hash.
//
// A descriptor whose checksum fails is free (a write that never completed)
// after an unclean shutdown, and damage after a clean one; so is, in
// version 2, one whose data fails its hash (checked only after an unclean
// shutdown, see Crash safety). A descriptor that checksums but names a
// chunk beyond the device or a seq not yet issued is damage (in version 1
// also one that names another instance; in version 2 such a descriptor
// fails its checksum). Damage invalidates every snapshot (reason 3): which
// copies it hid is unknown. Either is cleared to zero at Open.
package snapstore
