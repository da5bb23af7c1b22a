package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/repd/repd/internal/durable"
	"github.com/repd/repd/internal/zero"
	"golang.org/x/sys/unix"
)

// Store is a backing store: a local file or block device holding the data.
// Offsets and lengths are in range; callers check.
type Store interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, n int64, fua bool) error
	WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error
	Close() error
}

// FileStore is a Store over a regular file or a block device, using
// pread/pwrite, fdatasync, and fallocate where the filesystem supports it.
type FileStore struct {
	f        *os.File
	scan     *os.File // the same file for the node's sweeps (ScanAt)
	path     string
	size     int64
	noPunch  atomic.Bool // fallocate punch-hole unsupported: write zeroes
	noZero   atomic.Bool // fallocate zero-range unsupported: write zeroes
	blockDev bool
	created  bool // OpenFileStore created the file: it holds nothing
}

// Created reports whether OpenFileStore created the file (it did not
// exist): it holds no data.
func (s *FileStore) Created() bool { return s.created }

// ErrInUse is returned by OpenFileStore when another process holds the
// backing store.
var ErrInUse = errors.New("backing store in use")

// ErrTooSmall is returned by OpenFileStore when the backing store is smaller
// than the requested size.
var ErrTooSmall = errors.New("backing store smaller than the resource size")

// OpenFileStore opens the backing store at path for a device of size bytes.
// A missing file is created and sized; a regular file smaller than size is
// refused (never silently grown: that would hide a misconfiguration), as is a
// block device smaller than size. A larger store is used up to size.
func OpenFileStore(path string, size int64) (*FileStore, error) {
	if size <= 0 {
		return nil, fmt.Errorf("open %s: size %d must be positive", path, size)
	}
	created := false
	flag := os.O_RDWR
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeDevice != 0 {
		// A block device opened O_EXCL is refused while another holder
		// (a mounted filesystem, another repd, LVM) has it.
		flag |= os.O_EXCL
	}
	f, err := os.OpenFile(path, flag, 0)
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		created = true
	}
	if errors.Is(err, syscall.EBUSY) {
		return nil, fmt.Errorf("open backing store %s: the block device is in use (mounted, or held by another repd or device mapper): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open backing store: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode().IsRegular() {
		// Two daemons must never write one image: an exclusive lock,
		// held until Close (the kernel drops it if the process dies).
		if err := durable.Lock(f); err != nil {
			f.Close()
			if errors.Is(err, durable.ErrLocked) {
				return nil, fmt.Errorf("backing store %s is in use by another process (another repd, of this resource or another): %w", path, ErrInUse)
			}
			return nil, fmt.Errorf("lock backing store %s: %w", path, err)
		}
	}
	s := &FileStore{f: f, path: path, size: size, created: created}
	var have int64
	switch {
	case st.Mode().IsRegular():
		if created {
			if err := f.Truncate(size); err != nil {
				f.Close()
				os.Remove(path)
				return nil, fmt.Errorf("size %s to %d bytes: %w", path, size, err)
			}
		}
		have = st.Size()
		if created {
			have = size
		}
	case st.Mode()&os.ModeDevice != 0:
		s.blockDev = true
		have, err = blockDevSize(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("size of block device %s: %w", path, err)
		}
	default:
		f.Close()
		return nil, fmt.Errorf("backing store %s is neither a regular file nor a block device", path)
	}
	if have < size {
		f.Close()
		return nil, fmt.Errorf("%w: %s has %d bytes, resource needs %d", ErrTooSmall, path, have, size)
	}
	if s.scan, err = openScan(path, st); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// openScan opens the store at path once more, read-only, for ScanAt: the
// same file as st (checked: a file put in its place meanwhile is an error),
// with the kernel's readahead off (POSIX_FADV_RANDOM, which applies to this
// open file only).
func openScan(path string, st os.FileInfo) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing store %s for sweeps: %w", path, err)
	}
	again, err := f.Stat()
	if err == nil && !os.SameFile(st, again) {
		err = errors.New("the path names another file than the one opened for writing (it was replaced meanwhile)")
	}
	if err == nil {
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open backing store %s for sweeps: %w", path, err)
	}
	return f, nil
}

