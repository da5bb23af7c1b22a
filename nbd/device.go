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

// Extent is a run of bytes that share the same status flags in a metadata
// context: for base:allocation StateHole and StateZero, for a
// qemu:dirty-bitmap:NAME context StateDirty.
type Extent struct {
	Len   int64
	Flags uint32
}

// Allocator is a Device that knows which of its ranges are holes or read
// as zeroes. It answers NBD_CMD_BLOCK_STATUS in the base:allocation
// context, and lets a READ skip ranges that read as zeroes (they go out as
// NBD_REPLY_TYPE_OFFSET_HOLE chunks). A Device that is not an Allocator
// reports everything as data, which is always correct.
type Allocator interface {
	// Allocation describes [off, off+n) as consecutive extents starting
	// at off. It may describe fewer than n bytes (at least one byte: the
	// client asks again for the rest) and should stop early rather than
	// walk a long list (the server sends at most Server.MaxExtents
	// extents per context, and n is at most Server.MaxStatusLength);
	// extents past off+n are cut. StateZero is a promise that ReadAt
	// would return zeroes there now: a Device that cannot read (a disk
	// that is not up to date) must return an error instead.
	Allocation(ctx context.Context, off, n int64) ([]Extent, error)
}

// MetaContexts is a Device that offers metadata contexts besides
// base:allocation: for a snapshot, qemu:dirty-bitmap:NAME reporting the
// blocks changed between snapshot NAME and this device. The server offers
// them to NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT and asks
// BlockStatus for the ones a client selected.
type MetaContexts interface {
	// MetaContexts names the contexts offered now, each NAMESPACE:LEAF
	// (namespace not empty and not "base"; UTF-8, no NUL, at most
	// MaxString bytes; others are ignored). It is called at each option
	// that needs the list, so it may change between connections.
	MetaContexts() []string
	// BlockStatus describes [off, off+n) in context name, as Allocation
	// does for base:allocation. A context that no longer exists (a
	// snapshot deleted since the client selected it) is an error, which
	// fails this request only.
	BlockStatus(ctx context.Context, name string, off, n int64) ([]Extent, error)
}

// AsyncWriter is a Device that can start a write and complete it later,
// from another goroutine: a replicated device completes a write when its
// peers acknowledge it, in the goroutine that receives the last ack. The
// server's reader then starts small writes itself, without a worker
// goroutine each, and the completing goroutine queues the reply: no
// goroutine waits for the round trip. Used for writes the Device does not
// call Quick, on connections without TLS (the completer must be able to
// write a reply without blocking).
type AsyncWriter interface {
	// StartWrite starts writing p at off (fua as for WriteAt). True: the
	// write was started, and done is called once with what WriteAt would
	// have returned, from any goroutine, possibly before StartWrite
	// returns; p must stay unchanged until then. done does not block; it
	// may return a function to call once the caller has called done for
	// every write it completes at that moment (their replies leave in one
	// system call). False: nothing was started, done is not called, and
	// the server calls WriteAt instead. StartWrite may write locally but
	// must not wait for anything remote; it may leave the rest until Kick.
	// With last, the caller has no further request at hand and would Kick
	// right after: a started write then also kicks itself (and the writes
	// started before it), as early as it can (a replicated device ships
	// before its local write, which then overlaps the round trip).
	StartWrite(ctx context.Context, p []byte, off int64, fua, last bool, done func(error) func()) bool
	// Kick follows one or more StartWrite calls before the caller waits
	// for anything: the writes started must then proceed without further
	// calls.
	Kick()
}
