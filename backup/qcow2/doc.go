// Package qcow2 writes and reads qcow2 images (QEMU's docs/interop/qcow2.txt),
// version 3, as backups need them: a writer that fills an image cluster by
// cluster (leaving unwritten clusters to a backing file), a reader that
// follows backing chains, an in-place rebase, and a structural check.
//
// # Layout of the images this package writes
//
// All integers are big-endian. Cluster 0 holds the header, its extensions
// and the backing file name; data clusters and L2 tables follow in the
// order they are first written; Close appends the L1 table, the refcount
// table and the refcount blocks, then writes cluster 0 and fsyncs. Until
// Close the file has no magic, so an interrupted write is never taken for
// an image.
//
//	cluster 0    header (104 bytes, below) | extensions | backing file name
//	cluster 1..  data clusters and L2 tables, interleaved
//	             L1 table (l1_size × 8 bytes, contiguous clusters)
//	             refcount table (contiguous clusters), refcount blocks
//
// Header (version 3, header_length 104):
//
//	0  magic "QFI\xfb"       4  version 3              8  backing_file_offset (8)
//	16 backing_file_size (4) 20 cluster_bits (4)       24 size (8)
//	32 crypt_method 0 (4)    36 l1_size (4)            40 l1_table_offset (8)
//	48 refcount_table_offset (8)                        56 refcount_table_clusters (4)
//	60 nb_snapshots 0 (4)    64 snapshots_offset 0 (8) 72 incompatible_features 0 (8)
//	80 compatible_features 0 (8)                        88 autoclear_features 0 (8)
//	96 refcount_order 4 (4)  100 header_length 104 (4)
//
// Extensions: type (4) | length (4) | data padded to 8; the backing file
// format (0xe2792aca, "raw" or "qcow2") when there is a backing file, then
// the end marker (type 0). The backing file name follows, not
// NUL-terminated, at most 1023 bytes, relative to the image's directory.
//
// L1 entry: bits 9-55 the L2 table's offset, bit 63 COPIED (refcount 1).
// L2 entry: bits 9-55 the data cluster's offset, bit 0 "reads as zeroes",
// bit 62 compressed (never written; refused when read), bit 63 COPIED. An
// entry of 0 is unallocated: the cluster reads from the backing file, or as
// zeroes without one. Refcounts are 16 bits (refcount_order 4); every
// cluster the writer allocates is referenced exactly once, so every
// refcount is 1 and every COPIED bit is set.
//
// These values are part of the on-disk format and must not be changed.
package qcow2
