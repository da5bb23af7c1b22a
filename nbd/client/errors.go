package client

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrProtocol marks a server that broke the protocol (a bad magic, a length
// beyond a bound, a chunk outside its request, a reply to no request). The
// connection is closed and every later call fails with the same error.
var ErrProtocol = errors.New("nbd protocol violation by the server")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("nbd client closed")

func protocolErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

// OptionError is a server's error reply to an option during the handshake.
type OptionError struct {
	Option  uint32
	Type    uint32
	Message string // the server's text, if any
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("nbd server refused %s: %s", optionName(e.Option), repName(e.Type))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Error is an error a server reported for one request (an error field in a
// simple reply, or an error chunk). The connection stays usable.
type Error struct {
	Command string
	Off, N  int64
	Errno   uint32 // NBD error value (EIO 5, EINVAL 22, ...)
	Message string // the server's text, if any
	// Offset is where the error happened (NBD_REPLY_TYPE_ERROR_OFFSET), or -1.
	Offset int64
}

func (e *Error) Error() string {
	s := fmt.Sprintf("nbd %s %d+%d: server error %s", e.Command, e.Off, e.N, errnoName(e.Errno))
	if e.Offset >= 0 {
		s += fmt.Sprintf(" at offset %d", e.Offset)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap makes errors.Is(err, syscall.EIO) and the like work.
func (e *Error) Unwrap() error { return syscall.Errno(e.Errno) }

func errnoName(v uint32) string {
	switch v {
	case 1:
		return "EPERM"
	case 5:
		return "EIO"
	case 12:
		return "ENOMEM"
	case 22:
		return "EINVAL"
	case 28:
		return "ENOSPC"
	case 75:
		return "EOVERFLOW"
	case 95:
		return "ENOTSUP"
	case 108:
		return "ESHUTDOWN"
	}
	return fmt.Sprintf("errno %d", v)
}

func optionName(o uint32) string {
	switch o {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optListMetaContext:
		return "NBD_OPT_LIST_META_CONTEXT"
	case optSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	}
	return fmt.Sprintf("option %d", o)
}

func repName(t uint32) string {
	switch t {
	case repErrUnsup:
		return "NBD_REP_ERR_UNSUP (not supported)"
	case repErrPolicy:
		return "NBD_REP_ERR_POLICY (forbidden by the server's policy)"
	case repErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case repErrPlatform:
		return "NBD_REP_ERR_PLATFORM (not supported on the server's platform)"
	case repErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD (the server requires TLS: use nbds:// or give a TLS configuration)"
	case repErrUnknown:
		return "NBD_REP_ERR_UNKNOWN (no such export)"
	case repErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN (the server is shutting down)"
	case repErrBlockSizeReq:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case repErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	}
	return fmt.Sprintf("reply type %#x", t)
}
