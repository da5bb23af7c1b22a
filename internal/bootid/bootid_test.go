package bootid

import (
	"os"
	"runtime"
	"testing"
)

func TestParse(t *testing.T) {
	want := [16]byte{0x6e, 0x2b, 0x1f, 0x43, 0x09, 0x8a, 0x4c, 0x5e, 0x9d, 0x31, 0x27, 0x0c, 0x84, 0x6f, 0x11, 0xa2}
	if got := Parse("6e2b1f43-098a-4c5e-9d31-270c846f11a2\n"); got != want {
		t.Fatalf("Parse = %x, want %x", got, want)
	}
	for _, bad := range []string{"", "6e2b1f43-098a-4c5e-9d31", "zz2b1f43-098a-4c5e-9d31-270c846f11a2", "6e2b1f43-098a-4c5e-9d31-270c846f11a2ff"} {
		if got := Parse(bad); got != ([16]byte{}) {
			t.Errorf("Parse(%q) = %x, want zero", bad, got)
		}
	}
}

func TestID(t *testing.T) {
	b, err := os.ReadFile(Path)
	if err != nil {
		if runtime.GOOS == "linux" {
			t.Fatalf("this Linux system has no %s: %v", Path, err)
		}
		if id := ID(); id != ([16]byte{}) {
			t.Fatalf("ID() = %x without %s, want zero (unknown)", id, Path)
		}
		return
	}
	if id := ID(); id == ([16]byte{}) || id != Parse(string(b)) || id != ID() {
		t.Fatalf("ID() = %x, not the boot ID %q (or not stable)", id, b)
	}
}
