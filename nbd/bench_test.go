package nbd_test

import (
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// benchmarkQD32 sends batches of 32 requests over a unix socket and reads the
// 32 replies, with a client that allocates nothing, so allocs/op are the
// server's (per batch of 32). With structured, replies to reads are one
// OFFSET_DATA chunk each (no Allocator: no holes).
func benchmarkQD32(b *testing.B, typ uint16, size int, structured bool) {
	run := qd32Client(b, typ, size, structured)
	b.SetBytes(int64(32 * size))
	b.ReportAllocs()
	b.ResetTimer()
	run(b.N)
}

// qd32Client serves a 64 MiB memory export over a unix socket and returns
// a function that sends n batches of 32 requests, reading the replies of
// each before the next (benchmarkQD32).
func qd32Client(b testing.TB, typ uint16, size int, structured bool) (run func(n int)) {
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
	if structured {
		if err := n.StructuredReply(); err != nil {
			b.Fatal(err)
		}
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
		if structured {
			replyLen = qd * (nbd.ChunkHeaderSize + 8 + size)
		}
	}
	raw, rd := n.Conn, n.Reader()
	replies := make([]byte, replyLen)
	return func(n int) {
		for range n {
			if _, err := raw.Write(batch); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(rd, replies); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkWrite4kQD32(b *testing.B)           { benchmarkQD32(b, nbd.CmdWrite, 4096, false) }
func BenchmarkRead4kQD32(b *testing.B)            { benchmarkQD32(b, nbd.CmdRead, 4096, false) }
func BenchmarkRead4kQD32Structured(b *testing.B)  { benchmarkQD32(b, nbd.CmdRead, 4096, true) }
func BenchmarkRead32kQD32(b *testing.B)           { benchmarkQD32(b, nbd.CmdRead, 32<<10, false) }
func BenchmarkRead64kQD32(b *testing.B)           { benchmarkQD32(b, nbd.CmdRead, 64<<10, false) }
func BenchmarkRead64kQD32Structured(b *testing.B) { benchmarkQD32(b, nbd.CmdRead, 64<<10, true) }

// benchmarkStructuredRead reads size bytes at a time, qd requests in
// flight, with structured replies, from dev over a unix socket; it reads
// the chunks and skips their payloads. It reports the bytes sent as data
// per read (holes go as 12-byte chunks).
func benchmarkStructuredRead(b *testing.B, dev nbd.Device, size, qd int) {
	srv := &nbd.Server{Exports: []nbd.Export{{Device: dev, ReadOnly: true}}}
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
	if err := n.StructuredReply(); err != nil {
		b.Fatal(err)
	}
	if _, err := n.Info(nbd.OptGo, ""); err != nil {
		b.Fatal(err)
	}
	span := dev.Size() / int64(size) * int64(size)
	var batch []byte
	for i := range qd {
		var h [nbd.RequestSize]byte
		binary.BigEndian.PutUint32(h[0:], nbd.MagicRequest)
		binary.BigEndian.PutUint16(h[6:], nbd.CmdRead)
		binary.BigEndian.PutUint64(h[8:], uint64(1000+i))
		binary.BigEndian.PutUint64(h[16:], uint64(int64(i*size*7)%span))
		binary.BigEndian.PutUint32(h[24:], uint32(size))
		batch = append(batch, h[:]...)
	}
	raw, rd := n.Conn, n.Reader()
	var data int64
	var h [nbd.ChunkHeaderSize]byte
	b.SetBytes(int64(qd * size))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := raw.Write(batch); err != nil {
			b.Fatal(err)
		}
		for done := 0; done < qd; {
			if _, err := io.ReadFull(rd, h[:]); err != nil {
				b.Fatal(err)
			}
			l := int(binary.BigEndian.Uint32(h[16:]))
			if binary.BigEndian.Uint16(h[6:]) == nbd.ReplyTypeOffsetData {
				data += int64(l - 8)
			}
			if _, err := rd.Discard(l); err != nil {
				b.Fatal(err)
			}
			if binary.BigEndian.Uint16(h[4:])&nbd.ReplyFlagDone != 0 {
				done++
			}
		}
	}
	b.ReportMetric(float64(data)/float64(b.N*qd), "data-B/read")
}

// noAlloc hides a device's Allocator.
type noAlloc struct{ nbd.Device }

// Structured reads from a file: without an Allocator (one data chunk),
// with FileAllocation over a file that is all data (the cost of asking),
// and over a file that is half holes (what asking saves).
func BenchmarkStructuredRead(b *testing.B) {
	const size = 64 << 20
	var half []span
	for off := int64(0); off < size; off += 256 << 10 {
		half = append(half, span{off, 128 << 10})
	}
	full := openFileDevice(b, sparseFile(b, size, []span{{0, size}}))
	sparse := openFileDevice(b, sparseFile(b, size, half))
	b.Run("file-256k-qd8-noalloc", func(b *testing.B) { benchmarkStructuredRead(b, noAlloc{full}, 256<<10, 8) })
	b.Run("file-256k-qd8-alloc-data", func(b *testing.B) { benchmarkStructuredRead(b, full, 256<<10, 8) })
	b.Run("file-256k-qd8-alloc-halfholes", func(b *testing.B) { benchmarkStructuredRead(b, sparse, 256<<10, 8) })
	b.Run("file-256k-qd8-noalloc-halfholes", func(b *testing.B) { benchmarkStructuredRead(b, noAlloc{sparse}, 256<<10, 8) })
}

// TestReadRepliesReuseBuffers: replies to reads of every size up to 256 KiB,
// 32 in flight, allocate a small fraction of the data they carry. Reply
// data that is copied into the pending batch must fit the buffer the
// connection keeps; when it did not (64 KiB reads were copied, 2 MiB a
// batch), each batch was a fresh allocation: 3.4 bytes per data byte, and
// a fifth of nbdkit's IOPS on 64 KiB random reads. Now about 0.01 (0.25
// under the race detector, whose sync.Pool drops a quarter of what is put).
func TestReadRepliesReuseBuffers(t *testing.T) {
	for _, size := range []int{4 << 10, 16 << 10, 32 << 10, 64 << 10, 256 << 10} {
		run := qd32Client(t, nbd.CmdRead, size, false)
		run(4) // warm the pools and the kept batch
		batches := (32 << 20) / (32 * size)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		run(batches)
		runtime.ReadMemStats(&after)
		data := int64(batches) * 32 * int64(size)
		if got := int64(after.TotalAlloc - before.TotalAlloc); got > data/2 {
			t.Errorf("%d-byte reads, 32 in flight: %d bytes allocated for %d data bytes (want at most half)", size, got, data)
		}
	}
}
