package replica

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/api"
)

// TestSyncBench measures resync, checksum resync and verify on a 1 GiB
// device against replicated 1 MiB sequential writes on the same stores.
// Run: REPD_SYNC_BENCH=1 go test -run TestSyncBench -v ./replica
func TestSyncBench(t *testing.T) {
	if os.Getenv("REPD_SYNC_BENCH") == "" {
		t.Skip("set REPD_SYNC_BENCH=1")
	}
	const size = 1 << 30
	directLinks = true
	defer func() { directLinks = false }()
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.Size = size; cfg.CSums = true; cfg.Logger = nil })
	alpha := c.bootstrap()
	ctx := context.Background()
	block := bytes.Repeat([]byte("repd sync bench "), 1<<16) // 1 MiB
	// Baseline: 1 MiB sequential writes, 4 in flight, replicated (C).
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := int64(g) << 20; off < size; off += 4 << 20 {
				if err := alpha.WriteAt(ctx, block, off, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	alpha.Flush(ctx)
	seq := float64(size) / time.Since(start).Seconds()
	c.waitSynced(time.Minute)
	// 10% dirty while beta is away, then a bitmap resync.
	alpha.Disconnect("beta")
	r := rand.New(rand.NewPCG(1, 2))
	for _, i := range r.Perm(1024)[:103] {
		alpha.WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, 1<<20), int64(i)<<20, false)
	}
	dirty := peerState(alpha, "beta").OutOfSyncKiB << 10
	start = time.Now()
	alpha.Connect("beta", false)
	c.waitSynced(time.Minute)
	total := time.Since(start)
	// The resync itself: from SyncSource to Established in alpha's events
	// (the reconnect before it is the connect backoff, not the resync).
	took := syncDuration(c.nodes[0].events, "beta", start)
	rs := float64(dirty) / took.Seconds()
	t.Logf("replicated 1 MiB seq write: %.0f MiB/s; resync of %d MiB dirty: %.0f MiB/s (%.2fx) in %v (%v from connect)", seq/(1<<20), dirty>>20, rs/(1<<20), rs/seq, took.Round(time.Millisecond), total.Round(time.Millisecond))
	// Checksum resync of identical data.
	sent0, recv0 := peerState(alpha, "beta").BytesSent, peerState(alpha, "beta").BytesReceived
	start = time.Now()
	if err := alpha.InvalidateRemote("beta"); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(2 * time.Minute)
	sent := peerState(alpha, "beta").BytesSent - sent0
	recv := peerState(alpha, "beta").BytesReceived - recv0
	t.Logf("checksum resync of identical 1 GiB: source sent %d bytes (%.3f%%), target sent %d bytes of hashes (%.2f%%), in %v",
		sent, 100*float64(sent)/size, recv, 100*float64(recv)/size, time.Since(start).Round(time.Millisecond))
	// Online verify.
	start = time.Now()
	if err := alpha.Verify("beta"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "verify done", func() bool { return peerState(alpha, "beta").Replication == api.Established })
	d := time.Since(start)
	t.Logf("verify of 1 GiB: %v, %.0f MiB/s, %d KiB differ", d.Round(time.Millisecond), float64(size)/(1<<20)/d.Seconds(), peerState(alpha, "beta").VerifyMismatchKiB)
}

// syncDuration is the time from the first SyncSource toward peer after
// since to the Established that ended it, from a node's events.
func syncDuration(l *eventLog, peer string, since time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var from time.Time
	for _, e := range l.evs {
		if e.Kind != "replication" || e.Peer != peer || e.Time.Before(since) {
			continue
		}
		switch {
		case e.New == "SyncSource" && from.IsZero():
			from = e.Time
		case e.New == "Established" && !from.IsZero():
			return e.Time.Sub(from)
		}
	}
	return time.Since(since)
}
