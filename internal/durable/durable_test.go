package durable

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// A second open file description of a locked file cannot lock it; once
// the first is closed, it can.
func TestLockExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	a, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Lock(a); err != nil {
		t.Fatal(err)
	}
	b, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := Lock(b); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	a.Close()
	if err := Lock(b); err != nil {
		t.Fatalf("lock after the holder closed: %v", err)
	}
}

// Whole reads and writes, short ones as errors, and the syncs on a real
// file and directory.
func TestFullReadsWritesAndSyncs(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteFull(f, []byte("abcdef"), 2); err != nil {
		t.Fatal(err)
	}
	if err := Datasync(f); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(dir); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 6)
	if err := ReadFull(f, p, 2); err != nil || string(p) != "abcdef" {
		t.Fatalf("read back %q, %v", p, err)
	}
	if err := ReadFull(f, p, 4); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short read: %v, want io.ErrUnexpectedEOF", err)
	}
	if err := SyncDir(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("SyncDir of a missing directory succeeded")
	}
	r, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := WriteFull(r, []byte("x"), 0); err == nil {
		t.Fatal("a write to a read-only file succeeded")
	}
}

// ReplaceFile replaces the content whole, with the mode asked, and leaves
// no temporary file; a directory that is not there is an error, and the
// old file stays as it was.
func TestReplaceFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.prom")
	for _, data := range []string{"first, longer content\n", "second\n"} {
		if err := ReplaceFile(path, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != data {
			t.Fatalf("content %q, %v; want %q", got, err, data)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode: %v %v", fi.Mode(), err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*")); len(m) != 1 {
		t.Fatalf("left in the directory: %v", m)
	}
	if err := ReplaceFile(filepath.Join(dir, "gone", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("a file in a missing directory was written")
	}
	// A directory where the file should be: the rename fails, the
	// directory is untouched and no temporary file is left.
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	if err := ReplaceFile(filepath.Join(dir, "d"), []byte("x"), 0o600); err == nil {
		t.Fatal("replaced a directory")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*")); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}
