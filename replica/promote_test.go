package replica

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/api"
)

// Two operators promote two connected Secondaries at the same moment:
// never both Primary; one wins, or both are refused.
func TestConcurrentPromote(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.waitConnected(10 * time.Second)
	if err := c.nodes[0].n.NewCurrentUUID(true); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(10 * time.Second)
	a, b := c.nodes[0].n, c.nodes[1].n
	r := rand.New(rand.NewPCG(c.seed, 1))
	idle := func(n *Node) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.grant == nil && n.promoting == nil
	}
	rounds := 200
	if testing.Short() {
		rounds = 50
	}
	wins := map[string]int{}
	for round := range rounds {
		waitFor(t, 5*time.Second, "both Secondary, seen as such, no grant held", func() bool {
			return a.Status().Role == api.Secondary && b.Status().Role == api.Secondary &&
				peerState(a, "beta").Role == "Secondary" && peerState(b, "alpha").Role == "Secondary" &&
				peerState(a, "beta").Replication == api.Established && idle(a) && idle(b)
		})
		var errs [2]error
		var wg sync.WaitGroup
		delays := [2]time.Duration{time.Duration(r.IntN(300)) * time.Microsecond, time.Duration(r.IntN(300)) * time.Microsecond}
		for i, n := range []*Node{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(delays[i])
				errs[i] = n.Promote(false)
			}()
		}
		wg.Wait()
		ra, rb := a.Status().Role, b.Status().Role
		if ra == api.Primary && rb == api.Primary {
			t.Fatalf("round %d: both Primary (errors %v, %v)", round, errs[0], errs[1])
		}
		if errs[0] == nil && errs[1] == nil {
			t.Fatalf("round %d: both promotes succeeded", round)
		}
		for i, err := range errs {
			if err != nil && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "Primary")) {
				t.Fatalf("round %d: promote %d: unexpected error %v", round, i, err)
			}
		}
		switch {
		case errs[0] == nil:
			wins["alpha"]++
			if ra != api.Primary {
				t.Fatalf("round %d: alpha's promote succeeded but it is %v", round, ra)
			}
			if err := a.Demote(); err != nil {
				t.Fatal(err)
			}
		case errs[1] == nil:
			wins["beta"]++
			if rb != api.Primary {
				t.Fatalf("round %d: beta's promote succeeded but it is %v", round, rb)
			}
			if err := b.Demote(); err != nil {
				t.Fatal(err)
			}
		default:
			wins["none"]++
		}
		if round == 0 {
			t.Logf("round 0: alpha %v, beta %v", errs[0], errs[1])
		}
	}
	t.Logf("%d rounds: %v", rounds, wins)
	if wins["none"] == rounds {
		t.Fatal("no promote ever succeeded")
	}
	if st := peerState(a, "beta"); st.Connection != api.Connected {
		t.Fatalf("alpha and beta lost their connection: %+v", st)
	}
	if a.Status().Peers[0].Connects != 1 {
		t.Fatalf("the connection was re-established %d times (two primaries?)", a.Status().Peers[0].Connects)
	}
}
