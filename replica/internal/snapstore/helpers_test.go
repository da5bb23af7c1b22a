package snapstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

var errInjected = errors.New("injected I/O error")

// crashFile is an in-memory store file that keeps only what was synced when
// it crashes. Reads see every write. It can fail its mutating operations
// (WriteAt, Sync, Truncate, Allocate) from the failAt-th on, counting from
// 0: all of them (the disk went away) or just that one (a transient error).
// A failing operation changes nothing.
type crashFile struct {
	mu       sync.Mutex
	cur      []byte
	durable  []byte
	pending  []pendingOp
	ops      int
	failAt   int // -1: never
	failOnce bool
	failed   bool
	syncs    int
	// failSync, if positive, makes the disk go away at that sync (counting
	// from 1): it and every mutating operation after it fail.
	failSync int
	// gate, if set, is called (without the lock) before every Sync.
	gate func()
}

type pendingOp struct {
	off  int64
	data []byte
	size int64 // truncate to size if data == nil
}

func newCrashFile() *crashFile { return &crashFile{failAt: -1} }

func resize(b []byte, n int64) []byte {
	if int64(len(b)) >= n {
		return b[:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

// fault counts a mutating operation and reports whether it fails. f.mu held.
func (f *crashFile) fault() bool {
	n := f.ops
	f.ops++
	if f.failAt >= 0 && (n == f.failAt || n > f.failAt && !f.failOnce) {
		f.failed = true
		return true
	}
	return false
}

func (f *crashFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.cur)) {
		return 0, io.EOF
	}
	n := copy(p, f.cur[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *crashFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fault() {
		return 0, errInjected
	}
	if end := off + int64(len(p)); end > int64(len(f.cur)) {
		f.cur = resize(f.cur, end)
	}
	copy(f.cur[off:], p)
	f.pending = append(f.pending, pendingOp{off: off, data: slices.Clone(p)})
	return len(p), nil
}

// WriteSync is a write durable when it returns, leaving the other
// unsynced writes unsynced. The store uses it only where no unsynced
// write overlaps (the header and area of a lazy Create); one that did
// would make the crash model ambiguous, so it fails the test.
func (f *crashFile) WriteSync(p []byte, off int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fault() {
		return errInjected
	}
	end := off + int64(len(p))
	for _, op := range f.pending {
		if op.data == nil && op.size < end || op.data != nil && op.off < end && off < op.off+int64(len(op.data)) {
			panic(fmt.Sprintf("WriteSync %d+%d over an unsynced write %d+%d (size %d)", off, len(p), op.off, len(op.data), op.size))
		}
	}
	if end > int64(len(f.cur)) {
		f.cur = resize(f.cur, end)
	}
	copy(f.cur[off:], p)
	f.durable = apply(f.durable, pendingOp{off: off, data: p})
	return nil
}

func (f *crashFile) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fault() {
		return errInjected
	}
	f.cur = resize(f.cur, size)
	f.pending = append(f.pending, pendingOp{size: size})
	return nil
}

func (f *crashFile) Allocate(off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fault() {
		return errInjected
	}
	return nil
}

func (f *crashFile) Sync() error {
	if f.gate != nil {
		f.gate()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failSync > 0 && f.syncs+1 >= f.failSync && f.failAt < 0 {
		f.failAt = f.ops // this one and all after
	}
	if f.fault() {
		return errInjected
	}
	f.syncs++
	for _, op := range f.pending {
		f.durable = apply(f.durable, op)
	}
	f.pending = nil
	return nil
}

func (f *crashFile) Close() error { return nil }

func apply(img []byte, op pendingOp) []byte {
	if op.data == nil {
		return resize(img, op.size)
	}
	if end := op.off + int64(len(op.data)); end > int64(len(img)) {
		img = resize(img, end)
	}
	copy(img[op.off:], op.data)
	return img
}

// crash returns what the disk might hold after power loss: the synced image
// plus, in order, some of the unsynced operations. A surviving write may be
// torn: each 512-byte piece of it lost, written, or written in part (a
// prefix of its bytes: the byte-wise mixture the format must survive).
func (f *crashFile) crash(r *rand.Rand) *crashFile {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := slices.Clone(f.durable)
	for _, op := range f.pending {
		switch r.IntN(10) {
		case 0, 1, 2, 3: // lost
			continue
		case 4, 5, 6: // whole
			img = apply(img, op)
			continue
		}
		if op.data == nil {
			img = apply(img, op)
			continue
		}
		for lo := 0; lo < len(op.data); lo += 512 {
			hi := min(lo+512, len(op.data))
			switch r.IntN(3) {
			case 0:
				continue
			case 2:
				hi = lo + r.IntN(hi-lo+1)
			}
			img = apply(img, pendingOp{off: op.off + int64(lo), data: op.data[lo:hi]})
		}
	}
	return &crashFile{cur: img, durable: slices.Clone(img), failAt: -1}
}

// image is a clean copy of what was written (as after a clean shutdown).
func (f *crashFile) image() *crashFile {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &crashFile{cur: slices.Clone(f.cur), durable: slices.Clone(f.cur), failAt: -1}
}

// memLive is the live device of the tests: always durable.
type memLive struct {
	mu sync.RWMutex
	b  []byte
}

func newLive(size int64, r *rand.Rand) *memLive {
	return &memLive{b: randBytes(r, size)}
}

func (m *memLive) read(p []byte, off int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	copy(p, m.b[off:])
	return nil
}

func (m *memLive) write(p []byte, off int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[off:], p)
}

func (m *memLive) clone() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Clone(m.b)
}

func randBytes(r *rand.Rand, n int64) []byte {
	b := make([]byte, n+7)
	for i := int64(0); i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

// openMem opens a store on f, failing the test on error.
func openMem(t testing.TB, f file, opt Options) *Store {
	t.Helper()
	s, err := openOn(f, "mem", opt)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}
