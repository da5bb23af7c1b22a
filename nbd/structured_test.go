package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// chunkTypes lists a reply's chunk types, the final one marked with "!".
func chunkTypes(r nbdtest.Reply) string {
	var b strings.Builder
	for i, ch := range r.Chunks {
		if i > 0 {
			b.WriteByte(' ')
		}
		switch ch.Type {
		case nbd.ReplyTypeNone:
			b.WriteString("none")
		case nbd.ReplyTypeOffsetData:
			b.WriteString("data")
		case nbd.ReplyTypeOffsetHole:
			b.WriteString("hole")
		case nbd.ReplyTypeBlockStatus:
			b.WriteString("status")
		case nbd.ReplyTypeError:
			b.WriteString("error")
		default:
			b.WriteString("?")
		}
		if ch.Flags&nbd.ReplyFlagDone != 0 {
			b.WriteByte('!')
		}
	}
	return b.String()
}

// READ with structured replies: one OFFSET_DATA chunk that is also the
// last; a zero-length read is NONE; errors are ERROR chunks whose message
// says what failed; other commands keep simple replies on success.
func TestStructuredRead(t *testing.T) {
	dev := newMem(testSize)
	copy(dev.data, pattern(testSize, 3))
	ro := &faultyDevice{memDevice: newMem(64 << 10), fail: map[string]bool{"read": true}, err: syscall.EIO}
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{
		{Name: "disk", Device: dev},
		{Name: "bad", Device: ro, ReadOnly: true},
	}})
	c := structuredGo(t, addr, "disk")
	if c.Flags&nbd.FlagSendDF == 0 {
		t.Errorf("transmission flags %#x: NBD_FLAG_SEND_DF missing with structured replies", c.Flags)
	}
	for _, tc := range []struct {
		name   string
		flags  uint16
		off, n int64
		chunks string
		errno  uint32
		msg    string
	}{
		{"4k", 0, 4096, 4096, "data!", 0, ""},
		{"1M", 0, 0, testSize, "data!", 0, ""},
		{"df", nbd.CmdFlagDF, 512, 1000, "data!", 0, ""},
		{"fua", nbd.CmdFlagFUA, 0, 512, "data!", 0, ""},
		{"empty", 0, 0, 0, "none!", 0, ""},
		{"beyond the end", 0, testSize - 512, 4096, "error!", nbd.EINVAL, "read 1048064+4096: nbd: request beyond the end of the export: invalid argument (the export has 1048576 bytes)"},
		{"unknown flag", 1 << 9, 0, 512, "error!", nbd.EINVAL, "command flag not valid"},
		{"too large", 0, 0, 33 << 20, "error!", nbd.EINVAL, "larger than the maximum payload"},
	} {
		r, err := c.Do(nbdtest.Request{Type: nbd.CmdRead, Flags: tc.flags, Offset: uint64(tc.off), Length: uint32(tc.n)})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := chunkTypes(r); got != tc.chunks || r.Error != tc.errno || !strings.Contains(r.Message, tc.msg) {
			t.Errorf("%s: chunks %q error %d %q, want %q error %d %q", tc.name, got, r.Error, r.Message, tc.chunks, tc.errno, tc.msg)
		}
		if tc.errno == 0 && !bytes.Equal(r.Data, dev.data[tc.off:tc.off+tc.n]) {
			t.Errorf("%s: data differs", tc.name)
		}
	}
	// A write succeeds with a simple reply.
	if err := c.Write(pattern(4096, 9), 8192, true); err != nil {
		t.Fatal(err)
	}

	bad := structuredGo(t, addr, "bad")
	r, err := bad.Do(nbdtest.Request{Type: nbd.CmdRead, Length: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if chunkTypes(r) != "error!" || r.Error != nbd.EIO || !strings.Contains(r.Message, "input/output error") {
		t.Errorf("device read error: chunks %q error %d %q", chunkTypes(r), r.Error, r.Message)
	}
	err = bad.Write(make([]byte, 512), 0, false)
	var e *nbdtest.Error
	if !errors.As(err, &e) || e.Code != nbd.EPERM || !strings.Contains(e.Message, "read-only") {
		t.Errorf("write to a read-only export: %v, want EPERM with a message", err)
	}
	// Still usable after errors.
	if _, err := bad.Do(nbdtest.Request{Type: nbd.CmdFlush}); err != nil {
		t.Fatal(err)
	}

	// Without structured replies nothing changes: simple replies, no DF.
	plain := dial(t, addr, "disk")
	if plain.Flags&nbd.FlagSendDF != 0 {
		t.Errorf("NBD_FLAG_SEND_DF without structured replies")
	}
	if r, err := plain.Do(nbdtest.Request{Type: nbd.CmdRead, Flags: nbd.CmdFlagDF, Length: 512}); err != nil || r.Error != nbd.EINVAL {
		t.Errorf("DF without structured replies: %v, error %d, want EINVAL", err, r.Error)
	}
}

// A large READ over holes sends them as OFFSET_HOLE chunks and reads only
// the data from the Device; DF, a small read or a Device that is not an
// Allocator get one data chunk.
func TestStructuredReadHoles(t *testing.T) {
	dev := snapDevice()
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{
		{Name: "snap", Device: dev, ReadOnly: true},
		{Name: "plain", Device: plainDevice{dev.memDevice}, ReadOnly: true},
	}})
	c := structuredGo(t, addr, "snap")
	read := func(c *nbdtest.Client, flags uint16, off, n int64) nbdtest.Reply {
		t.Helper()
		r, err := c.Do(nbdtest.Request{Type: nbd.CmdRead, Flags: flags, Offset: uint64(off), Length: uint32(n)})
		if err != nil || r.Error != 0 {
			t.Fatalf("read %d+%d: %v %d %s", off, n, err, r.Error, r.Message)
		}
		if !bytes.Equal(r.Data, dev.memDevice.data[off:off+n]) {
			t.Fatalf("read %d+%d: data differs", off, n)
		}
		return r
	}

	before := dev.readBytes.Load()
	r := read(c, 0, 0, 2<<20)
	if got, want := chunkTypes(r), "hole data hole data hole!"; got != want {
		t.Errorf("2 MiB read: chunks %q, want %q", got, want)
	}
	if got := dev.readBytes.Load() - before; got != 192<<10 {
		t.Errorf("2 MiB read with 192 KiB of data read %d bytes from the device", got)
	}
	if r.Holes != 2<<20-192<<10 {
		t.Errorf("%d bytes sent as holes, want %d", r.Holes, 2<<20-192<<10)
	}
	// Only zeroes: one hole chunk.
	if r := read(c, 0, 2<<20, 1<<20); chunkTypes(r) != "hole!" {
		t.Errorf("read of a hole: chunks %q", chunkTypes(r))
	}
	// A hole shorter than 4 KiB is sent as data: [3M-2K, 3M+4K+2K).
	if r := read(c, 0, 3<<20-2048, 64<<10); chunkTypes(r) != "data hole!" {
		t.Errorf("read with a short hole: chunks %q, want \"data hole!\"", chunkTypes(r))
	}
	if r := read(c, nbd.CmdFlagDF, 0, 2<<20); chunkTypes(r) != "data!" {
		t.Errorf("DF read: chunks %q, want one data chunk", chunkTypes(r))
	}
	if r := read(c, 0, 0, 32<<10); chunkTypes(r) != "data!" {
		t.Errorf("small read: chunks %q, want one data chunk", chunkTypes(r))
	}
	p := structuredGo(t, addr, "plain")
	if r := read(p, 0, 0, 2<<20); chunkTypes(r) != "data!" {
		t.Errorf("read from a device that is not an Allocator: chunks %q", chunkTypes(r))
	}
}

