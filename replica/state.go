package replica

import (
	"errors"
	"fmt"

	"github.com/repd/repd/bitmap"
)

// Disk is a disk state (UpToDate, Inconsistent, ...), as stored in the meta
// file.
type Disk = bitmap.DiskState

// Disk states.
const (
	Diskless     = bitmap.DiskDiskless
	Inconsistent = bitmap.DiskInconsistent
	Outdated     = bitmap.DiskOutdated
	UpToDate     = bitmap.DiskUpToDate
	Failed       = bitmap.DiskFailed
)

// Sentinel errors, for the admin API to map to exit codes. Returned errors
// wrap one of them with a sentence giving the reason and the remedy.
var (
	// ErrRefused: the operation is not allowed in the current state.
	ErrRefused = errors.New("refused")
	// ErrNotPrimary: an I/O that needs the Primary role; wraps EPERM too.
	ErrNotPrimary = errors.New("not primary")
	// ErrUnknownPeer: no such peer in the configuration.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrClosed: the node is closed.
	ErrClosed = errors.New("node closed")
	// ErrSplitBrain: two nodes both changed the data since they last agreed.
	ErrSplitBrain = errors.New("split brain")
	// ErrUnrelated: a peer's data shares no history with ours.
	ErrUnrelated = errors.New("unrelated data")
)

func uuidString(u uint64) string {
	if u == 0 {
		return ""
	}
	return fmt.Sprintf("%016X", u)
}
