//go:build race

package harness

// Race reports whether this process was built with the race detector;
// Binaries then builds repd and repctl with it too.
const Race = true
