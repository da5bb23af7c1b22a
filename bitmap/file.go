package bitmap

import (
	"fmt"
	"io"
	"os"

	"github.com/repd/repd/internal/durable"
)

// File is what the meta File needs from the operating system. Tests put
// faulty and crashable implementations behind it.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every completed WriteAt and Truncate durable (fdatasync).
	Sync() error
	// Truncate sets the length to size; new bytes read as zero.
	Truncate(size int64) error
	Close() error
}

// osFile is a meta file on a regular file or a block device.
type osFile struct {
	f       *os.File
	regular bool
}

// openOS opens (or with create, creates) path read-write and takes an
// exclusive lock on it, so that two daemons never share a meta file.
func openOS(path string, create bool) (*osFile, error) {
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := durable.Lock(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("meta file %s is in use by another process: %w", path, err)
	}
	return &osFile{f: f, regular: st.Mode().IsRegular()}, nil
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *osFile) Sync() error                              { return durable.Datasync(o.f) }
func (o *osFile) Close() error                             { return o.f.Close() }

// Truncate sets a regular file's length. A block device cannot change size:
// there it checks the device is large enough and zeroes [0, size) instead.
func (o *osFile) Truncate(size int64) error {
	if o.regular {
		return o.f.Truncate(size)
	}
	if size == 0 {
		return nil
	}
	end, err := o.f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if end < size {
		return fmt.Errorf("device %s has %d bytes, the meta data needs %d", o.f.Name(), end, size)
	}
	zero := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zero)) {
		n := min(int64(len(zero)), size-off)
		if _, err := o.f.WriteAt(zero[:n], off); err != nil {
			return err
		}
	}
	return nil
}
