package replica

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/repd/repd/api"
)

// 4 KiB random writes at queue depth 32: the store alone, then a primary
// with one peer under protocol C and A.
func BenchmarkWrite4kQD32(b *testing.B) {
	run := func(b *testing.B, dev interface {
		WriteAt(context.Context, []byte, int64, bool) error
	}) {
		const qd = 32
		var next atomic.Int64
		var wg sync.WaitGroup
		b.SetBytes(4096)
		b.ResetTimer()
		for g := range qd {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(g), 3))
				buf := randBlock(r, 4096)
				for next.Add(1) <= int64(b.N) {
					if err := dev.WriteAt(context.Background(), buf, r.Int64N(testSize/4096)*4096, false); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	b.Run("standalone", func(b *testing.B) {
		st, err := OpenFileStore(filepath.Join(b.TempDir(), "s.img"), testSize)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		run(b, st)
	})
	b.Run("node", func(b *testing.B) {
		// A primary without peers: the store plus the write path's own cost.
		c := newCluster(b, 1, nil)
		run(b, c.bootstrap())
	})
	for _, proto := range []api.Protocol{api.ProtocolC, api.ProtocolA} {
		b.Run("protocol"+proto.String(), func(b *testing.B) {
			directLinks = true
			defer func() { directLinks = false }()
			c := newCluster(b, 2, func(i int, cfg *Config) { cfg.Protocol = proto; cfg.Timeout = 5e9 })
			prim := c.bootstrap()
			run(b, prim)
		})
	}
}
