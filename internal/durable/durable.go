// Package durable holds the few file primitives every on-disk format of
// repd (the meta file, the snapshot store, the backing store, backup
// directories) builds its crash safety on: data sync, an exclusive lock
// between processes, a durable directory entry, and reads and writes that
// are whole or an error.
package durable

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrLocked is returned by Lock when another open file description (in
// this process or another) holds the lock.
var ErrLocked = errors.New("its lock is held")

// Datasync makes f's written data durable: fdatasync(2), retried on EINTR
// (fsync where fdatasync does not exist).
func Datasync(f *os.File) error { return datasync(f) }

// Lock takes an exclusive, non-blocking advisory lock (flock(2)) on f,
// held until f is closed; the kernel drops it when the process dies. A
// lock held elsewhere is ErrLocked.
func Lock(f *os.File) error { return lock(f) }

// SyncDir makes the entries of dir (files created, renamed or removed in
// it) durable. A file system that cannot sync a directory (EINVAL) is not
// an error: there is nothing more to do there.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// ReadFull reads len(p) bytes at off; a short read is io.ErrUnexpectedEOF.
func ReadFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// WriteFull writes p at off; a short write is io.ErrShortWrite.
func WriteFull(w io.WriterAt, p []byte, off int64) error {
	n, err := w.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	return err
}

// ReplaceFile replaces the file at path with data, atomically and
// durably: data goes to a temporary file beside it (".NAME.tmp…", which
// globs like *.prom or *.json skip) with mode perm, is synced, renamed
// over path, and the directory synced. A reader sees the old content or
// the new, never a part; after a crash the file holds one of the two.
func ReplaceFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // nothing there once renamed
	err = tmp.Chmod(perm)
	if err == nil {
		err = WriteFull(tmp, data, 0)
	}
	if err == nil {
		err = Datasync(tmp)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return SyncDir(dir)
}
