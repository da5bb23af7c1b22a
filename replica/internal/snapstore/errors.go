package snapstore

import (
	"errors"
	"fmt"
)

// Sentinel errors, for errors.Is.
var (
	// ErrNotStore: the file holds data but no snapshot store header.
	ErrNotStore = errors.New("not a repd snapshot store")
	// ErrCorrupt: the file has store headers but none is valid, or it is
	// shorter than its own layout.
	ErrCorrupt = errors.New("snapshot store is corrupt")
	// ErrMismatch: the store was made for another device or geometry. See
	// MismatchError.
	ErrMismatch = errors.New("snapshot store does not match")
	// ErrBadName: a snapshot name that cannot be an NBD export suffix.
	ErrBadName = errors.New("invalid snapshot name")
	// ErrExists: Create with the name of an existing snapshot.
	ErrExists = errors.New("snapshot already exists")
	// ErrNotFound: no snapshot has that name.
	ErrNotFound = errors.New("no such snapshot")
	// ErrTooMany: the store holds MaxSnapshots snapshots already.
	ErrTooMany = errors.New("too many snapshots")
	// ErrLiveUnsynced: CreateLazyUnsynced cannot take the snapshot
	// without the live device synced first (see there).
	ErrLiveUnsynced = errors.New("the live device must be synced before this snapshot")
	// ErrInvalid: the snapshot was invalidated and cannot be read. See
	// InvalidError for why.
	ErrInvalid = errors.New("snapshot is invalid")
	// ErrFailed: the store file had an I/O error; it refuses new snapshots
	// until it is reopened.
	ErrFailed = errors.New("snapshot store failed")
	// ErrRange: an offset or length outside the device.
	ErrRange = errors.New("outside the device")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("snapshot store is closed")
)

// MismatchError says which field of a store file differs from what the
// caller configured. It matches ErrMismatch with errors.Is.
type MismatchError struct {
	Path  string
	Field string // "device size", "block size", "chunk size", "format version"
	Have  string // what the file says
	Want  string // what the caller asked for
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("snapshot store %s is for %s %s, not %s; remove the file to start an empty store (destroys its snapshots)",
		e.Path, e.Field, e.Have, e.Want)
}

func (e *MismatchError) Unwrap() error { return ErrMismatch }

// InvalidError is returned when reading or diffing an invalidated snapshot.
// It matches ErrInvalid with errors.Is.
type InvalidError struct {
	Name   string
	Reason string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("snapshot %q is invalid: %s; delete it", e.Name, e.Reason)
}

func (e *InvalidError) Unwrap() error { return ErrInvalid }

// ValidName checks a snapshot name: 1 to 64 ASCII letters, digits, '-', '_'
// and '.' (it becomes part of an NBD export name, RESOURCE@NAME).
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty (use letters, digits, '-', '_', '.')", ErrBadName)
	}
	if len(name) > maxName {
		return fmt.Errorf("%w: %q is %d bytes long, at most %d are allowed", ErrBadName, name, len(name), maxName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' {
			continue
		}
		what := fmt.Sprintf("byte 0x%02x", c)
		if c > ' ' && c < 0x7f {
			what = fmt.Sprintf("%q", rune(c))
		}
		return fmt.Errorf("%w: %q has %s at offset %d; use only letters, digits, '-', '_', '.'", ErrBadName, name, what, i)
	}
	return nil
}
