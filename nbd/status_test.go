package nbd_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

func ext(pairs ...int64) []nbd.Extent {
	var out []nbd.Extent
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, nbd.Extent{Len: pairs[i], Flags: uint32(pairs[i+1])})
	}
	return out
}

const hz = int64(nbd.StateHole | nbd.StateZero)

// NBD_CMD_BLOCK_STATUS: one chunk per selected context, the last one
// final; extents cut to the request (REQ_ONE: one); base:allocation from
// the Allocator, or all data without one; dirty bitmaps from the Device.
func TestBlockStatus(t *testing.T) {
	dev := snapDevice()
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{
		{Name: "r0@snap2", Device: dev, ReadOnly: true},
		{Name: "plain", Device: plainDevice{newMem(4 << 20)}},
	}})
	c := structuredGo(t, addr, "r0@snap2", nbd.ContextBaseAllocation, snap0, snap1)
	const K, M = 1 << 10, 1 << 20
	for _, tc := range []struct {
		off, n int64
		flags  uint16
		want   map[string][]nbd.Extent
	}{
		{0, 4 * M, 0, map[string][]nbd.Extent{
			nbd.ContextBaseAllocation: ext(64*K, hz, 64*K, 0, M-128*K, hz, 128*K, 0, 2*M-128*K, hz, 4*K, 0, M-4*K, hz),
			snap0:                     ext(64*K, 0, 64*K, 1, M-64*K, 0, 64*K, 1, 3*M-128*K, 0),
			snap1:                     ext(3*M, 0, 4*K, 1, M-4*K, 0),
		}},
		{96 * K, 64 * K, 0, map[string][]nbd.Extent{
			nbd.ContextBaseAllocation: ext(32*K, 0, 32*K, hz),
			snap0:                     ext(32*K, 1, 32*K, 0),
			snap1:                     ext(64*K, 0),
		}},
		{0, 4 * M, nbd.CmdFlagReqOne, map[string][]nbd.Extent{
			nbd.ContextBaseAllocation: ext(64*K, hz),
			snap0:                     ext(64*K, 0),
			snap1:                     ext(3*M, 0),
		}},
		{4*M - 512, 512, nbd.CmdFlagFUA, map[string][]nbd.Extent{
			nbd.ContextBaseAllocation: ext(512, hz),
			snap0:                     ext(512, 0),
			snap1:                     ext(512, 0),
		}},
	} {
		r, err := c.BlockStatus(tc.off, tc.n, tc.flags)
		if err != nil {
			t.Fatalf("status %d+%d: %v", tc.off, tc.n, err)
		}
		if k := len(r.Chunks); r.Chunks[k-1].Flags&nbd.ReplyFlagDone == 0 || k != 3 {
			t.Fatalf("status %d+%d: chunks %q, want 3 with the last final", tc.off, tc.n, chunkTypes(r))
		}
		got := statusByName(t, c, r)
		for name, want := range tc.want {
			if !slices.Equal(got[name], want) {
				t.Errorf("status %d+%d flags %#x in %s:\n got %v\nwant %v", tc.off, tc.n, tc.flags, name, got[name], want)
			}
		}
	}

	// Without an Allocator everything is data.
	p := structuredGo(t, addr, "plain", nbd.ContextBaseAllocation)
	r, err := p.BlockStatus(4096, 3<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := statusByName(t, p, r)[nbd.ContextBaseAllocation]; !slices.Equal(got, ext(3<<20, 0)) {
		t.Errorf("status on a device that is not an Allocator: %v", got)
	}
}

