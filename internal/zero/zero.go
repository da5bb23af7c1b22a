// Package zero tells whether a buffer holds nothing but zero bytes: a
// block that reads as zeroes travels as a zeroes range (resync), stays a
// hole (backup, restore) or is a block never written (the chaos checker).
package zero

import "bytes"

// window is compared against, a piece at a time (bytes.Equal is
// vectorised), and written from (Bytes). It lives in the binary's
// zero-filled data, so it costs no heap and, being only read, no memory
// of its own.
var window [Max]byte

// Max is the most zero bytes Bytes gives at once: a replication frame's
// data (protocol.MaxData).
const Max = 1 << 20

// Bytes returns min(n, Max) zero bytes, to be read only (what writes a
// range of zeroes writes from it); writing into them would break Is and
// every other reader.
func Bytes(n int) []byte { return window[:min(n, Max)] }

// Is reports whether b holds nothing but zeroes (true for an empty b).
func Is(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(window))
		if !bytes.Equal(b[:n], window[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
