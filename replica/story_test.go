package replica

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// Story 1 and 2: protocol C, three nodes, concurrent random writes from
// several goroutines, some into private regions (checked on every peer as
// soon as they are acknowledged) and some into one shared region
// (overlapping writes must end identical everywhere).
func TestProtocolCThreeNodes(t *testing.T) {
	c := newCluster(t, 3, nil)
	prim := c.bootstrap()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const region = 2 << 20
	counts := make([]int, 6)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo := int64(g) * region
			hi := lo + region
			var check func(off int64, data []byte)
			if g < 4 {
				// Private region: what was acked must be on every peer now.
				check = func(off int64, data []byte) {
					for _, tn := range c.nodes[1:] {
						if got := readFileAt(t, tn.path, off, len(data)); !bytes.Equal(got, data) {
							t.Errorf("acknowledged write %d+%d missing on %s", off, len(data), tn.cfg.Self.Name)
						}
					}
				}
			} else {
				lo, hi = 12<<20, 13<<20 // shared by goroutines 4 and 5: overlapping
			}
			counts[g] = writer(t, prim, c.seed+uint64(g), lo, hi, stop, check)
		}()
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("writes per goroutine: %v", counts)
	if err := prim.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(5 * time.Second)
	c.assertEqualStores()
}
