package nbd

import (
	"sync"

	"github.com/repd/repd/internal/sizeclass"
)

// payloads holds the requests' payload buffers in power-of-two classes
// from 4 KiB (class 0) to 32 MiB (class 13); larger ones are not pooled.
// A buffer is owned by exactly one request from Get until Put, and a
// request's payload counts its Cap against MaxInFlightBytes.
var payloads = sizeclass.NewPool(12, 14)

// zeroes is read-only; it feeds WRITE_ZEROES on a Device that is not a
// Zeroer. Devices must not modify the slice passed to WriteAt.
var zeroes = sync.OnceValue(func() []byte { return make([]byte, 1<<20) })
