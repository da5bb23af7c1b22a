// Package bootid reads the identifier of this boot of the system. A write
// in the page cache survives a crash of the process that made it but not a
// crash or power loss of the system: comparing the boot ID recorded at an
// open with the one at the next open tells which of the two ended a run
// that did not close cleanly.
package bootid

import (
	"encoding/hex"
	"os"
	"strings"
)

// Path is where Linux publishes the boot ID (a random UUID per boot).
const Path = "/proc/sys/kernel/random/boot_id"

// ID is this boot of the system; zero if unknown (not Linux, or /proc not
// mounted): a caller then assumes the system may have restarted.
func ID() [16]byte {
	b, err := os.ReadFile(Path)
	if err != nil {
		return [16]byte{}
	}
	return Parse(string(b))
}

// Parse decodes a boot ID as Linux prints it
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx); zero if it is not one.
func Parse(s string) [16]byte {
	var id [16]byte
	h := strings.ReplaceAll(strings.TrimSpace(s), "-", "")
	if len(h) != hex.EncodedLen(len(id)) {
		return id
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return [16]byte{}
	}
	return id
}
