package replica

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
)

// The chaos three-kill story, in process: alpha Primary, beta and gamma
// Secondaries under protocol C. gamma crashes while writes to it are in
// flight (its link is slow, so several are), alpha writes on, alpha
// crashes, beta is promoted and writes, alpha and gamma come back. gamma
// must get everything it missed, including the writes alpha shipped to
// beta but gamma never got: afterwards all three disks hash equal.
func TestThreeKillResyncsWhatGammaMissed(t *testing.T) {
	for run := range 3 {
		t.Run("", func(t *testing.T) {
			c, fz := freezableCluster(t, 3)
			alpha := c.bootstrap()
			c.proxy(0, 2).SetLink(faultnet.Link{Delay: 20 * time.Millisecond}, faultnet.Link{})
			// Writes to [0, 2 MiB) while gamma dies, then to [4, 6 MiB)
			// until alpha dies: gamma's loss in the first region is only
			// what was in flight to it.
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				crashWriters(alpha, c.seed+uint64(run), 0, 2<<20, stop)
			}()
			time.Sleep(time.Duration(100+run*70) * time.Millisecond)
			c.crashAtomic(c.nodes[2], fz[2]) // gamma, with writes in flight to it
			close(stop)
			<-done
			stop = make(chan struct{})
			done = make(chan struct{})
			go func() {
				defer close(done)
				crashWriters(alpha, c.seed+50+uint64(run), 4<<20, 6<<20, stop)
			}()
			time.Sleep(time.Duration(50+run*40) * time.Millisecond)
			c.crashAtomic(c.nodes[0], fz[0]) // alpha, with writes in flight
			close(stop)
			<-done
			c.proxy(0, 2).SetLink(faultnet.Link{}, faultnet.Link{})
			beta := c.nodes[1].n
			waitFor(t, 5*time.Second, "beta sees alpha gone", func() bool { return peerState(beta, "alpha").Connection != api.Connected })
			if err := beta.Promote(false); err != nil {
				t.Fatal(err)
			}
			stop = make(chan struct{})
			done = make(chan struct{})
			go func() {
				defer close(done)
				crashWriters(beta, c.seed+100+uint64(run), 8<<20, 10<<20, stop)
			}()
			time.Sleep(100 * time.Millisecond)
			c.start(c.nodes[0])
			c.start(c.nodes[2])
			time.Sleep(200 * time.Millisecond)
			close(stop)
			<-done
			c.waitSyncedOrDump(30 * time.Second)
			t.Logf("beta resynced %d bytes to gamma, %d to alpha", peerState(beta, "gamma").ResyncedBytes, peerState(beta, "alpha").ResyncedBytes)
			c.assertEqualStores()
		})
	}
}

// crashWriters runs 4 writers of random blocks into [lo, hi) until stop
// closes or a write fails (the node crashed under them).
func crashWriters(n *Node, seed uint64, lo, hi int64, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				blocks := 1 + r.IntN(4)
				off := lo + r.Int64N((hi-lo)/4096-int64(blocks)+1)*4096
				if n.WriteAt(context.Background(), randBlock(r, blocks*4096), off, false) != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// waitSyncedOrDump is waitSynced that logs every node's status on timeout.
func (c *cluster) waitSyncedOrDump(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok := true
		for _, tn := range c.nodes {
			s := tn.n.Status()
			if s.Disk != "UpToDate" {
				ok = false
			}
			for _, p := range s.Peers {
				// A Secondary may keep a few conservative marks toward
				// another Secondary (writes it could not confirm the
				// other got): they only cost a larger resync should that
				// node become the source. What must be zero is the
				// Primary's; assertEqualStores checks the data itself.
				stale := s.Role == api.Secondary && p.Role == api.Secondary.String()
				if p.Connection != api.Connected || p.Replication != api.Established || (p.OutOfSyncKiB != 0 && !stale) {
					ok = false
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			for _, tn := range c.nodes {
				c.t.Logf("status of %s:\n%s", tn.cfg.Self.Name, tn.n.Status())
			}
			c.t.Fatalf("timed out after %v waiting for all nodes in sync", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// frozenStore fails every operation once frozen, as if the process had
// died: an in-process crash stops all I/O at once, before the goroutines
// wind down.
type frozenStore struct {
	Store
	frozen atomic.Bool
}

var errFrozen = fmt.Errorf("crashed: %w", context.Canceled)

func (f *frozenStore) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if f.frozen.Load() {
		return errFrozen
	}
	return f.Store.WriteAt(ctx, p, off, fua)
}

func (f *frozenStore) Trim(ctx context.Context, off, n int64, fua bool) error {
	if f.frozen.Load() {
		return errFrozen
	}
	return f.Store.Trim(ctx, off, n, fua)
}

func (f *frozenStore) WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error {
	if f.frozen.Load() {
		return errFrozen
	}
	return f.Store.WriteZeroes(ctx, off, n, noHole, fua)
}

func (f *frozenStore) Flush(ctx context.Context) error {
	if f.frozen.Load() {
		return errFrozen
	}
	return f.Store.Flush(ctx)
}

// freezableCluster is a cluster whose nodes can crash atomically; fz[i] is
// node i's current store wrapper (replaced at every start).
func freezableCluster(t *testing.T, k int) (*cluster, []*frozenStore) {
	fz := make([]*frozenStore, k)
	c := newClusterWrap(t, k, nil, func(i int, s Store) Store {
		fz[i] = &frozenStore{Store: s}
		return fz[i]
	})
	return c, fz
}

// crashAtomic crashes tn like SIGKILL: its store and meta data stop taking
// writes first (no write, superblock or bitmap update after this point),
// then its goroutines stop.
func (c *cluster) crashAtomic(tn *tnode, fz *frozenStore) {
	n := tn.n
	fz.frozen.Store(true)
	n.meta.Close() // flushes the bitmaps (more than a real crash keeps), then refuses updates
	tn.cancel()
	<-tn.done
	n.st.Close()
	tn.n = nil
}
