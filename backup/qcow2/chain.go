package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// MaxChainDepth bounds how many backing files a chain may have.
const MaxChainDepth = 256

// layer is one file of a chain: a qcow2 image or a raw file.
type layer struct {
	img  *Image
	raw  *os.File
	path string
	size int64 // virtual size (raw: file size)
}

// Chain is an image with its backing files, read as the guest would see it.
type Chain struct {
	layers []layer
}

// OpenChain opens the qcow2 image at path and every backing file it names
// (relative names resolve against the directory of the image naming them).
func OpenChain(path string) (*Chain, error) {
	c := &Chain{}
	seen := map[string]bool{}
	format := "qcow2"
	for {
		abs, err := filepath.Abs(path)
		if err != nil {
			c.Close()
			return nil, err
		}
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		if seen[abs] {
			c.Close()
			return nil, fmt.Errorf("qcow2 backing chain loops at %s", path)
		}
		seen[abs] = true
		if len(c.layers) >= MaxChainDepth {
			c.Close()
			return nil, fmt.Errorf("qcow2 backing chain of %s deeper than %d", c.layers[0].path, MaxChainDepth)
		}
		if format == "" {
			format = probe(path)
		}
		switch format {
		case "qcow2":
			im, err := Open(path)
			if err != nil {
				c.Close()
				return nil, err
			}
			c.layers = append(c.layers, layer{img: im, path: path, size: im.Size()})
			name, bf := im.Backing()
			if name == "" {
				return c, nil
			}
			if !filepath.IsAbs(name) {
				name = filepath.Join(filepath.Dir(path), name)
			}
			path, format = name, bf
		case "raw":
			f, err := os.Open(path)
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("qcow2 backing file: %w", err)
			}
			st, err := f.Stat()
			if err != nil {
				f.Close()
				c.Close()
				return nil, err
			}
			c.layers = append(c.layers, layer{raw: f, path: path, size: st.Size()})
			return c, nil
		default:
			c.Close()
			return nil, fmt.Errorf("qcow2 backing file %s has format %q: only qcow2 and raw are supported", path, format)
		}
	}
}

// probe guesses a backing file's format when the image does not say.
func probe(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "qcow2" // Open reports the error
	}
	defer f.Close()
	b := make([]byte, 4)
	if _, err := io.ReadFull(f, b); err == nil && string(b) == magic {
		return "qcow2"
	}
	return "raw"
}

// Close closes every file.
func (c *Chain) Close() error {
	var err error
	for _, l := range c.layers {
		if l.img != nil {
			err = errors.Join(err, l.img.Close())
		} else {
			err = errors.Join(err, l.raw.Close())
		}
	}
	c.layers = nil
	return err
}

// Size is the top image's virtual size.
func (c *Chain) Size() int64 { return c.layers[0].size }

// Top is the top image.
func (c *Chain) Top() *Image { return c.layers[0].img }

// Files are the chain's paths, top first.
func (c *Chain) Files() []string {
	out := make([]string, len(c.layers))
	for i, l := range c.layers {
		out[i] = l.path
	}
	return out
}

// ReadAt reads as the guest sees the top image (io.ReaderAt).
func (c *Chain) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2 read at negative offset %d", off)
	}
	if off >= c.Size() {
		return 0, io.EOF
	}
	n := min(int64(len(p)), c.Size()-off)
	if err := c.read(0, p[:n], off); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// read fills p from layer i at off, falling through to the layers below
// for clusters layer i leaves unallocated.
func (c *Chain) read(i int, p []byte, off int64) error {
	if i >= len(c.layers) {
		clear(p)
		return nil
	}
	l := c.layers[i]
	if off >= l.size {
		clear(p)
		return nil
	}
	if tail := off + int64(len(p)) - l.size; tail > 0 {
		clear(p[int64(len(p))-tail:])
		p = p[:int64(len(p))-tail]
	}
	if l.raw != nil {
		n, err := l.raw.ReadAt(p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s at %d: %w", l.path, off, err)
		}
		clear(p[n:])
		return nil
	}
	cs := l.img.cs
	for len(p) > 0 {
		idx, within := off/cs, off%cs
		n := min(int64(len(p)), cs-within)
		st, host, err := l.img.Lookup(idx)
		if err != nil {
			return err
		}
		switch st {
		case Data:
			if err := l.img.readHost(p[:n], host+within); err != nil {
				return err
			}
		case Zero:
			clear(p[:n])
		default:
			if err := c.read(i+1, p[:n], off); err != nil {
				return err
			}
		}
		p, off = p[n:], off+n
	}
	return nil
}

// Mapped reports whether any byte of [off, off+n) holds data somewhere in
// the chain (false: the range reads as zeroes without reading any data).
func (c *Chain) Mapped(off, n int64) (bool, error) {
	return c.mapped(0, off, min(n, c.Size()-off))
}

func (c *Chain) mapped(i int, off, n int64) (bool, error) {
	if i >= len(c.layers) || n <= 0 {
		return false, nil
	}
	l := c.layers[i]
	if off >= l.size {
		return false, nil
	}
	n = min(n, l.size-off)
	if l.raw != nil {
		return true, nil
	}
	cs := l.img.cs
	for n > 0 {
		idx, within := off/cs, off%cs
		k := min(n, cs-within)
		st, _, err := l.img.Lookup(idx)
		if err != nil {
			return false, err
		}
		switch st {
		case Data:
			return true, nil
		case Unallocated:
			if m, err := c.mapped(i+1, off, k); m || err != nil {
				return m, err
			}
		}
		off, n = off+k, n-k
	}
	return false, nil
}