// Refused BLOCK_STATUS requests get error chunks saying why, and the
// connection goes on; a context that vanished (a deleted snapshot) fails
// its request, naming it.
func TestBlockStatusErrors(t *testing.T) {
	dev := snapDevice()
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Name: "r0@snap2", Device: dev, ReadOnly: true}}})
	c := structuredGo(t, addr, "r0@snap2", nbd.ContextBaseAllocation, snap0)
	for _, tc := range []struct {
		name   string
		off, n int64
		flags  uint16
		msg    string
	}{
		{"beyond the end", 4<<20 - 512, 1024, 0, "beyond the end"},
		{"offset beyond the end", 1 << 40, 512, 0, "beyond the end"},
		{"zero length", 0, 0, 0, "block status of 0 bytes"},
		{"DF", 0, 512, nbd.CmdFlagDF, "flag not valid"},
		{"unknown flag", 0, 512, 1 << 12, "flag not valid"},
	} {
		r, err := c.BlockStatus(tc.off, tc.n, tc.flags)
		var e *nbdtest.Error
		if !errors.As(err, &e) || e.Code != nbd.EINVAL || !strings.Contains(e.Message, tc.msg) || chunkTypes(r) != "error!" {
			t.Errorf("%s: %v (chunks %q), want EINVAL with %q", tc.name, err, chunkTypes(r), tc.msg)
		}
	}
	dev.drop(snap0)
	_, err := c.BlockStatus(0, 4096, 0)
	if err == nil || !strings.Contains(err.Error(), "context "+snap0) || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("status of a deleted snapshot's bitmap: %v, want an error naming the context", err)
	}
	// Reads still work.
	buf := make([]byte, 4096)
	if err := c.Read(buf, 64<<10); err != nil {
		t.Fatal(err)
	}

	// Without contexts, and without structured replies.
	plain := dial(t, addr, "r0@snap2")
	if r, err := plain.Do(nbdtest.Request{Type: nbd.CmdBlockStatus, Length: 4096}); err != nil || r.Error != nbd.EINVAL {
		t.Errorf("BLOCK_STATUS without structured replies: %v, error %d, want a simple EINVAL", err, r.Error)
	}
	none := structuredGo(t, addr, "r0@snap2")
	if _, err := none.BlockStatus(0, 4096, 0); nbdtest.ErrorCode(err) != nbd.EINVAL {
		t.Errorf("BLOCK_STATUS without contexts: %v, want EINVAL", err)
	}
}

// badAllocator answers with what a broken Device might.
type badAllocator struct {
	*memDevice
	ext []nbd.Extent
}

func (b badAllocator) Allocation(context.Context, int64, int64) ([]nbd.Extent, error) {
	return slices.Clone(b.ext), nil
}