func blockDevSize(f *os.File) (int64, error) {
	var n uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n)))
	if errno != 0 {
		return 0, errno
	}
	return int64(n), nil
}

// Size returns the device size.
func (s *FileStore) Size() int64 { return s.size }

// Path returns the backing store's path.
func (s *FileStore) Path() string { return s.path }

// ReadAt reads len(p) bytes at off.
func (s *FileStore) ReadAt(_ context.Context, p []byte, off int64) error {
	return readFull(s.f, p, off)
}

// readFull reads len(p) bytes of f at off: all of them, or an error.
func readFull(f *os.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("read %d+%d: %w", off, len(p), err)
	}
	return nil
}

// ScanAt reads len(p) bytes at off, as ReadAt does, for the node's own
// reads through the device (online verify, resync and checksum resync,
// what snapshots preserve or read of the live device), through a
// descriptor without readahead. Readahead fills the page cache in large
// folios where the filesystem keeps files in them (this VM's ext4 on
// Linux 6.18), and every later 4 KiB write into such a folio costs the
// kernel several times one into a 4 KiB page: after a `repctl verify`
// through ReadAt, protocol C at 4k QD32 ran at 0.41-0.50x of itself on the
// bench's VM, at 0.82-0.98x with ScanAt (session 23). A sweep names its
// next range (Prefetch), so that it is no slower without readahead.
// Clients' reads (ReadAt) keep readahead.
func (s *FileStore) ScanAt(_ context.Context, p []byte, off int64) error {
	return readFull(s.scan, p, off)
}

// Prefetch asks the kernel to read [off, off+n) into the page cache in
// the background (POSIX_FADV_WILLNEED, which fills it in 4 KiB pages as
// ScanAt's reads do): a sweep names the range it reads next, so that,
// without readahead, its reads do not each wait for the disk in turn. The
// range is clipped to the device; the kernel's answer is advice, ignored.
func (s *FileStore) Prefetch(off, n int64) {
	if off < 0 || off >= s.size || n <= 0 {
		return
	}
	unix.Fadvise(int(s.scan.Fd()), off, min(n, s.size-off), unix.FADV_WILLNEED)
}

