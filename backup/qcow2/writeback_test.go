package qcow2

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteBehind: the Writer starts writeback of its appended data step by
// step, and once writeBehindBytes are under writeback not waited for, waits
// for them, so that little is dirty or in flight when Close fsyncs;
// rewrites in place start none; the image is what was written.
func TestWriteBehind(t *testing.T) {
	const cs = 64 << 10
	defer func(n, step int64, f func(*os.File, int64, int64, bool) error) {
		writeBehindBytes, writeBehindStep, startWriteback = n, step, f
	}(writeBehindBytes, writeBehindStep, startWriteback)
	writeBehindBytes, writeBehindStep = 6*cs, 2*cs
	type call struct {
		off, n int64
		wait   bool
	}
	var calls []call
	startWriteback = func(f *os.File, off, n int64, wait bool) error {
		calls = append(calls, call{off, n, wait})
		if err := writeback(f, off, n, wait); err != nil {
			t.Errorf("sync_file_range %d+%d: %v", off, n, err)
		}
		return nil
	}
	img := filepath.Join(t.TempDir(), "a.qcow2")
	const clusters = 40
	w, err := Create(img, CreateOptions{Size: clusters * cs, ClusterSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, clusters*cs)
	for i := range int64(clusters) {
		b := bytes.Repeat([]byte{byte(i + 1)}, cs)
		if err := w.WriteCluster(i, b); err != nil {
			t.Fatal(err)
		}
		copy(want[i*cs:], b)
		if i%5 == 4 { // a rewrite in place appends nothing
			n := len(calls)
			b = bytes.Repeat([]byte{0xee}, cs)
			if err := w.WriteCluster(i-2, b); err != nil {
				t.Fatal(err)
			}
			copy(want[(i-2)*cs:], b)
			if len(calls) != n {
				t.Fatalf("a rewrite in place started writeback: %+v", calls[n:])
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// The data clusters follow the header cluster and the first L2 table
	// (allocated before the first data cluster).
	started, waited := int64(cs), int64(cs)
	for _, c := range calls {
		switch {
		case c.wait && (c.off != waited || c.off+c.n > started):
			t.Fatalf("waited for %d+%d: not the oldest window started (waited to %d, started to %d): %+v", c.off, c.n, waited, started, calls)
		case c.wait:
			waited = c.off + c.n
		case c.off != started || c.n < writeBehindStep:
			t.Fatalf("started %d+%d: want the next step of at least %d bytes from %d: %+v", c.off, c.n, writeBehindStep, started, calls)
		default:
			if started-waited >= writeBehindBytes {
				t.Fatalf("%d bytes under writeback not waited for at %+v (bound %d): %+v", started-waited, c, writeBehindBytes, calls)
			}
			started = c.off + c.n
		}
	}
	if started < (clusters-2)*cs {
		t.Fatalf("writeback started only up to %d of about %d bytes of data: %+v", started, clusters*cs, calls)
	}
	if !same(chainBytes(t, img), want) {
		t.Fatal("the image differs from what was written")
	}
}
