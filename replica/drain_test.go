package replica

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
)

// A protocol-A Primary closed (SIGTERM) with writes still in its journal
// first drains them to the peer: the peer has every write and is rightly
// UpToDate. If the peer cannot acknowledge them in time, it is told to
// mark its disk Outdated instead of claiming UpToDate.
func TestProtocolACloseDrainsJournal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		link    faultnet.Link // beta → alpha (acks)
		outdate bool
	}{
		{"drained", faultnet.Link{}, false},
		// The acks are lost but the data arrives: beta has every write
		// and its final barrier, and rightly stays UpToDate.
		{"acks lost", faultnet.Link{Delay: time.Hour}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 2, func(i int, cfg *Config) { cfg.Protocol = api.ProtocolA })
			alpha := c.bootstrap()
			c.proxy(0, 1).SetLink(faultnet.Link{Delay: 30 * time.Millisecond}, tc.link)
			ctx := context.Background()
			var want [][]byte
			for i := range 300 {
				b := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0x5A, 0xA5}, 1024)
				want = append(want, b)
				if err := alpha.WriteAt(ctx, b, int64(i)*4096, false); err != nil {
					t.Fatal(err)
				}
			}
			if j := alpha.Status().JournalBytes; j == 0 {
				t.Fatal("journal already empty: the test needs writes in flight")
			}
			c.stop(c.nodes[0])
			beta := c.nodes[1].n
			waitFor(t, 5*time.Second, "beta sees alpha gone", func() bool { return peerState(beta, "alpha").Connection != api.Connected })
			disk := beta.Status().Disk
			if tc.outdate {
				if disk != "Outdated" {
					t.Fatalf("beta is %s after the Primary left without its acks", disk)
				}
				return
			}
			if disk != "UpToDate" {
				t.Fatalf("beta is %s", disk)
			}
			for i, b := range want {
				if got := readFileAt(t, c.nodes[1].path, int64(i)*4096, 4096); !bytes.Equal(got, b) {
					t.Fatalf("beta is UpToDate but lacks write %d of 300", i)
				}
			}
		})
	}
}

// A Secondary whose connection to the leaving Primary ends before it
// applied the announced final barrier marks its disk Outdated.
func TestLeavingPrimaryOutdatesLaggingSecondary(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.Protocol = api.ProtocolA })
	c.bootstrap()
	beta := c.nodes[1].n
	p := beta.byName["alpha"]
	s := &session{p: p, applier: &applier{}, leavingSeq: 100}
	s.applier.acked.Store(100)
	beta.mu.Lock()
	err := p.leftLocked(s) // applied up to the final barrier: nothing
	disk := beta.super.Disk
	beta.mu.Unlock()
	if err != nil || disk != diskUpToDate {
		t.Fatalf("barrier applied: %v, disk %v", err, disk)
	}
	s.applier.acked.Store(99)
	beta.mu.Lock()
	err = p.leftLocked(s)
	disk = beta.super.Disk
	beta.mu.Unlock()
	if err != nil || disk != diskOutdated {
		t.Fatalf("barrier not applied: %v, disk %v", err, disk)
	}
}
