package nbd

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"
)

// ErrServerClosed is returned by Serve and ServeConn after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Reasons the server refuses a request before it reaches the Device. They
// wrap an errno so that errorCode maps them like Device errors, and they are
// what OnRequest sees.
var (
	ErrOutOfRange     = fmt.Errorf("nbd: request beyond the end of the export: %w", syscall.EINVAL)
	ErrNoSpace        = fmt.Errorf("nbd: write beyond the end of the export: %w", syscall.ENOSPC)
	ErrReadOnly       = fmt.Errorf("nbd: export is read-only: %w", syscall.EPERM)
	ErrUnknownCommand = fmt.Errorf("nbd: unknown or unsupported command: %w", syscall.EINVAL)
	ErrBadFlags       = fmt.Errorf("nbd: command flag not valid for this command: %w", syscall.EINVAL)
	ErrTooLarge       = fmt.Errorf("nbd: request larger than the maximum payload: %w", syscall.EINVAL)
	ErrShutdown       = fmt.Errorf("nbd: server is shutting down: %w", syscall.ESHUTDOWN)
	// ErrNoMetaContext answers NBD_CMD_BLOCK_STATUS on a connection that
	// selected no metadata context for its export.
	ErrNoMetaContext = fmt.Errorf("nbd: block status without a metadata context (select one with NBD_OPT_SET_META_CONTEXT for this export): %w", syscall.EINVAL)
	// ErrZeroLength answers NBD_CMD_BLOCK_STATUS of length 0, which no
	// extent can describe.
	ErrZeroLength = fmt.Errorf("nbd: block status of 0 bytes: %w", syscall.EINVAL)
	// ErrNotFast answers NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO on
	// a Device that is not a Zeroer (NBD_ENOTSUP, as the spec asks).
	ErrNotFast = errors.New("nbd: zeroing would not be faster than writing")
)

// errorCode maps an error to the NBD error value sent in a reply:
// ENOSPC/EDQUOT/EFBIG → NBD_ENOSPC, EPERM/EROFS/fs.ErrPermission → NBD_EPERM,
// EINVAL → NBD_EINVAL, ESHUTDOWN → NBD_ESHUTDOWN, ENOMEM → NBD_ENOMEM,
// ErrNotFast → NBD_ENOTSUP, anything else → NBD_EIO. nil is 0.
func errorCode(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return ENOSPC
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS), errors.Is(err, fs.ErrPermission):
		return EPERM
	case errors.Is(err, syscall.EINVAL):
		return EINVAL
	case errors.Is(err, syscall.ESHUTDOWN):
		return ESHUTDOWN
	case errors.Is(err, syscall.ENOMEM):
		return ENOMEM
	case errors.Is(err, ErrNotFast):
		return ENOTSUP
	default:
		return EIO
	}
}

// maxQuoted is how much of a name a client sent goes into a message or a
// log line. An option carries up to 64 KiB: quoted whole, an unknown
// export name made a 320 KiB log line per unauthenticated connection, and
// an error reply longer than the spec's MaxString.
const maxQuoted = 64

// quoteName quotes a client's name for a message or a log line: at most
// its first maxQuoted bytes (not splitting a character), then its length.
func quoteName(name string) string {
	if len(name) <= maxQuoted {
		return strconv.Quote(name)
	}
	i := maxQuoted
	for k := 1; k < utf8.UTFMax && !utf8.RuneStart(name[i]); k++ {
		i--
	}
	return fmt.Sprintf("%q… (%d bytes)", name[:i], len(name))
}

// wireString makes m a string the spec allows in a reply: valid UTF-8
// without NUL, at most MaxString bytes.
func wireString(m string) string {
	m = strings.ToValidUTF8(strings.ReplaceAll(m, "\x00", " "), "?")
	if len(m) > MaxString {
		m = m[:MaxString]
		for !utf8.ValidString(m) {
			m = m[:len(m)-1]
		}
	}
	return m
}
