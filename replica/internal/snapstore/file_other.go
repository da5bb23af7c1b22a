//go:build !linux

package snapstore

import "os"

func allocate(f *os.File, off, n int64) error { return errNoAllocate }

// writeSync is a write and an fdatasync here.
func writeSync(f *os.File, p []byte, off int64) error { return writeThenSync(f, p, off) }
