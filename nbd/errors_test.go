package nbd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

func TestErrorCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{syscall.ENOSPC, ENOSPC},
		{syscall.EDQUOT, ENOSPC},
		{syscall.EFBIG, ENOSPC},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, ENOSPC},
		{syscall.EPERM, EPERM},
		{syscall.EROFS, EPERM},
		{syscall.EACCES, EPERM}, // is fs.ErrPermission
		{fs.ErrPermission, EPERM},
		{fmt.Errorf("wrapped: %w", fs.ErrPermission), EPERM},
		{syscall.EINVAL, EINVAL},
		{syscall.ESHUTDOWN, ESHUTDOWN},
		{syscall.ENOMEM, ENOMEM},
		{syscall.EIO, EIO},
		{syscall.ENOTSUP, EIO},
		{context.Canceled, EIO},
		{errors.New("other"), EIO},
		{ErrOutOfRange, EINVAL},
		{ErrNoSpace, ENOSPC},
		{ErrReadOnly, EPERM},
		{ErrUnknownCommand, EINVAL},
		{ErrBadFlags, EINVAL},
		{ErrTooLarge, EINVAL},
		{ErrShutdown, ESHUTDOWN},
		{ErrNotFast, ENOTSUP},
	} {
		if got := errorCode(tc.err); got != tc.want {
			t.Errorf("errorCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestSizeClass(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 4096, 4097, 8192, 1 << 20, 1<<20 + 1, 32 << 20, 32<<20 + 1} {
		b := payloads.Get(n)
		if len(*b) != n || cap(*b) < n {
			t.Fatalf("payloads.Get(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		payloads.Put(b)
	}
}
