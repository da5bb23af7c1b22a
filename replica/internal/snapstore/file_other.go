//go:build !linux

package snapstore

import (
	"os"

	"github.com/repd/repd/internal/durable"
)

func allocate(f *os.File, off, n int64) error { return errNoAllocate }

// systemBootID is unknown here: lazy snapshots sync their copies like the
// others.
func systemBootID() [16]byte { return [16]byte{} }

// writeSync is a write and an fdatasync here.
func writeSync(f *os.File, p []byte, off int64) error {
	if err := durable.WriteFull(f, p, off); err != nil {
		return err
	}
	return durable.Datasync(f)
}
