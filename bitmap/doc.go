// Package bitmap keeps what a node knows about which of its blocks a peer is
// missing: per-peer dirty bitmaps (Bitmap), the activity log of extents that
// may have writes in flight, and the meta file that persists both together
// with the superblock (identity, generation identifiers, disk state, flags).
//
// A Bitmap has one bit per block of Granularity bytes; a set bit means the
// block may differ on the peer and must be resynced.
package bitmap
