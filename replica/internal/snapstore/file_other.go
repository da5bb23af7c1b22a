//go:build !linux

package snapstore

import "os"

func allocate(f *os.File, off, n int64) error { return errNoAllocate }

// systemBootID is unknown here: lazy snapshots sync their copies like the
// others.
func systemBootID() [16]byte { return [16]byte{} }

// writeSync is a write and an fdatasync here.
func writeSync(f *os.File, p []byte, off int64) error { return writeThenSync(f, p, off) }
