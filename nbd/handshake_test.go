package nbd_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

const fixedNoZeroes = nbd.FlagCFixedNewstyle | nbd.FlagCNoZeroes

func twoExports() *nbd.Server {
	return &nbd.Server{Exports: []nbd.Export{
		{Name: "disk0", Description: "first disk", Device: newMem(1 << 20)},
		{Name: "ro", Description: "read-only", Device: plainDevice{newMem(64 << 10)}, ReadOnly: true},
	}}
}

// expectClosed fails unless the server closes c without sending more.
func expectClosed(t *testing.T, c net.Conn, r io.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if r == nil {
		r = c
	}
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		t.Fatalf("want clean close, got %v after %d bytes", err, n)
	}
	if n != 0 {
		t.Fatalf("server sent %d more bytes before closing", n)
	}
}

func negotiate(t *testing.T, addr string, flags uint32) *nbdtest.Negotiation {
	t.Helper()
	n, err := nbdtest.Negotiate(rawDial(t, addr), flags)
	if err != nil {
		t.Fatal(err)
	}
	if want := nbd.FlagFixedNewstyle | nbd.FlagNoZeroes; n.HandshakeFlags != want {
		t.Fatalf("handshake flags %#x, want %#x", n.HandshakeFlags, want)
	}
	return n
}

func TestOptList(t *testing.T) {
	addr := serve(t, twoExports())
	n := negotiate(t, addr, fixedNoZeroes)
	rs, err := n.Option(nbd.OptList, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		if r.Type != nbd.RepServer {
			t.Fatalf("reply type %d, want NBD_REP_SERVER", r.Type)
		}
		l := binary.BigEndian.Uint32(r.Data)
		got = append(got, string(r.Data[4:4+l])+"|"+string(r.Data[4+l:]))
	}
	want := []string{"disk0|first disk", "ro|read-only"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("list = %q, want %q", got, want)
	}
	// LIST with data is invalid, and the stream stays usable.
	if _, err := n.Option(nbd.OptList, []byte("x")); optErr(err) != nbd.RepErrInvalid {
		t.Fatalf("LIST with data: %v", err)
	}
	if _, err := n.Go("disk0"); err != nil {
		t.Fatal(err)
	}
}

func optErr(err error) uint32 {
	var oe *nbdtest.OptionError
	if errors.As(err, &oe) {
		return oe.Type
	}
	return 0
}

func TestOptInfo(t *testing.T) {
	srv := twoExports()
	srv.Exports[0].Device = plainDevice{newMem(1 << 20)}
	srv.Exports = append(srv.Exports, nbd.Export{Name: "trim", Device: newMem(8192)})
	addr := serve(t, srv)
	n := negotiate(t, addr, fixedNoZeroes)

	base := nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagCanMultiConn | nbd.FlagSendCache
	for _, tc := range []struct {
		name      string
		infos     []uint16
		wantSize  int64
		wantFlags uint16
		wantName  string
		wantDesc  string
	}{
		{"disk0", []uint16{nbd.InfoName, nbd.InfoDescription, nbd.InfoBlockSize}, 1 << 20,
			base | nbd.FlagSendWriteZeroes | nbd.FlagSendFastZero, "disk0", "first disk"},
		{"disk0", nil, 1 << 20, base | nbd.FlagSendWriteZeroes | nbd.FlagSendFastZero, "", ""},
		{"ro", []uint16{nbd.InfoDescription, 999}, 64 << 10, base | nbd.FlagReadOnly, "", "read-only"},
		{"trim", []uint16{nbd.InfoName}, 8192,
			base | nbd.FlagSendWriteZeroes | nbd.FlagSendFastZero | nbd.FlagSendTrim, "trim", ""},
		{"", []uint16{nbd.InfoName}, 1 << 20, base | nbd.FlagSendWriteZeroes | nbd.FlagSendFastZero, "disk0", ""},
	} {
		info, err := n.Info(nbd.OptInfo, tc.name, tc.infos...)
		if err != nil {
			t.Fatalf("INFO %q: %v", tc.name, err)
		}
		if info.Size != tc.wantSize || info.Flags != tc.wantFlags || info.Name != tc.wantName || info.Description != tc.wantDesc {
			t.Errorf("INFO %q = size %d flags %#x name %q desc %q; want %d %#x %q %q", tc.name,
				info.Size, info.Flags, info.Name, info.Description, tc.wantSize, tc.wantFlags, tc.wantName, tc.wantDesc)
		}
		if info.MinBlock != 1 || info.PrefBlock != 4096 || info.MaxBlock != 32<<20 {
			t.Errorf("INFO %q block sizes %d/%d/%d", tc.name, info.MinBlock, info.PrefBlock, info.MaxBlock)
		}
	}

	// Errors keep the stream in sync.
	if _, err := n.Info(nbd.OptInfo, "nope"); optErr(err) != nbd.RepErrUnknown {
		t.Fatalf("INFO unknown export: %v", err)
	}
	if _, err := n.Info(nbd.OptGo, "nope"); optErr(err) != nbd.RepErrUnknown {
		t.Fatalf("GO unknown export: %v", err)
	}
	bad := [][]byte{
		{0, 0, 0},                         // too short
		{0, 0, 0, 9, 'a', 'b', 0, 0},      // name longer than data
		{0, 0, 0, 1, 'a', 0, 2, 0, 1},     // 2 requests announced, 1 sent
		{0, 0, 0, 1, 'a', 0, 0, 0, 1, 77}, // trailing garbage
	}
	for _, d := range bad {
		if _, err := n.Option(nbd.OptInfo, d); optErr(err) != nbd.RepErrInvalid {
			t.Fatalf("INFO %x: %v, want NBD_REP_ERR_INVALID", d, err)
		}
	}
	c, err := n.Go("disk0", nbd.InfoBlockSize)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Write([]byte("hello"), 0, false); err != nil {
		t.Fatal(err)
	}
}

