package snapstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/repd/repd/internal/durable"
)

// file is what the store needs from the operating system. Tests put faulty
// and crashable implementations behind it.
type file interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every completed WriteAt and Truncate durable (fdatasync).
	Sync() error
	// WriteSync writes p at off durably (O_DSYNC for this write only):
	// the other unsynced writes may stay unsynced.
	WriteSync(p []byte, off int64) error
	// Truncate sets the length to size; new bytes read as zero.
	Truncate(size int64) error
	// Allocate reserves disk space for [off, off+n) so that later writes
	// there cannot fail for lack of space. errNoAllocate if the file
	// system cannot.
	Allocate(off, n int64) error
	Close() error
}

var errNoAllocate = errors.New("space reservation not supported")

// writeThenSync is WriteSync without RWF_DSYNC: a write and an fdatasync
// of the whole file.
func writeThenSync(f *os.File, p []byte, off int64) error {
	if err := durable.WriteFull(f, p, off); err != nil {
		return err
	}
	return durable.Datasync(f)
}

// osFile is a store file on a regular file.
type osFile struct {
	f *os.File
}

// openOS opens (creating it if absent) the regular file at path read-write
// and takes an exclusive lock on it, so that two daemons never share a
// store. It reports whether the file is new.
func openOS(path string) (*osFile, bool, error) {
	created := false
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		created = err == nil
	}
	if err != nil {
		return nil, false, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, false, fmt.Errorf("%s is not a regular file (a snapshot store must be a file, e.g. beside the meta file)", path)
	}
	if err := durable.Lock(f); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("snapshot store %s is in use by another process: %w", path, err)
	}
	if created {
		if err := durable.SyncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("create %s: sync directory: %w", path, err)
		}
	}
	return &osFile{f: f}, created, nil
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *osFile) Sync() error                              { return durable.Datasync(o.f) }
func (o *osFile) Truncate(size int64) error                { return o.f.Truncate(size) }
func (o *osFile) WriteSync(p []byte, off int64) error      { return writeSync(o.f, p, off) }
func (o *osFile) Allocate(off, n int64) error              { return allocate(o.f, off, n) }
func (o *osFile) Close() error                             { return o.f.Close() }