// A Device's extents are cut to the request, empty ones end the list, and
// a Device that describes nothing fails the request (EIO), not the
// connection.
func TestBlockStatusDeviceExtents(t *testing.T) {
	for _, tc := range []struct {
		name string
		ext  []nbd.Extent
		want []nbd.Extent // nil: EIO
	}{
		{"longer than asked", ext(1<<30, 0), ext(64<<10, 0)},
		{"equal flags joined", ext(4096, 0, 4096, 0, 4096, 3), ext(8192, 0, 4096, 3)},
		{"empty extent ends", ext(4096, 3, 0, 0, 4096, 0), ext(4096, 3)},
		{"negative ends", ext(4096, 0, -5, 3), ext(4096, 0)},
		{"nothing", nil, nil},
		{"only empty", ext(0, 0), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: badAllocator{newMem(1 << 20), tc.ext}}}})
			c := structuredGo(t, addr, "", nbd.ContextBaseAllocation)
			r, err := c.BlockStatus(0, 64<<10, 0)
			if tc.want == nil {
				if nbdtest.ErrorCode(err) != nbd.EIO || !strings.Contains(err.Error(), "described no bytes") {
					t.Fatalf("%v, want EIO", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := statusByName(t, c, r)[nbd.ContextBaseAllocation]; !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// The attack: a Device (a fragmented file, a bitmap of scattered writes)
// has a million extents and the client asks for all of them in one
// request of 4 GiB. The server asks the Device about MaxStatusLength bytes
// and sends at most MaxExtents per context; the client goes on from where
// the reply ended and sees the same extents, in pieces.
func TestBlockStatusBounds(t *testing.T) {
	const size = 4 << 20
	var data []span
	for off := int64(0); off < size; off += 1024 {
		data = append(data, span{off, 512}) // 4096 data extents, as many holes
	}
	dev := newSparse(size, data, map[string][]span{snap0: data})
	srv := &nbd.Server{MaxExtents: 1000, MaxStatusLength: 2 << 20,
		Exports: []nbd.Export{{Name: "d", Device: dev, ReadOnly: true}}}
	addr := serve(t, srv)
	c := structuredGo(t, addr, "d", nbd.ContextBaseAllocation, snap0)
	r, err := c.BlockStatus(0, size, 0)
	if err != nil {
		t.Fatal(err)
	}
	for id, e := range r.Status {
		if len(e) != 1000 {
			t.Errorf("context %s: %d extents in one reply, want MaxExtents (1000)", c.Contexts[id], len(e))
		}
	}
	if got := dev.maxAsked.Load(); got != 2<<20 {
		t.Errorf("the device was asked about %d bytes, want MaxStatusLength (2 MiB)", got)
	}
	// 32-bit request length: the most a client can ask.
	if _, err := c.BlockStatus(0, 1<<32-1, 0); nbdtest.ErrorCode(err) != nbd.EINVAL {
		t.Errorf("status beyond the end: %v", err)
	}

	// Walking the whole device gives back exactly the device's extents.
	for _, name := range []string{nbd.ContextBaseAllocation, snap0} {
		var got []nbd.Extent
		for off := int64(0); off < size; {
			r, err := c.BlockStatus(off, size-off, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range statusByName(t, c, r)[name] {
				got = append(got, e)
			}
			off = 0
			for _, e := range got {
				off += e.Len
			}
		}
		in, out := uint32(0), nbd.StateHole|nbd.StateZero
		if name == snap0 {
			in, out = nbd.StateDirty, 0
		}
		if want := extentsOf(data, 0, size, in, out); !slices.Equal(got, want) {
			t.Errorf("%s walked: %d extents, want %d", name, len(got), len(want))
		}
	}
}

// The attack: pipeline BLOCK_STATUS requests whose replies could each be
// large and read none of them. Each request holds its worst-case reply in
// the in-flight budget until the reply is written, so the Device is asked
// only as often as MaxInFlightBytes allows; once the client reads, all are
// answered.
func TestBlockStatusHoldsBudget(t *testing.T) {
	dev := snapDevice()
	// Worst case per request: the 512 KiB buffer of 2 contexts × (24 + 8 ×
	// 16384) bytes, and one Device answer (16384 × 16 bytes): 1 MiB admits
	// one at a time.
	srv := &nbd.Server{MaxInFlightBytes: 1 << 20, WriteTimeout: -1,
		Exports: []nbd.Export{{Name: "d", Device: dev, ReadOnly: true}}}
	nc, br := pipeMeta(t, srv, "d", nbd.ContextBaseAllocation, snap0)
	const count = 200
	var reqs [][]byte
	for i := range count {
		reqs = append(reqs, request(nbd.CmdBlockStatus, 0, uint64(i), 0, 4<<20))
	}
	sendAll(nc, reqs)
	if calls := settle(dev.statusCalls.Load); calls > 2 {
		t.Fatalf("%d status calls while no reply was read, want at most 2 (1 request in MaxInFlightBytes)", calls)
	}
	readStatusReplies(t, nc, br, count)
	if got := dev.statusCalls.Load(); got != 2*count {
		t.Fatalf("%d status calls, want %d", got, 2*count)
	}
}

// pipeNegotiate serves srv on one end of a net.Pipe (nothing buffered:
// what the server writes waits for the test to read it) and runs negotiate
// on the other, which must enter transmission.
// readStatusReplies reads count status replies' chunk headers (each
// reply ends with the chunk flagged last).
func readStatusReplies(t *testing.T, nc net.Conn, br *bufio.Reader, count int) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for done := 0; done < count; {
		_, last, err := readChunkHeader(br)
		if err != nil {
			t.Fatalf("after %d status replies: %v", done, err)
		}
		if last {
			done++
		}
	}
}

// pipeMeta is pipeNegotiate with structured replies and the contexts
// queries select on export, then transmission on it.
func pipeMeta(t *testing.T, srv *nbd.Server, export string, queries ...string) (net.Conn, *bufio.Reader) {
	t.Helper()
	return pipeNegotiate(t, srv, func(n *nbdtest.Negotiation) error {
		if err := n.StructuredReply(); err != nil {
			return err
		}
		if _, err := n.SetMetaContext(export, queries...); err != nil {
			return err
		}
		_, err := n.Info(nbd.OptGo, export)
		return err
	})
}

func pipeNegotiate(t *testing.T, srv *nbd.Server, negotiate func(*nbdtest.Negotiation) error) (net.Conn, *bufio.Reader) {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), a)
	}()
	t.Cleanup(func() {
		b.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ServeConn did not return after the client closed")
		}
	})
	n, err := nbdtest.Negotiate(b, fixedNoZeroes)
	if err != nil {
		t.Fatal(err)
	}
	if err := negotiate(n); err != nil {
		t.Fatal(err)
	}
	return b, n.Reader()
}

// readChunkHeader reads one structured chunk and skips its payload.
func readChunkHeader(br *bufio.Reader) (cookie uint64, last bool, err error) {
	var h [nbd.ChunkHeaderSize]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, false, err
	}
	if m := binary.BigEndian.Uint32(h[0:]); m != nbd.MagicStructuredReply {
		return 0, false, fmt.Errorf("magic %#x", m)
	}
	if _, err := br.Discard(int(binary.BigEndian.Uint32(h[16:]))); err != nil {
		return 0, false, err
	}
	return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint16(h[4:])&nbd.ReplyFlagDone != 0, nil
}
