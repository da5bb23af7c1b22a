package replica

import (
	"errors"

	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/replica/internal/decide"
)

// Disk states, in DRBD's words, as the meta file stores them.
const (
	diskless         = bitmap.DiskDiskless
	diskInconsistent = bitmap.DiskInconsistent
	diskOutdated     = bitmap.DiskOutdated
	diskUpToDate     = bitmap.DiskUpToDate
	diskFailed       = bitmap.DiskFailed
)

// Sentinel errors, for the admin API to map to exit codes. Returned errors
// wrap one of them with a sentence giving the reason and the remedy.
var (
	// ErrRefused: the operation is not allowed in the current state.
	ErrRefused = decide.ErrRefused
	// ErrNotPrimary: an I/O that needs the Primary role; wraps EPERM too.
	ErrNotPrimary = errors.New("not primary")
	// ErrUnknownPeer: no such peer in the configuration.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrClosed: the node is closed.
	ErrClosed = errors.New("node closed")
	// ErrSplitBrain: two nodes both changed the data since they last agreed.
	ErrSplitBrain = decide.ErrSplitBrain
	// ErrUnrelated: a peer's data shares no history with ours.
	ErrUnrelated = decide.ErrUnrelated
)
