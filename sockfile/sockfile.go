// Package sockfile binds unix sockets at a path on disk safely: the NBD
// and admin sockets of repd share it.
//
// A daemon that died leaves its socket file behind, and a new one must be
// able to start; but whatever else sits at the path is not the daemon's to
// delete: a regular file, a directory or a symbolic link (never followed)
// is refused, and so is a socket another process still listens on (taking
// it over would cut that process's clients off from it silently).
package sockfile

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"
)

// Listen binds a unix stream socket at path with permissions perm. A stale
// socket file (nothing listens on it: connecting is refused) is replaced;
// a live socket, anything that is not a socket, or a socket whose state
// cannot be told is refused with an error that says what is there and
// what to do. The file is created with perm from the start (umask), and
// removed when the listener is closed.
func Listen(path string, perm os.FileMode) (*net.UnixListener, error) {
	if err := clearPath(path); err != nil {
		return nil, err
	}
	old := syscall.Umask(int(^perm & 0o777))
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	if err := os.Chmod(path, perm); err != nil {
		ul.Close()
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	return ul, nil
}

// clearPath removes a stale socket at path and refuses anything else there.
func clearPath(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("unix socket %s: the path exists and is %s, not a socket: remove it or choose another path", path, describe(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("unix socket %s: another process is listening on it (another repd?): stop it or choose another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("unix socket %s: cannot tell whether it is in use (%v): remove it if nothing uses it", path, err)
	}
	// Stale: left by a process that exited.
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unix socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

func describe(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "not a socket (" + m.Type().String() + ")"
}
