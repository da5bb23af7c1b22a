//go:build !linux

package bitmap

import "os"

func datasync(f *os.File) error { return f.Sync() }

func lockFile(f *os.File) error { return nil }
