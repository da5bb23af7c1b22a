package replica

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/api"
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

// Story 3: a peer is partitioned mid-run. Writes keep completing (within
// Timeout), the primary's bitmap for the peer covers every write it missed,
// and after healing the peer resyncs only that, ending identical.
func TestPartitionMarksAndResyncs(t *testing.T) {
	c := newCluster(t, 3, nil)
	prim := c.bootstrap()
	gamma := c.nodes[2]
	type rec struct {
		off  int64
		data []byte
	}
	var (
		mu      sync.Mutex
		during  []rec
		parted  bool
		slowest time.Duration
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo := int64(g) * (4 << 20)
			writer(t, prim, c.seed+uint64(g), lo, lo+(4<<20), stop, func(off int64, data []byte) {
				mu.Lock()
				if parted {
					during = append(during, rec{off, data})
				}
				mu.Unlock()
			})
		}()
	}
	// A separate probe measures write latency across the partition.
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if err := prim.WriteAt(context.Background(), buf, 15<<20, false); err != nil {
				t.Errorf("probe write: %v", err)
				return
			}
			mu.Lock()
			slowest = max(slowest, time.Since(start))
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	parted = true
	mu.Unlock()
	c.isolate(2, true)
	waitFor(t, 5*time.Second, "alpha to drop gamma", func() bool {
		return peerState(prim, "gamma").Connection != api.Connected
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if slowest > 2*prim.cfg.Timeout+500*time.Millisecond {
		t.Errorf("a write took %v across the partition (timeout %v)", slowest, prim.cfg.Timeout)
	}
	t.Logf("slowest write %v; %d writes while gamma was cut off", slowest, len(during))
	// Every write gamma lacks is marked in alpha's bitmap for gamma.
	bm := prim.byName["gamma"].bitmap
	missing := 0
	for _, r := range during {
		if bytes.Equal(readFileAt(t, gamma.path, r.off, len(r.data)), r.data) {
			continue
		}
		missing++
		for b := r.off / 4096; b < (r.off+int64(len(r.data)))/4096; b++ {
			if !bm.TestBlock(b) {
				t.Fatalf("block %d written while gamma was away is neither on gamma nor marked", b)
			}
		}
	}
	oos := peerState(prim, "gamma").OutOfSyncKiB
	t.Logf("%d writes missing on gamma, all marked; out of sync %d KiB", missing, oos)
	if oos == 0 || missing == 0 {
		t.Fatalf("expected gamma to miss writes (missing %d, oos %d KiB)", missing, oos)
	}
	c.isolate(2, false)
	c.waitSynced(15 * time.Second)
	ps := peerState(prim, "gamma")
	if ps.ResyncedBytes > oos*1024+int64(1<<20) {
		t.Errorf("resync sent %d bytes for %d KiB out of sync", ps.ResyncedBytes, oos)
	}
	c.assertEqualStores()
}

// A fresh resource: all Inconsistent; the first forced promote makes that
// node the UpToDate primary and the others full-sync from it, while writes
// go on.
func TestInitialFullSyncWhileWriting(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.waitConnected(10 * time.Second)
	prim := c.nodes[0].n
	for _, tn := range c.nodes {
		if d := tn.n.Status().Disk; d != "Inconsistent" {
			t.Fatalf("%s starts %s", tn.cfg.Self.Name, d)
		}
	}
	if err := prim.Promote(false); err == nil {
		t.Fatal("promote of an Inconsistent node without force succeeded")
	} else {
		t.Logf("refused as expected: %v", err)
	}
	// Put data on alpha's disk beforehand so the sync has something to send.
	pre := make([]byte, 1<<20)
	for i := range pre {
		pre[i] = byte(i * 7)
	}
	c.nodes[0].n.st.WriteAt(context.Background(), pre, 3<<20, false)
	if err := prim.Promote(true); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() { done <- writer(t, prim, c.seed, 0, 8<<20, stop, nil) }()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	t.Logf("%d writes during the sync", <-done)
	c.waitSynced(20 * time.Second)
	c.assertEqualStores()
}
