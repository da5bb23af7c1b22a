package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/repd/repd/backup/qcow2"
	"github.com/repd/repd/internal/durable"
	"github.com/repd/repd/internal/zero"
)

// RestoreOptions configure Restore.
type RestoreOptions struct {
	// Overwrite allows writing over an existing file or a block device
	// (whose data is lost). Without it only a new file is written.
	Overwrite bool
}

// restoreWindow is how much Restore reads and writes at once.
const restoreWindow = 4 << 20

// Restore writes the disk as it was at point (see Point for the names
// accepted) to target: a new regular file (sparse: zeroes are holes), an
// existing file or a block device (with Overwrite). It returns the bytes of
// data written. The target is fsynced.
func (r *Repo) Restore(ctx context.Context, point, target string, o RestoreOptions) (int64, error) {
	p, err := r.Point(point)
	if err != nil {
		return 0, err
	}
	chain, err := qcow2.OpenChain(r.path(p.File))
	if err != nil {
		return 0, fmt.Errorf("restore %s: %w", p.File, err)
	}
	defer chain.Close()
	size := chain.Size()

	st, err := os.Stat(target)
	exists := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("restore: %w", err)
	}
	blockDev := exists && st.Mode()&os.ModeDevice != 0
	switch {
	case exists && !o.Overwrite && blockDev:
		return 0, fmt.Errorf("restore: %s is a block device: its data would be overwritten; say so (--force)", target)
	case exists && !o.Overwrite:
		return 0, fmt.Errorf("restore: %s exists; choose a new file or allow overwriting it (--force)", target)
	case exists && !blockDev && !st.Mode().IsRegular():
		return 0, fmt.Errorf("restore: %s is neither a regular file nor a block device", target)
	}
	flags := os.O_WRONLY | os.O_CREATE
	if !exists {
		flags |= os.O_EXCL
	}
	f, err := os.OpenFile(target, flags, 0o600)
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	sparse := !blockDev
	if blockDev {
		devSize, err := f.Seek(0, 2)
		if err != nil {
			return 0, fmt.Errorf("restore: size of %s: %w", target, err)
		}
		if devSize < size {
			return 0, fmt.Errorf("restore: %s has %d bytes, the backup %d", target, devSize, size)
		}
	} else {
		// A fresh start: what is not written reads as zeroes.
		if err := f.Truncate(0); err != nil {
			return 0, fmt.Errorf("restore: %w", err)
		}
		if err := f.Truncate(size); err != nil {
			return 0, fmt.Errorf("restore: %w", err)
		}
	}
	r.log.Info("restore", "point", p.File, "target", target, "bytes", size, "block-device", blockDev)
	buf := make([]byte, restoreWindow)
	const blk = 64 << 10
	written := int64(0)
	for off := int64(0); off < size; off += restoreWindow {
		if err := ctx.Err(); err != nil {
			return written, err
		}
		n := min(int64(restoreWindow), size-off)
		mapped, err := chain.Mapped(off, n)
		if err != nil {
			return written, err
		}
		if !mapped {
			if !sparse {
				if err := zeroRange(f, off, n); err != nil {
					return written, fmt.Errorf("restore: zero %s at %d: %w", target, off, err)
				}
			}
			r.progress(Progress{Phase: "restore", File: target, Done: off + n, Total: size})
			continue
		}
		w := buf[:n]
		if _, err := chain.ReadAt(w, off); err != nil {
			return written, fmt.Errorf("restore: read %s at %d: %w", p.File, off, err)
		}
		for b := int64(0); b < n; b += blk {
			part := w[b:min(b+blk, n)]
			if sparse && zero.Is(part) {
				continue
			}
			if _, err := f.WriteAt(part, off+b); err != nil {
				return written, fmt.Errorf("restore: write %s at %d: %w", target, off+b, err)
			}
			written += int64(len(part))
		}
		r.progress(Progress{Phase: "restore", File: target, Done: off + n, Total: size})
	}
	if err := f.Sync(); err != nil {
		return written, fmt.Errorf("restore: fsync %s: %w", target, err)
	}
	// The writes above, in large pieces into an uncached file, leave it
	// cached in large folios, and each 4 KiB write of the node that serves
	// it would cost several times what it costs into a 4 KiB page until
	// the cache turns over (README, Configuration). Durable now, its pages
	// are clean: drop them (advice; the kernel may ignore it).
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	if err := f.Close(); err != nil {
		return written, fmt.Errorf("restore: %w", err)
	}
	if !exists {
		if err := durable.SyncDir(filepath.Dir(target)); err != nil {
			return written, fmt.Errorf("restore: %w", err)
		}
	}
	return written, nil
}

// zeroRange makes [off, off+n) of f read as zeroes: FALLOC_FL_ZERO_RANGE
// where the device supports it, else writes of zeroes.
func zeroRange(f *os.File, off, n int64) error {
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
		return nil
	}
	z := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(z)))
		if _, err := f.WriteAt(z[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}
