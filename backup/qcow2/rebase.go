package qcow2

import (
	"encoding/binary"
	"fmt"
	"os"
)

// Rebase points the image at path to another backing file (name, stored as
// given; same format as before) without touching its data: what the image
// leaves unallocated must read the same through the new backing file as
// through the old (the caller's promise, as with qemu-img rebase -u).
//
// It is safe against a crash at any point: the new name is written into
// unused space of cluster 0 and synced, then the 12 bytes that locate the
// name (offset and length, one sector) are rewritten and synced, then the
// old name's bytes are cleared. Until the second write lands the image
// names the old backing file, after it the new one.
func Rebase(path, name string) error {
	if name == "" || len(name) > maxBackingNameLen {
		return fmt.Errorf("qcow2 rebase %s: backing file name of %d bytes (want 1..%d)", path, len(name), maxBackingNameLen)
	}
	im, err := Open(path)
	if err != nil {
		return err
	}
	oldOff, oldLen, extEnd, cs := int64(im.h.backingOffset), int64(im.h.backingSize), im.extEnd, im.cs
	im.Close()
	if oldOff == 0 {
		return fmt.Errorf("qcow2 rebase %s: the image has no backing file", path)
	}
	// The first 8-aligned place after the extensions that does not overlap
	// the current name and fits in cluster 0.
	n := int64(len(name))
	at := (extEnd + 7) &^ 7
	if at+n > oldOff && at < oldOff+oldLen {
		at = (oldOff + oldLen + 7) &^ 7
	}
	if at+n > cs {
		return fmt.Errorf("qcow2 rebase %s: no room in the header cluster for a %d-byte name", path, n)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("qcow2 rebase: %w", err)
	}
	defer f.Close()
	step := func(what string, b []byte, off int64) error {
		if _, err := f.WriteAt(b, off); err != nil {
			return fmt.Errorf("qcow2 rebase %s: %s: %w", path, what, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("qcow2 rebase %s: %s: fsync: %w", path, what, err)
		}
		return nil
	}
	if err := step("write the new name", []byte(name), at); err != nil {
		return err
	}
	loc := binary.BigEndian.AppendUint64(nil, uint64(at))
	loc = binary.BigEndian.AppendUint32(loc, uint32(n))
	if err := step("point the header at it", loc, 8); err != nil {
		return err
	}
	// Clear what is left of the old name (the space must hold nothing else).
	lo, hi := oldOff, oldOff+oldLen
	if at < hi && at+n > lo {
		return nil // cannot happen: the slots do not overlap
	}
	return step("clear the old name", make([]byte, hi-lo), lo)
}
