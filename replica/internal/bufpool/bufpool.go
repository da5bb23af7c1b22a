// Package bufpool holds the data buffers of the write path: journal
// entries, applied writes, resync reads. Who holds the *[]byte owns the
// buffer until it calls Put.
package bufpool

import (
	"sync"

	"github.com/repd/repd/protocol"
)

// Buffers by size class (4 KiB, 64 KiB, one frame's data), so the write
// path does not allocate per write.
var bufPools = [...]struct {
	size int
	pool sync.Pool
}{{size: 4 << 10}, {size: 64 << 10}, {size: protocol.MaxData}}

// Get returns a buffer of n bytes and the pooled buffer behind it (nil for
// sizes above the largest class), to hand back to Put.
func Get(n int) ([]byte, *[]byte) {
	for i := range bufPools {
		c := &bufPools[i]
		if n <= c.size {
			if b, ok := c.pool.Get().(*[]byte); ok {
				return (*b)[:n], b
			}
			b := make([]byte, c.size)
			return b[:n], &b
		}
	}
	b := make([]byte, n)
	return b, nil
}

// Put returns a buffer to its pool; nil is ignored.
func Put(b *[]byte) {
	if b == nil {
		return
	}
	for i := range bufPools {
		c := &bufPools[i]
		if cap(*b) == c.size {
			c.pool.Put(b)
			return
		}
	}
}