func TestUnsupportedOptions(t *testing.T) {
	addr := serve(t, twoExports())
	n := negotiate(t, addr, fixedNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{nbd.OptExtendedHeaders, nil},
		{nbd.OptPeekExport, nil},
		{0xdead, bytes.Repeat([]byte{0xaa}, 5000)},
	} {
		if _, err := n.Option(o.opt, o.data); optErr(err) != nbd.RepErrUnsup {
			t.Fatalf("option %d: %v, want NBD_REP_ERR_UNSUP", o.opt, err)
		}
	}
	c, err := n.Go("disk0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestOptAbort(t *testing.T) {
	addr := serve(t, twoExports())
	n := negotiate(t, addr, fixedNoZeroes)
	if _, err := n.Option(nbd.OptAbort, nil); err != nil {
		t.Fatalf("ABORT: %v", err)
	}
	expectClosed(t, n.Conn, nil)
}

func TestExportName(t *testing.T) {
	addr := serve(t, twoExports())
	for _, noZeroes := range []bool{false, true} {
		flags := nbd.FlagCFixedNewstyle
		if noZeroes {
			flags |= nbd.FlagCNoZeroes
		}
		n := negotiate(t, addr, flags)
		// ExportName checks the 124 zero bytes are (not) there; a mismatch
		// would garble the reply below.
		c, err := n.ExportName("disk0", noZeroes)
		if err != nil {
			t.Fatalf("noZeroes=%v: %v", noZeroes, err)
		}
		if c.Size != 1<<20 {
			t.Fatalf("size %d", c.Size)
		}
		p := pattern(4096, 3)
		if err := c.Write(p, 8192, true); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		if err := c.Read(got, 8192); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("read back: %v", err)
		}
		if err := c.Disc(); err != nil {
			t.Fatal(err)
		}
	}

	// Default export: "" is the first export.
	n := negotiate(t, addr, fixedNoZeroes)
	c, err := n.ExportName("", true)
	if err != nil || c.Size != 1<<20 {
		t.Fatalf("default export: %v size %d", err, c.Size)
	}
	c.Close()

	// Unknown export: the server can only close.
	n = negotiate(t, addr, fixedNoZeroes)
	if err := n.SendOption(nbd.OptExportName, []byte("nope")); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, n.Conn, nil)
}

func TestNamedDefaultExport(t *testing.T) {
	srv := twoExports()
	srv.Exports = append(srv.Exports, nbd.Export{Name: "", Device: newMem(4096)})
	addr := serve(t, srv)
	c := dial(t, addr, "")
	if c.Size != 4096 {
		t.Fatalf("export \"\" has size %d, want the export named \"\"", c.Size)
	}
}

func TestNonFixedNewstyle(t *testing.T) {
	addr := serve(t, twoExports())
	// EXPORT_NAME works without fixed newstyle.
	n := negotiate(t, addr, 0)
	c, err := n.ExportName("disk0", false)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Any other option closes: the client would not understand a reply.
	n = negotiate(t, addr, 0)
	if err := n.SendOption(nbd.OptList, nil); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, n.Conn, nil)
}

