// Package backup keeps full and incremental backups of point-in-time NBD
// exports as a chain of qcow2 files in a directory, merges old points away,
// restores any point, and verifies the lot.
//
// A backup reads a snapshot export (RESOURCE@NAME) through nbd/client. A
// full backup reads only what base:allocation reports as not reading zero;
// an incremental reads only what qemu:dirty-bitmap:PREV reports changed
// since the snapshot PREV of the previous backup, and is a qcow2 file backed
// by the previous one. Blocks smaller than a cluster are completed from the
// previous point's chain, read locally. The directory:
//
//	DIR/manifest.json                  the chain (below), replaced atomically
//	DIR/20261205T101500Z-full.qcow2    the oldest point: no backing file
//	DIR/20261205T111500Z-inc.qcow2     backed by the file before it
//	DIR/.lock                          flock: one writer at a time
//
// manifest.json (version 1):
//
//	{"version":1, "virtual_size":N, "cluster_size":65536,
//	 "points":[{"file":"…-full.qcow2", "kind":"full", "snapshot":"s0",
//	            "time":"…", "source":"r0@s0", "bytes_read":…,
//	            "data_bytes":…, "file_bytes":…, "sha256":"…"},
//	           {"file":"…-inc.qcow2", "kind":"inc", "backing":"…-full.qcow2",
//	            "snapshot":"s1", "base_snapshot":"s0", …}]}
//
// Points are oldest first; the first is always full, and every inc's
// backing is the file of the point before it. sha256 is the file's, so
// `sha256sum` checks a copy by hand.
//
// Each step that changes the directory is ordered so that a crash leaves
// every point in the manifest restorable: a new file is written as
// NAME.partial, fsynced, renamed and the directory fsynced before the
// manifest names it; files are deleted only after the manifest stopped
// naming them. Retention (Retain) merges the oldest points into a new full
// file for the oldest point kept, rebases its successor onto it in place
// (qcow2.Rebase), then drops the older files.
//
// Restoring without this package: every point is an ordinary qcow2 chain,
//
//	qemu-img convert -O raw DIR/POINT.qcow2 TARGET              a file or block device
//	qemu-img convert -n -O raw DIR/POINT.qcow2 nbd://HOST/EXPORT  onto an NBD export
//
// and Restore does the first natively.
package backup
