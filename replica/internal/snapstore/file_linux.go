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
