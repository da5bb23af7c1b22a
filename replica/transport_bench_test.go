package replica

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
	"github.com/repd/repd/replica/internal/dedup"
	"github.com/repd/repd/replica/internal/journal"
)

// BenchmarkWrite4kQD32Transport: 4 KiB writes at queue depth 32 of data
// that never repeats (random), through a primary with one peer:
// protocol C with and without dedup, protocol A with each codec. It
// reports the wire bytes per logical byte toward the peer.
//
//	go test -run='^$' -bench=Write4kQD32Transport ./replica/
func BenchmarkWrite4kQD32Transport(b *testing.B) {
	for _, v := range []struct {
		name   string
		proto  api.Protocol
		codec  protocol.Codec
		dedup  int64
		repeat bool // each writer rewrites one block (the dedup case)
	}{
		{"C-none", api.ProtocolC, protocol.CodecNone, 0, false},
		{"C-none-dedup", api.ProtocolC, protocol.CodecNone, 64 << 20, false},
		{"C-none-dedup-repeat", api.ProtocolC, protocol.CodecNone, 64 << 20, true},
		{"A-none", api.ProtocolA, protocol.CodecNone, 0, false},
		{"A-s2", api.ProtocolA, protocol.CodecS2, 0, false},
		{"A-zstd", api.ProtocolA, protocol.CodecZstd, 0, false},
		{"A-zstd-dedup", api.ProtocolA, protocol.CodecZstd, 64 << 20, false},
	} {
		b.Run(v.name, func(b *testing.B) {
			directLinks = true
			defer func() { directLinks = false }()
			c := newCluster(b, 2, func(i int, cfg *Config) {
				cfg.Protocol, cfg.Compression, cfg.DedupIndexBytes, cfg.Timeout = v.proto, v.codec, v.dedup, 5e9
			})
			prim := c.bootstrap()
			const qd = 32
			// 8 MiB of random blocks per writer would cost too much
			// memory; a counter in the first bytes makes every write
			// unique instead.
			var next atomic.Int64
			var wg sync.WaitGroup
			before := peerState(prim, "beta")
			b.SetBytes(4096)
			b.ResetTimer()
			for g := range qd {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(g), 3))
					buf := randBlock(r, 4096)
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						if !v.repeat {
							for k := range 8 {
								buf[k] = byte(i >> (8 * k))
							}
							buf[8] = byte(g)
						}
						if err := prim.WriteAt(context.Background(), buf, r.Int64N(testSize/4096)*4096, false); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if err := prim.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			after := peerState(prim, "beta")
			if l := after.LogicalBytes - before.LogicalBytes; l > 0 {
				b.ReportMetric(float64(after.BytesSent-before.BytesSent)/float64(l), "wire/logical")
			}
		})
	}
}

// The shipper's cost of dedup per unique 4 KiB write: zero check, BLAKE3,
// index lookup, invalidation and insertion.
func BenchmarkDedupEncode4k(b *testing.B) {
	tx := dedup.NewEncoder(64 << 20)
	r := rand.New(rand.NewPCG(1, 2))
	e := &journal.Entry{N: 4096, Data: randBlock(r, 4096)}
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := range b.N {
		e.Data[0], e.Data[1], e.Data[2] = byte(i), byte(i>>8), byte(i>>16)
		e.Off = r.Int64N(1<<30/4096) * 4096
		tx.Encode(e.Off, e.Data, nil)
	}
}
