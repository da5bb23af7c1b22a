package client

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzServer feeds arbitrary server bytes to the handshake and to a READ
// and a BLOCK_STATUS: the client must return (an error or data), never
// panic, hang or allocate what a length field announces.
func FuzzServer(f *testing.F) {
	be16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	be64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	optReply := func(opt, typ uint32, data []byte) []byte {
		b := append(be64(0x3e889045565a9), be32(opt)...)
		b = append(append(b, be32(typ)...), be32(uint32(len(data)))...)
		return append(b, data...)
	}
	var seed []byte
	seed = append(seed, "NBDMAGICIHAVEOPT"...)
	seed = append(seed, be16(3)...)
	seed = append(seed, optReply(8, 1, nil)...)
	seed = append(seed, optReply(10, 4, append(be32(1), "base:allocation"...))...)
	seed = append(seed, optReply(10, 1, nil)...)
	seed = append(seed, optReply(7, 3, append(append(be16(0), be64(1<<20)...), be16(3)...))...)
	seed = append(seed, optReply(7, 1, nil)...)
	handshake := append([]byte(nil), seed...)
	// READ 0+4096 (cookie 1): data then hole; BLOCK_STATUS (cookie 2).
	seed = append(seed, be32(0x668e33ef)...)
	seed = append(seed, append(append(be16(0), be16(1)...), append(be64(1), be32(8+1024)...)...)...)
	seed = append(append(seed, be64(0)...), make([]byte, 1024)...)
	seed = append(seed, be32(0x668e33ef)...)
	seed = append(seed, append(append(be16(1), be16(2)...), append(be64(1), be32(12)...)...)...)
	seed = append(append(seed, be64(1024)...), be32(3072)...)
	seed = append(seed, be32(0x668e33ef)...)
	seed = append(seed, append(append(be16(1), be16(5)...), append(be64(2), be32(12)...)...)...)
	seed = append(append(append(seed, be32(1)...), be32(4096)...), be32(3)...)
	f.Add(seed)
	f.Add(handshake)
	f.Add([]byte("NBDMAGICIHAVEOPT\x00\x03"))
	f.Fuzz(func(t *testing.T, server []byte) {
		a, b := net.Pipe()
		go func() {
			go io.Copy(io.Discard, b)
			b.Write(server)
			b.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := New(ctx, a, Options{MetaContexts: []string{ContextAllocation}})
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		c.Read(ctx, buf, 0)
		c.BlockStatus(ctx, 0, 4096)
	})
}
