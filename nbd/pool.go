package nbd

import (
	"sync"

	"github.com/repd/repd/internal/sizeclass"
)

// Payload buffers come from one sync.Pool per power-of-two size class, from
// 4 KiB (class 0) to 32 MiB (class 13). A buffer is owned by exactly one
// request from getBuf until putBuf; larger buffers are not pooled.
const (
	minClassShift = 12
	numClasses    = 14
)

var bufPools [numClasses]sync.Pool

func sizeClass(n int) int { return sizeclass.Of(n, minClassShift) }

// bufCap is the memory a buffer of length n from getBuf takes: n rounded
// up to its class, n itself above the largest. A request's payload counts
// it against MaxInFlightBytes.
func bufCap(n int) int { return sizeclass.Cap(n, minClassShift, numClasses) }

// getBuf returns a buffer of length n. Its contents are undefined.
func getBuf(n int) *[]byte {
	c := sizeClass(n)
	if c >= numClasses {
		b := make([]byte, n)
		return &b
	}
	if v := bufPools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// putBuf gives a buffer from getBuf back. The caller must not use it after.
func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	c := sizeClass(cap(*b))
	if c >= numClasses || cap(*b) != 1<<(c+minClassShift) {
		return
	}
	bufPools[c].Put(b)
}

// zeroes is read-only; it feeds WRITE_ZEROES on a Device that is not a
// Zeroer. Devices must not modify the slice passed to WriteAt.
var zeroes = sync.OnceValue(func() []byte { return make([]byte, 1<<20) })
