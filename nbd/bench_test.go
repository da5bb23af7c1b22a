package nbd_test

import (
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// benchmarkQD32 sends batches of 32 requests over a unix socket and reads the
// 32 replies, with a client that allocates nothing, so allocs/op are the
// server's (per batch of 32).
func benchmarkQD32(b *testing.B, typ uint16, size int) {
	dev := newMem(64 << 20)
	srv := &nbd.Server{Exports: []nbd.Export{{Device: dev}}}
	sock := filepath.Join(b.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(b.Context(), l)
	b.Cleanup(func() { srv.Shutdown(b.Context()) })
	nc, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	n, err := nbdtest.Negotiate(nc, nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := n.Info(nbd.OptGo, ""); err != nil {
		b.Fatal(err)
	}
	const qd = 32
	var batch []byte
	for i := range qd {
		var h [nbd.RequestSize]byte
		binary.BigEndian.PutUint32(h[0:], nbd.MagicRequest)
		binary.BigEndian.PutUint16(h[6:], typ)
		binary.BigEndian.PutUint64(h[8:], uint64(1000+i))
		binary.BigEndian.PutUint64(h[16:], uint64(i*size*7%(60<<20)))
		binary.BigEndian.PutUint32(h[24:], uint32(size))
		batch = append(batch, h[:]...)
		if typ == nbd.CmdWrite {
			batch = append(batch, make([]byte, size)...)
		}
	}
	replyLen := qd * nbd.SimpleReplySize
	if typ == nbd.CmdRead {
		replyLen += qd * size
	}
	raw, rd := n.Conn, n.Reader()
	replies := make([]byte, replyLen)
	b.SetBytes(int64(qd * size))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := raw.Write(batch); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(rd, replies); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWrite4kQD32(b *testing.B) { benchmarkQD32(b, nbd.CmdWrite, 4096) }
func BenchmarkRead4kQD32(b *testing.B)  { benchmarkQD32(b, nbd.CmdRead, 4096) }
