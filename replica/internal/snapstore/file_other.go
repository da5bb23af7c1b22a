//go:build !linux

package snapstore

import "os"

func allocate(f *os.File, off, n int64) error { return errNoAllocate }
