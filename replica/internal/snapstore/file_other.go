//go:build !linux

package snapstore

import "os"

func datasync(f *os.File) error { return f.Sync() }

func lockFile(f *os.File) error { return nil }

func allocate(f *os.File, off, n int64) error { return errNoAllocate }
