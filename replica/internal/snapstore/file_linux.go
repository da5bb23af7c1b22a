package snapstore

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// allocate reserves [off, off+n) with fallocate(2) mode 0 (the file size is
// not changed beyond what Truncate set).
func allocate(f *os.File, off, n int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), 0, off, n)
		switch {
		case err == unix.EINTR:
			continue
		case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS):
			return errNoAllocate
		}
		return err
	}
}

// writeSync writes p at off with RWF_DSYNC: durable when it returns,
// without flushing the rest of the file (a lazy snapshot's copies). Where
// the kernel lacks it, a write and an fdatasync.
func writeSync(f *os.File, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwritev2(int(f.Fd()), [][]byte{p}, off, unix.RWF_DSYNC)
		switch {
		case err == unix.EINTR:
			continue
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL):
			return writeThenSync(f, p, off)
		case err != nil:
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}
