package qcow2

import (
	"os"

	"golang.org/x/sys/unix"
)

// writeback starts writeback of the file's [off, off+n) (sync_file_range
// SYNC_FILE_RANGE_WRITE), and with wait first waits for what is already
// under writeback there and then for the range's own writeback to end. No
// metadata is written and no journal commit forced: it only keeps the
// page cache from piling up the image's data for the final fsync.
func writeback(f *os.File, off, n int64, wait bool) error {
	flags := unix.SYNC_FILE_RANGE_WRITE
	if wait {
		flags |= unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	}
	return unix.SyncFileRange(int(f.Fd()), off, n, flags)
}
