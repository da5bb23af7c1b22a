package nbd_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// session builds a client byte stream.
type session []byte

func (s session) flags(f uint32) session { return binary.BigEndian.AppendUint32(s, f) }

func (s session) option(opt uint32, data []byte) session {
	s = binary.BigEndian.AppendUint64(s, nbd.MagicOption)
	s = binary.BigEndian.AppendUint32(s, opt)
	s = binary.BigEndian.AppendUint32(s, uint32(len(data)))
	return append(s, data...)
}

func (s session) request(typ, flags uint16, off uint64, n uint32, payload []byte) session {
	s = binary.BigEndian.AppendUint32(s, nbd.MagicRequest)
	s = binary.BigEndian.AppendUint16(s, flags)
	s = binary.BigEndian.AppendUint16(s, typ)
	s = binary.BigEndian.AppendUint64(s, uint64(len(s))) // any distinct cookie
	s = binary.BigEndian.AppendUint64(s, off)
	s = binary.BigEndian.AppendUint32(s, n)
	return append(s, payload...)
}

// seedSessions are valid sessions: handshake, reads, writes, disconnect.
func seedSessions() [][]byte {
	fz := nbd.FlagCFixedNewstyle | nbd.FlagCNoZeroes
	block := pattern(4096, 5)
	return [][]byte{
		session(nil).flags(fz).
			option(nbd.OptGo, nbdtest.InfoData("", nbd.InfoBlockSize)).
			request(nbd.CmdWrite, 0, 0, 4096, block).
			request(nbd.CmdRead, 0, 0, 4096, nil).
			request(nbd.CmdWrite, nbd.CmdFlagFUA, 8192, 512, block[:512]).
			request(nbd.CmdFlush, 0, 0, 0, nil).
			request(nbd.CmdDisc, 0, 0, 0, nil),
		session(nil).flags(nbd.FlagCFixedNewstyle).
			option(nbd.OptExportName, nil).
			request(nbd.CmdWrite, 0, 4096, 100, block[:100]).
			request(nbd.CmdRead, 0, 4000, 200, nil).
			request(nbd.CmdWriteZeroes, nbd.CmdFlagNoHole, 0, 8192, nil).
			request(nbd.CmdTrim, 0, 0, 4096, nil).
			request(nbd.CmdCache, 0, 0, 65536, nil).
			request(nbd.CmdDisc, 0, 0, 0, nil),
		session(nil).flags(fz).
			option(nbd.OptList, nil).
			option(nbd.OptInfo, nbdtest.InfoData("ro", nbd.InfoName, nbd.InfoDescription, nbd.InfoBlockSize)).
			option(nbd.OptStructuredReply, nil).
			option(nbd.OptGo, nbdtest.InfoData("ro")).
			request(nbd.CmdWrite, 0, 0, 512, block[:512]).
			request(nbd.CmdTrim, 0, 0, 512, nil).
			request(nbd.CmdRead, 0, 0, 8192, nil).
			request(nbd.CmdDisc, 0, 0, 0, nil),
		session(nil).flags(fz).
			option(nbd.OptGo, nbdtest.InfoData("")).
			request(99, 0, 0, 0, nil).
			request(nbd.CmdRead, 0, 1<<40, 512, nil).
			request(nbd.CmdWrite, 1<<7, 0, 16, block[:16]).
			request(nbd.CmdWriteZeroes, nbd.CmdFlagFastZero, 0, 512, nil).
			request(nbd.CmdRead, 0, 0, 0, nil).
			request(nbd.CmdDisc, 0, 0, 0, nil),
		session(nil).flags(fz).option(nbd.OptAbort, nil),
		// STARTTLS: with data (INVALID), then options before TLS (answered
		// under allow, TLS_REQD under require), then EXPORT_NAME (which
		// ends a require session).
		session(nil).flags(fz).
			option(nbd.OptStartTLS, []byte("x")).
			option(nbd.OptList, nil).
			option(nbd.OptInfo, nbdtest.InfoData("")).
			option(nbd.OptExportName, nil).
			request(nbd.CmdRead, 0, 0, 512, nil).
			request(nbd.CmdDisc, 0, 0, 0, nil),
		// STARTTLS and a real TLS 1.3 ClientHello: the server answers and
		// waits for the rest of the handshake, which never comes.
		append(session(nil).flags(fz).option(nbd.OptStartTLS, nil), clientHello()...),
		// STARTTLS with plain text behind it before the handshake.
		session(nil).flags(fz).option(nbd.OptStartTLS, nil).option(nbd.OptGo, nbdtest.InfoData("")),
		// Structured replies and metadata contexts on the snapshot export:
		// listing, selecting, then reads (with holes, DF) and block status.
		session(nil).flags(fz).
			option(nbd.OptStructuredReply, nil).
			option(nbd.OptListMetaContext, nbdtest.MetaData("r0@snap", "qemu:", "base:")).
			option(nbd.OptListMetaContext, nbdtest.MetaData("r0@snap")).
			option(nbd.OptSetMetaContext, nbdtest.MetaData("r0@snap", "base:allocation", "qemu:dirty-bitmap:snap0", "qemu:dirty-bitmap:snap1")).
			option(nbd.OptGo, nbdtest.InfoData("r0@snap", nbd.InfoBlockSize)).
			request(nbd.CmdRead, 0, 0, 65536, nil).
			request(nbd.CmdRead, nbd.CmdFlagDF, 4096, 8192, nil).
			request(nbd.CmdBlockStatus, 0, 0, 65536, nil).
			request(nbd.CmdBlockStatus, nbd.CmdFlagReqOne, 4096, 1<<20, nil).
			request(nbd.CmdBlockStatus, 0, 1<<40, 512, nil).
			request(nbd.CmdRead, 0, 1<<40, 512, nil).
			request(nbd.CmdWrite, 0, 0, 16, block[:16]).
			request(nbd.CmdDisc, 0, 0, 0, nil),
		// Meta context options out of order and malformed: SET before
		// structured replies, bad lengths, a selection for another export.
		session(nil).flags(fz).
			option(nbd.OptSetMetaContext, nbdtest.MetaData("", "base:allocation")).
			option(nbd.OptStructuredReply, []byte("x")).
			option(nbd.OptStructuredReply, nil).
			option(nbd.OptListMetaContext, []byte{0, 0, 0, 9, 'r'}).
			option(nbd.OptSetMetaContext, []byte{0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, ':'}).
			option(nbd.OptSetMetaContext, nbdtest.MetaData("r0@snap", "base:allocation")).
			option(nbd.OptExtendedHeaders, nil).
			option(nbd.OptGo, nbdtest.InfoData("")).
			request(nbd.CmdBlockStatus, 0, 0, 4096, nil).
			request(nbd.CmdRead, 0, 0, 0, nil).
			request(nbd.CmdFlush, 0, 0, 0, nil).
			request(nbd.CmdDisc, 0, 0, 0, nil),
	}
}

