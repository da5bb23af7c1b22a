package nbd

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lseek(2) whence values that syscall does not name (Linux, and the BSDs
// that have them, agree).
const (
	seekData = 3 // SEEK_DATA: the next offset with data, ENXIO if none
	seekHole = 4 // SEEK_HOLE: the next hole (EOF counts as one)
)

// FileAllocation describes [off, off+n) of the file f for an Allocator
// over it, with lseek(2)'s SEEK_DATA and SEEK_HOLE: holes are
// StateHole|StateZero (a hole in a regular file reads as zeroes), the rest
// data (flags 0). It stops after limit extents (at least one), so it may
// describe fewer than n bytes. A file or file system that cannot tell
// (EINVAL: a block device, an old file system) is all data, which is
// always true. Bytes past the end of the file read as zeroes here. It
// moves f's offset: use f with ReadAt and WriteAt only.
func FileAllocation(f *os.File, off, n int64, limit int) ([]Extent, error) {
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("allocation of %d+%d: empty or negative range", off, n)
	}
	limit = max(limit, 1)
	end := off + n
	var out []Extent
	add := func(n int64, flags uint32) {
		if k := len(out); k > 0 && out[k-1].Flags == flags {
			out[k-1].Len += n
			return
		}
		out = append(out, Extent{Len: n, Flags: flags})
	}
	for off < end && len(out) < limit {
		data, err := f.Seek(off, seekData)
		switch {
		case errors.Is(err, syscall.ENXIO):
			// No data from off to the end of the file.
			add(end-off, StateHole|StateZero)
			return out, nil
		case errors.Is(err, syscall.EINVAL) && len(out) == 0:
			return []Extent{{Len: n}}, nil
		case err != nil:
			if len(out) > 0 {
				return out, nil
			}
			return nil, fmt.Errorf("allocation of %d+%d: %w", off, n, err)
		}
		if data > off {
			add(min(data, end)-off, StateHole|StateZero)
			if data >= end || len(out) == limit {
				break
			}
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil || hole <= data {
			// Cannot tell where the data ends: call the rest data.
			add(end-data, 0)
			return out, nil
		}
		add(min(hole, end)-data, 0)
		off = hole
	}
	return out, nil
}