func TestHandshakeClosesConnection(t *testing.T) {
	addr := serve(t, twoExports())
	t.Run("unknown client flag", func(t *testing.T) {
		n := negotiate(t, addr, nbd.FlagCFixedNewstyle|1<<5)
		expectClosed(t, n.Conn, nil)
	})
	t.Run("bad option magic", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		n.Conn.Write(bytes.Repeat([]byte{1}, 16))
		expectClosed(t, n.Conn, nil)
	})
	t.Run("option too long", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		var h [16]byte
		binary.BigEndian.PutUint64(h[0:], nbd.MagicOption)
		binary.BigEndian.PutUint32(h[8:], nbd.OptInfo)
		binary.BigEndian.PutUint32(h[12:], 1<<30)
		n.Conn.Write(h[:])
		expectClosed(t, n.Conn, nil)
	})
	t.Run("truncated option", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		var h [16]byte
		binary.BigEndian.PutUint64(h[0:], nbd.MagicOption)
		binary.BigEndian.PutUint32(h[8:], nbd.OptInfo)
		binary.BigEndian.PutUint32(h[12:], 100)
		n.Conn.Write(h[:10])
		n.Conn.(*net.TCPConn).CloseWrite()
		expectClosed(t, n.Conn, nil)
	})
}

func TestHandshakeTimeout(t *testing.T) {
	srv := twoExports()
	srv.HandshakeTimeout = 100 * time.Millisecond
	addr := serve(t, srv)
	n := negotiate(t, addr, fixedNoZeroes)
	start := time.Now()
	expectClosed(t, n.Conn, nil)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed after %v", d)
	}
	// The timeout does not apply once transmission started.
	c := dial(t, addr, "disk0")
	time.Sleep(300 * time.Millisecond)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A client's export name goes into refusals and log lines cut to a short
// prefix: a 64 KiB name (the most an option carries) of bytes that quote
// as \xff each gets a short NBD_REP_ERR_UNKNOWN from INFO and GO (and a
// 4096-byte one from SET_META_CONTEXT), and NBD_OPT_EXPORT_NAME, which has
// no error reply, a short log line (it was 320 KiB per connection).
func TestLongUnknownExportName(t *testing.T) {
	var logs logBuffer
	srv := twoExports()
	srv.Logger = logs.logger()
	addr := serve(t, srv)
	long := strings.Repeat("\xff", 64<<10-6) // with its length and info count: 64 KiB
	const maxMessage, maxLine = 512, 1024
	refused := func(what string, err error) {
		t.Helper()
		var oe *nbdtest.OptionError
		if !errors.As(err, &oe) || oe.Type != nbd.RepErrUnknown {
			t.Fatalf("%s: %v, want NBD_REP_ERR_UNKNOWN", what, err)
		}
		t.Logf("%s: a refusal of %d bytes", what, len(oe.Message))
		if len(oe.Message) > maxMessage || !utf8.ValidString(oe.Message) || !strings.HasPrefix(oe.Message, `unknown export "\xff`) {
			t.Errorf("%s: refusal of %d bytes (%.80q…), want a valid UTF-8 message of at most %d", what, len(oe.Message), oe.Message, maxMessage)
		}
	}
	n := negotiate(t, addr, fixedNoZeroes)
	for _, opt := range []uint32{nbd.OptInfo, nbd.OptGo} {
		_, err := n.Info(opt, long)
		refused(fmt.Sprintf("option %d", opt), err)
	}
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	_, err := n.SetMetaContext(long[:nbd.MaxString], nbd.ContextBaseAllocation)
	refused("SET_META_CONTEXT", err)
	if _, err := n.Go("disk0"); err != nil {
		t.Fatalf("GO after the refusals: %v", err)
	}

	x := negotiate(t, addr, fixedNoZeroes)
	if err := x.SendOption(nbd.OptExportName, []byte(long)); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, x.Conn, x.Reader())
	waitFor(t, "the log line of the refused export name", 5*time.Second, func() bool {
		return strings.Contains(logs.String(), "unknown export")
	})
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "unknown export") {
			t.Logf("EXPORT_NAME: a log line of %d bytes", len(l))
		}
		if len(l) > maxLine {
			t.Errorf("a log line of %d bytes (%.120s…), want at most %d", len(l), l, maxLine)
		}
	}
}
