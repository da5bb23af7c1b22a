package qcow2

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary files to Open, Lookup, the chain reader and
// Check: errors are fine, panics and allocations sized by a field are not.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	seed := func(o CreateOptions, write func(w *Writer)) {
		p := filepath.Join(dir, "seed")
		os.Remove(p)
		w, err := Create(p, o)
		if err != nil {
			f.Fatal(err)
		}
		write(w)
		if err := w.Close(); err != nil {
			f.Fatal(err)
		}
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	seed(CreateOptions{Size: 1 << 20, ClusterSize: 4096}, func(w *Writer) {
		w.WriteCluster(3, bytes.Repeat([]byte{1}, 4096))
		w.WriteZeroCluster(5)
	})
	seed(CreateOptions{Size: 300 << 10, ClusterSize: 4096, BackingFile: "nope.raw", BackingFormat: "raw"}, func(w *Writer) {
		w.WriteCluster(1, bytes.Repeat([]byte{2}, 4096))
	})
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		im, err := Open(p)
		if err != nil {
			return
		}
		for i := int64(0); i < min(im.Clusters(), 4096); i++ {
			im.Lookup(i)
		}
		im.Check()
		im.Close()
		if c, err := OpenChain(p); err == nil {
			buf := make([]byte, min(c.Size(), 1<<20))
			c.ReadAt(buf, 0)
			c.Mapped(0, int64(len(buf)))
			c.Close()
		}
	})
}
