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
