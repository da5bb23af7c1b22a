package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/nbd/client"
)

const testSize = 8 << 20

// testImage makes an 8 MiB qcow2 image with data, zeroes written over data,
// and a 4 KiB-granular persistent dirty bitmap "s0" added halfway, and
// returns its path and expected content.
func testImage(t *testing.T) (string, []byte) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "8M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 1M", "-c", "write -P 0x5c 6M 192k", img)
	runTool(t, "qemu-img", "bitmap", "--add", "-g", "4096", img, "s0")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xbb 2052k 4k", "-c", "write -z 0 64k", "-c", "write -P 0x11 6208k 8k", img)
	want := make([]byte, testSize)
	fill(want[0:1<<20], 0xaa)
	fill(want[6<<20:6<<20+192<<10], 0x5c)
	fill(want[2052<<10:2056<<10], 0xbb)
	clear(want[0 : 64<<10])
	fill(want[6208<<10:6216<<10], 0x11)
	return img, want
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

func dialUnix(t *testing.T, sock, export string, opts client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts.Export = export
	c, err := client.Dial(ctx, "unix", sock, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkExtents checks that ext tiles [0, size) in order.
func checkExtents(t *testing.T, name string, ext []client.Extent, size int64) {
	t.Helper()
	off := int64(0)
	for _, e := range ext {
		if e.Off != off || e.Len <= 0 {
			t.Fatalf("%s: extents do not tile the export: %+v", name, ext)
		}
		off = e.End()
	}
	if off != size {
		t.Fatalf("%s: extents end at %d, export has %d bytes", name, off, size)
	}
}

func allExtents(t *testing.T, c *client.Client, name string) []client.Extent {
	t.Helper()
	var ext []client.Extent
	err := c.Extents(context.Background(), name, 0, c.Size(), func(e client.Extent) error {
		if n := len(ext); n > 0 && ext[n-1].Flags == e.Flags && ext[n-1].End() == e.Off {
			ext[n-1].Len += e.Len
		} else {
			ext = append(ext, e)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkExtents(t, name, ext, c.Size())
	return ext
}

func TestQemuNBD(t *testing.T) {
	img, want := testImage(t)
	sock := qemuNBD(t, img, "qcow2", "r0@snap", "-B", "s0")
	c := dialUnix(t, sock, "r0@snap", client.Options{
		MetaContexts: []string{client.ContextAllocation, client.DirtyBitmapContext("s0"), client.DirtyBitmapContext("absent")},
		MaxRequest:   1 << 20, InFlight: 4,
	})
	if c.Size() != testSize || !c.ReadOnly() || !c.Structured() {
		t.Fatalf("size %d, read-only %v, structured %v", c.Size(), c.ReadOnly(), c.Structured())
	}
	if !c.HasMetaContext(client.ContextAllocation) || !c.HasMetaContext("qemu:dirty-bitmap:s0") || c.HasMetaContext("qemu:dirty-bitmap:absent") {
		t.Fatalf("contexts %q", c.MetaContexts())
	}

	// The whole export in one pipelined call (8 requests of 1 MiB, 4 in flight).
	got := make([]byte, testSize)
	if err := c.Read(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read differs from what qemu-io wrote")
	}
	st := c.Stats()
	if st.ReadBytes != testSize || st.DataBytes+st.HoleBytes != testSize || st.HoleBytes == 0 || st.Requests != 8 {
		t.Fatalf("stats %+v: want 8 MiB asked, data+holes = 8 MiB, some holes", st)
	}

	// Unaligned spans in one batch, and io.ReaderAt at the end.
	a, b := make([]byte, 5000), make([]byte, 3)
	if err := c.ReadBatch(context.Background(), []client.Span{{Off: 2052<<10 - 100, Buf: a}, {Off: 1<<20 - 1, Buf: b}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, want[2052<<10-100:][:5000]) || !bytes.Equal(b, want[1<<20-1:][:3]) {
		t.Fatal("unaligned batch read differs")
	}
	tail := make([]byte, 100)
	if n, err := c.ReadAt(tail, testSize-40); n != 40 || err != io.EOF {
		t.Fatalf("ReadAt past the end: %d, %v", n, err)
	}
	if err := c.Read(context.Background(), tail, testSize-40); err == nil {
		t.Fatal("Read past the end succeeded")
	}

	// base:allocation: whatever qemu reports as zero must read as zero, and
	// every nonzero byte must lie in an extent that is not a hole.
	for _, e := range allExtents(t, c, client.ContextAllocation) {
		seg := want[e.Off:e.End()]
		if e.Flags&client.StateZero != 0 && !isZero(seg) {
			t.Fatalf("extent %+v reported zero holds data", e)
		}
		if e.Flags&client.StateHole != 0 && !isZero(seg) {
			t.Fatalf("extent %+v reported a hole holds data", e)
		}
	}

	// The dirty bitmap names exactly what was written after it was added.
	var dirty []client.Extent
	for _, e := range allExtents(t, c, client.DirtyBitmapContext("s0")) {
		if e.Flags&client.StateDirty != 0 {
			dirty = append(dirty, client.Extent{Off: e.Off, Len: e.Len, Flags: e.Flags})
		}
	}
	wantDirty := []client.Extent{{Off: 0, Len: 64 << 10, Flags: 1}, {Off: 2052 << 10, Len: 4 << 10, Flags: 1}, {Off: 6208 << 10, Len: 8 << 10, Flags: 1}}
	if !slices.Equal(dirty, wantDirty) {
		t.Fatalf("dirty extents %+v, want %+v", dirty, wantDirty)
	}

	// One BLOCK_STATUS answers every context; extents are clipped to the range.
	st2, err := c.BlockStatus(context.Background(), 2048<<10, 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	if len(st2) != 2 {
		t.Fatalf("block status contexts %v", st2)
	}
	for name, ext := range st2 {
		if ext[0].Off != 2048<<10 || ext[len(ext)-1].End() > 2064<<10 {
			t.Fatalf("%s: %+v not within the range asked", name, ext)
		}
	}
	if err := c.Extents(context.Background(), client.DirtyBitmapContext("absent"), 0, 4096, func(client.Extent) error { return nil }); err == nil {
		t.Fatal("Extents of a context the server did not select succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Read(context.Background(), got[:10], 0); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

func isZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

func TestQemuNBDTCPAndList(t *testing.T) {
	img, want := testImage(t)
	port := freeTCP(t)
	serve(t, "tcp", "127.0.0.1:"+port, "qemu-nbd", "-r", "-t", "-e", "8", "-f", "qcow2", "-x", "r0@s1", "-b", "127.0.0.1", "-p", port, "-B", "s0", img)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	exports, err := client.List(ctx, "tcp", "127.0.0.1:"+port, nil)
	if err != nil || len(exports) != 1 || exports[0].Name != "r0@s1" {
		t.Fatalf("List: %+v, %v", exports, err)
	}
	ctxs, err := client.ListMetaContexts(ctx, "tcp", "127.0.0.1:"+port, nil, "r0@s1")
	if err != nil || !slices.Contains(ctxs, "base:allocation") || !slices.Contains(ctxs, "qemu:dirty-bitmap:s0") {
		t.Fatalf("ListMetaContexts: %q, %v", ctxs, err)
	}

	c, err := client.DialURI(ctx, "nbd://127.0.0.1:"+port+"/r0@s1", client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, 1<<20)
	if _, err := c.ReadAt(got, 6<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[6<<20:7<<20]) {
		t.Fatal("read over TCP differs")
	}
	if _, err := c.BlockStatus(ctx, 0, 4096); err == nil {
		t.Fatal("block status without negotiated contexts succeeded")
	}

	// An export the server does not have: the server's refusal, by name.
	_, err = client.DialURI(ctx, "nbd://127.0.0.1:"+port+"/nope", client.Options{})
	var oe *client.OptionError
	if !errors.As(err, &oe) || oe.Option != 7 {
		t.Fatalf("unknown export: %v", err)
	}
	t.Logf("unknown export: %v", err)
}

// Simple replies only (no NBD_OPT_STRUCTURED_REPLY): reads still work.
func TestSimpleReplies(t *testing.T) {
	img, want := testImage(t)
	sock := qemuNBD(t, img, "qcow2", "x")
	c := dialUnix(t, sock, "x", client.Options{NoStructuredReplies: true})
	if c.Structured() {
		t.Fatal("structured replies negotiated although not asked for")
	}
	got := make([]byte, testSize)
	if err := c.Read(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read with simple replies differs")
	}
	if st := c.Stats(); st.DataBytes != testSize || st.HoleBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	if _, err := client.Dial(context.Background(), "unix", sock, client.Options{Export: "x", NoStructuredReplies: true,
		MetaContexts: []string{client.ContextAllocation}}); err == nil {
		t.Fatal("meta contexts without structured replies accepted")
	}
}

func TestNbdkit(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "kit.sock")
	// Sparse data: bytes 1 2 3 at 1 MiB and 9 at 5 MiB, zeroes elsewhere.
	serve(t, "unix", sock, "nbdkit", "-f", "-r", "-U", sock, "data", "data=@1048576 1 2 3 @5242880 9", "size=8M")
	c := dialUnix(t, sock, "", client.Options{MetaContexts: []string{client.ContextAllocation}})
	if c.Size() != 8<<20 {
		t.Fatalf("size %d", c.Size())
	}
	got := make([]byte, c.Size())
	if err := c.Read(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8<<20)
	want[1<<20], want[1<<20+1], want[1<<20+2], want[5<<20] = 1, 2, 3, 9
	if !bytes.Equal(got, want) {
		t.Fatal("nbdkit data read differs")
	}
	data := int64(0)
	for _, e := range allExtents(t, c, client.ContextAllocation) {
		if e.Flags&client.StateZero == 0 {
			data += e.Len
		} else if !isZero(want[e.Off:e.End()]) {
			t.Fatalf("extent %+v reported zero holds data", e)
		}
	}
	if data == 0 || data > 1<<20 {
		t.Fatalf("nbdkit reported %d bytes of data for 4 nonzero bytes", data)
	}

	// Errors the server reports fail the request, not the connection.
	sock2 := filepath.Join(dir, "err.sock")
	serve(t, "unix", sock2, "nbdkit", "-f", "-U", sock2, "--filter=error", "memory", "1M",
		"error-pread=EIO", "error-pread-rate=100%")
	e := dialUnix(t, sock2, "", client.Options{MetaContexts: []string{client.ContextAllocation}})
	err := e.Read(context.Background(), make([]byte, 4096), 0)
	var ne *client.Error
	if !errors.As(err, &ne) || ne.Errno != 5 || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read through the error filter: %v", err)
	}
	t.Logf("server error: %v", err)
	if _, err := e.BlockStatus(context.Background(), 0, 4096); err != nil {
		t.Fatalf("connection unusable after a server error: %v", err)
	}
}

func TestContextCancel(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "slow.sock")
	// Every read takes 5 s: the call must return when its context ends.
	serve(t, "unix", sock, "nbdkit", "-f", "-U", sock, "--filter=delay", "memory", "1M", "rdelay=5")
	c := dialUnix(t, sock, "", client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Read(ctx, make([]byte, 4096), 0)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("read with a 200ms deadline: %v after %v", err, time.Since(start))
	}
	// The reply is still owed: the stream cannot be trusted any more.
	if err := c.Read(context.Background(), make([]byte, 1), 0); err == nil {
		t.Fatal("connection usable after an interrupted reply")
	}
}
