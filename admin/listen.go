package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/repd/repd/sockfile"
	"golang.org/x/sys/unix"
)

// Listen opens the admin unix socket at path. Without group the socket is
// mode 0600 and only root and the daemon's own user may connect; with group
// it is 0660, owned by that group, and members may connect too. A stale
// socket left by a dead daemon is replaced; a live one is refused.
func Listen(path, group string, log *slog.Logger) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("resource.admin-group %q: %w", group, err)
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	// A stale socket is replaced; a live one or a non-socket is refused.
	l, err := sockfile.Listen(path, 0o600)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("admin socket: chown to group %s: %w", group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &credListener{Listener: l, gid: gid, log: log}, nil
}

// credListener refuses connections from users who may not administer the
// node, checked with SO_PEERCRED (the file mode alone is not trusted: the
// socket's directory may have been created with other permissions).
type credListener struct {
	net.Listener
	gid int
	log *slog.Logger
}

func (l *credListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if err := l.allowed(c); err != nil {
			l.log.Warn("admin connection refused", "err", err)
			c.Close()
			continue
		}
		return c, nil
	}
}

// ErrPermission is returned for an admin caller without permission.
var ErrPermission = errors.New("permission denied")

func (l *credListener) allowed(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%w: not a unix connection", ErrPermission)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return fmt.Errorf("%w: SO_PEERCRED: %v", ErrPermission, cerr)
	}
	if cred.Uid == 0 || int(cred.Uid) == os.Geteuid() {
		return nil
	}
	if l.gid >= 0 && (int(cred.Gid) == l.gid || inGroups(cred.Pid, l.gid)) {
		return nil
	}
	return fmt.Errorf("%w: uid %d pid %d is not root, the daemon's user, or in the admin group", ErrPermission, cred.Uid, cred.Pid)
}

func inGroups(pid int32, gid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, f := range strings.Fields(rest) {
				if f == strconv.Itoa(gid) {
					return true
				}
			}
		}
	}
	return false
}