// clientHello is the first flight of a crypto/tls client.
func clientHello() []byte {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}).Handshake()
	buf := make([]byte, 4096)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := b.Read(buf)
	return buf[:n]
}

// FuzzServer feeds arbitrary client bytes to ServeConn, once to a server
// that allows TLS and once to one that requires it, and checks that the
// server neither panics nor hangs: after the input, a graceful Shutdown
// must complete promptly. The exports include a snapshot with holes and
// dirty bitmaps, for structured replies, metadata contexts and block
// status.
func FuzzServer(f *testing.F) {
	for _, s := range seedSessions() {
		f.Add(s)
	}
	p := getPKI(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, mode := range []nbd.TLSMode{nbd.TLSAllow, nbd.TLSRequire} {
			fuzzSession(t, p, mode, data)
		}
	})
}

func fuzzSession(t *testing.T, p *testPKI, mode nbd.TLSMode, data []byte) {
	{
		srv := &nbd.Server{
			MaxPayload:       16 << 10,
			MaxInFlight:      4,
			MaxReplyBacklog:  4 << 10,
			HandshakeTimeout: 5 * time.Second,
			WriteTimeout:     5 * time.Second,
			TLS:              p.serverMutual,
			TLSMode:          mode,
			MaxExtents:       64,
			MaxMetaContexts:  2,
			MaxStatusLength:  256 << 10,
			Exports: []nbd.Export{
				{Name: "", Device: newMem(64 << 10)},
				{Name: "ro", Description: "ro", Device: plainDevice{newMem(8192)}, ReadOnly: true},
				{Name: "r0@snap", Device: fuzzSnap(), ReadOnly: true},
			},
		}
		a, b := net.Pipe()
		defer b.Close()
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(context.Background(), a) }()
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, b)
			close(drained)
		}()
		b.SetWriteDeadline(time.Now().Add(5 * time.Second))
		b.Write(data)

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatalf("TLS %s: Shutdown after input: %v (server hung)", mode, err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("ServeConn did not return")
		}
		b.Close()
		<-drained
	}
}

// TestWriteFuzzSeeds writes the seed sessions as corpus files when
// NBD_WRITE_FUZZ_SEEDS is set (run it after changing seedSessions).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("NBD_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set NBD_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzServer")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzServer")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	names := []string{"session-go-rw", "session-exportname", "session-options-ro", "session-bad-requests", "session-abort",
		"session-starttls-options", "session-starttls-clienthello", "session-starttls-injected",
		"session-structured-status", "session-meta-bad-options"}
	for i, s := range seedSessions() {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, names[i]), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fuzzSnap is a small snapshot device: 1 MiB with data and holes, two
// dirty bitmaps.
func fuzzSnap() *sparseDevice {
	return newSparse(1<<20,
		[]span{{4096, 8192}, {64 << 10, 64 << 10}, {512 << 10, 4096}},
		map[string][]span{
			nbd.DirtyBitmapPrefix + "snap0": {{0, 4096}, {64 << 10, 4096}},
			nbd.DirtyBitmapPrefix + "snap1": {{512 << 10, 4096}},
		})
}