// DropCache asks the kernel to drop the file's clean pages from the page
// cache (POSIX_FADV_DONTNEED; dirty pages stay, so nothing written is
// lost). A resync's large writes into an uncached file leave it cached in
// large folios, and a 4 KiB write into one costs this kernel several
// times what it costs into a 4 KiB page (README, Configuration): the sync
// target drops them once the resync's data is durable. The kernel's answer
// is advice, ignored.
func (s *FileStore) DropCache() {
	unix.Fadvise(int(s.f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// cacheStore is what a Store may offer the node's own sweeps and resyncs
// besides its Store methods, to keep the page cache in 4 KiB pages: a
// FileStore does (ScanAt, Prefetch, DropCache); a Store without it is
// read with ReadAt and given no advice.
type cacheStore interface {
	ScanAt(ctx context.Context, p []byte, off int64) error
	Prefetch(off, n int64)
	DropCache()
}

var _ cacheStore = (*FileStore)(nil)

// scanAt reads for a sweep: through st's ScanAt where it has one, else its
// ReadAt.
func scanAt(ctx context.Context, st Store, p []byte, off int64) error {
	if cs, ok := st.(cacheStore); ok {
		return cs.ScanAt(ctx, p, off)
	}
	return st.ReadAt(ctx, p, off)
}

// prefetch is Prefetch where st has it.
func prefetch(st Store, off, n int64) {
	if cs, ok := st.(cacheStore); ok {
		cs.Prefetch(off, n)
	}
}

// dropCache is DropCache where st has it.
func dropCache(st Store) {
	if cs, ok := st.(cacheStore); ok {
		cs.DropCache()
	}
}

// WriteAt writes p at off; with fua the data is durable on return.
func (s *FileStore) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	if _, err := s.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %d+%d: %w", off, len(p), err)
	}
	if fua {
		return s.sync()
	}
	return nil
}

// Flush makes every completed write durable (fdatasync).
func (s *FileStore) Flush(context.Context) error { return s.sync() }

func (s *FileStore) sync() error {
	if err := durable.Datasync(s.f); err != nil {
		return fmt.Errorf("fdatasync %s: %w", s.path, err)
	}
	return nil
}

// Trim discards a range: punch a hole where supported, else write zeroes
// (reads of a trimmed range return zeroes either way).
func (s *FileStore) Trim(ctx context.Context, off, n int64, fua bool) error {
	if !s.blockDev && !s.noPunch.Load() {
		err := fallocate(s.f, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			if fua {
				return s.sync()
			}
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("trim %d+%d: %w", off, n, err)
		}
		s.noPunch.Store(true)
	}
	return s.writeZeroes(ctx, off, n, fua)
}

// WriteZeroes zeroes a range. Without noHole it may punch a hole; with it the
// range is zeroed in place (fallocate zero-range) or zero buffers are written.
func (s *FileStore) WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error {
	if !noHole && !s.blockDev && !s.noPunch.Load() {
		return s.Trim(ctx, off, n, fua)
	}
	if !s.blockDev && !s.noZero.Load() {
		err := fallocate(s.f, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			if fua {
				return s.sync()
			}
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("write zeroes %d+%d: %w", off, n, err)
		}
		s.noZero.Store(true)
	}
	return s.writeZeroes(ctx, off, n, fua)
}

func (s *FileStore) writeZeroes(ctx context.Context, off, n int64, fua bool) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := min(n, int64(zero.Max))
		if _, err := s.f.WriteAt(zero.Bytes(int(chunk)), off); err != nil {
			return fmt.Errorf("write zeroes %d+%d: %w", off, chunk, err)
		}
		off += chunk
		n -= chunk
	}
	if fua {
		return s.sync()
	}
	return nil
}

// Close closes the store without syncing; call Flush first for durability.
func (s *FileStore) Close() error { return errors.Join(s.f.Close(), s.scan.Close()) }

func fallocate(f *os.File, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), mode, off, n)
		if err != unix.EINTR {
			return err
		}
	}
}

func unsupported(err error) bool {
	return errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EINVAL)
}

// Allocation reports the data and holes of [off, off+n) with lseek
// SEEK_DATA/SEEK_HOLE (Allocator). A block device, or a file system that
// cannot tell, is all data.
func (s *FileStore) Allocation(off, n int64, fn func(off, n int64, data bool) bool) error {
	end := off + n
	if off < 0 || n < 0 || end > s.size {
		return fmt.Errorf("allocation %d+%d: beyond %d bytes (%w)", off, n, s.size, syscall.EINVAL)
	}
	fd := int(s.f.Fd())
	for pos := off; pos < end; {
		if s.blockDev {
			fn(pos, end-pos, true)
			return nil
		}
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end // no data after pos: a hole to the end
		} else if err != nil {
			if unsupported(err) {
				fn(pos, end-pos, true)
				return nil
			}
			return fmt.Errorf("seek data in %s at %d: %w", s.path, pos, err)
		}
		if data > pos {
			if !fn(pos, min(data, end)-pos, false) {
				return nil
			}
			pos = min(data, end)
			if pos >= end {
				return nil
			}
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in %s at %d: %w", s.path, pos, err)
		}
		hole = min(max(hole, pos+1), end)
		if !fn(pos, hole-pos, true) {
			return nil
		}
		pos = hole
	}
	return nil
}
