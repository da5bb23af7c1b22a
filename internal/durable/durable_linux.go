package durable

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// withFd runs fn on f's descriptor while f cannot be closed under it
// (f.Fd would hand out a number that a concurrent Close may release and an
// open elsewhere reuse). A closed f is an error.
func withFd(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func datasync(f *os.File) error {
	return withFd(f, func(fd int) error {
		for {
			err := unix.Fdatasync(fd)
			if err != unix.EINTR {
				return err
			}
		}
	})
}

func lock(f *os.File) error {
	return withFd(f, func(fd int) error {
		for {
			err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
			switch {
			case err == unix.EINTR:
				continue
			case errors.Is(err, unix.EWOULDBLOCK):
				return ErrLocked
			}
			return err
		}
	})
}
