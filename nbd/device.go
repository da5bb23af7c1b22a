package nbd

import "context"

// Device is what an export serves. Offsets and lengths are checked against
// Size by the server before a call; implementations may assume them in range.
//
// Errors are mapped to NBD error values by errno (errors.Is with syscall
// values): ENOSPC/EDQUOT/EFBIG → NBD_ENOSPC, EPERM/EROFS (or fs.ErrPermission)
// → NBD_EPERM, EINVAL → NBD_EINVAL, ESHUTDOWN → NBD_ESHUTDOWN, anything else
// → NBD_EIO.
type Device interface {
	// Size is the export size in bytes. It does not change while served.
	Size() int64
	// ReadAt fills p from offset off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. With fua the data is durable when it returns.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every write completed before the call durable.
	Flush(ctx context.Context) error
}

// Trimmer is a Device that can discard a range (NBD_CMD_TRIM).
type Trimmer interface {
	Trim(ctx context.Context, off, n int64, fua bool) error
}

// Zeroer is a Device that can zero a range efficiently (NBD_CMD_WRITE_ZEROES).
// With noHole the range must stay allocated.
type Zeroer interface {
	WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error
}

// Quick is a Device that can tell, before a call, that a read (write=false)
// or write of n bytes will complete without waiting for anything but the
// local disk: no network round trip, no queue. The server may then run it
// on the goroutine that reads requests instead of handing it to a worker.
type Quick interface {
	Quick(write bool, n int64) bool
}