// A read over many small holes is sent in at most 64 chunks.
func TestStructuredReadChunkBound(t *testing.T) {
	var data []span
	for off := int64(0); off < 4<<20; off += 16 << 10 {
		data = append(data, span{off, 8 << 10}) // 8 KiB data, 8 KiB hole
	}
	dev := newSparse(4<<20, data, nil)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Name: "d", Device: dev}}})
	c := structuredGo(t, addr, "d")
	r, err := c.Do(nbdtest.Request{Type: nbd.CmdRead, Length: 4 << 20})
	if err != nil || r.Error != 0 {
		t.Fatal(err, r.Error)
	}
	if len(r.Chunks) != 64 || !bytes.Equal(r.Data, dev.memDevice.data) {
		t.Fatalf("%d chunks (want 64), data equal %v", len(r.Chunks), bytes.Equal(r.Data, dev.memDevice.data))
	}
}

// failAllocator fails Allocation: reads fall back to reading everything.
type failAllocator struct{ *memDevice }

func (failAllocator) Allocation(context.Context, int64, int64) ([]nbd.Extent, error) {
	return nil, errors.New("allocation unknown")
}

func TestStructuredReadAllocationFails(t *testing.T) {
	dev := failAllocator{newMem(testSize)}
	copy(dev.data, pattern(testSize, 1))
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Name: "d", Device: dev}}})
	c := structuredGo(t, addr, "d")
	got := make([]byte, 512<<10)
	if err := c.Read(got, 4096); err != nil || !bytes.Equal(got, dev.data[4096:4096+len(got)]) {
		t.Fatalf("read: %v", err)
	}
}
