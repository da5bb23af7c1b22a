// Package bufpool holds the data buffers of the write path: journal
// entries, applied writes, resync reads. Who holds the *[]byte owns the
// buffer until it calls Put.
package bufpool

import "github.com/repd/repd/internal/sizeclass"

// Buffers come in power-of-two size classes from 512 bytes (class 0, an
// NBD client's smallest write) to one frame's data (protocol.MaxData), so
// the write path does not allocate per write and a buffer is less than
// twice the data it holds: under protocol A the journal keeps a copy of
// every write a peer has not acknowledged, thousands of them, and with
// coarser classes (4 KiB, 64 KiB, 1 MiB) a journal of 8 KiB writes held
// eight times its bound.
const (
	minShift = 9
	maxShift = 20 // protocol.MaxData (TestClassesCoverMaxData)
	classes  = maxShift - minShift + 1
)

var pool = sizeclass.NewPool(minShift, classes)

// Cap is the memory a buffer of n bytes from Get takes: n rounded up to
// its class (n itself above the largest class, which is not pooled).
func Cap(n int) int { return pool.Cap(n) }

// Get returns a buffer of n bytes and the pooled buffer behind it (nil for
// sizes above the largest class), to hand back to Put.
func Get(n int) ([]byte, *[]byte) {
	if !pool.Pooled(n) {
		return make([]byte, n), nil
	}
	b := pool.Get(n)
	return *b, b
}

// Put returns a buffer to its pool; nil, and a buffer not of a class's
// size, are ignored.
func Put(b *[]byte) { pool.Put(b) }
