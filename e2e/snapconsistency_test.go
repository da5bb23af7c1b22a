package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
	"github.com/repd/repd/nbd/nbdtest"
)

// ackBlock is the block the load writers write: 4 KiB, one writer per
// block, each write a new version.
const ackBlock = 4096

// ackWrite is one write of a block as its writer saw it: issued before
// the request was sent, acked when the reply came.
type ackWrite struct {
	version        uint32
	issued, acked  time.Time
	acknowledgedOK bool
}

// blockImage is what version v of block b holds: b and v in its first 12
// bytes, then a pattern of both, so a torn or misplaced block shows.
func blockImage(b int64, v uint32) []byte {
	p := make([]byte, ackBlock)
	binary.LittleEndian.PutUint64(p, uint64(b))
	binary.LittleEndian.PutUint32(p[8:], v)
	for i := 12; i < ackBlock; i++ {
		p[i] = byte(int64(i)*7 + b*13 + int64(v)*31)
	}
	return p
}

// versionOf decodes a block read back: 0 for a block never written (all
// zeroes), else its version; an error for anything no writer wrote there.
func versionOf(b int64, p []byte) (uint32, error) {
	if bytes.Equal(p, make([]byte, ackBlock)) {
		return 0, nil
	}
	v := binary.LittleEndian.Uint32(p[8:])
	if binary.LittleEndian.Uint64(p) != uint64(b) || v == 0 || !bytes.Equal(p, blockImage(b, v)) {
		return 0, fmt.Errorf("block %d holds data no writer wrote there (torn or misplaced)", b)
	}
	return v, nil
}

// snapCall is one `repctl snapshot create` as the test saw it.
type snapCall struct {
	name          string
	called, ended time.Time
	from          *node
}

// Snapshots taken while writers load the device are each a state of the
// write stream: read back over its NBD export, a snapshot holds every
// write acknowledged before `repctl snapshot create` was called and none
// issued after it returned; no block is torn. Half the snapshots are
// asked for on the Secondary (--node all through the Primary's stream):
// each node's copy is the same image (qemu-img compare over both
// exports).
func TestSnapshotConsistentUnderLoad(t *testing.T) {
	qemuImg := testtool.Require(t, "qemu-img")
	const (
		size    = 8 << 20
		blocks  = size / ackBlock
		conns   = 4
		writers = 16 // 4 per connection, pipelined: up to 16 writes in flight
		snaps   = 6
	)
	c := newCluster(t, clusterOpts{nodes: 2, size: "8MiB", extra: `snapshot-store-size = "64MiB"`})
	p := upCluster(t, c)
	s := c.nodes[1]
	waitInSync(t, c, 30*time.Second)

	// history[b] lists block b's writes in order (one writer per block).
	history := make([][]ackWrite, blocks)
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written [writers]int
	var clients [conns]*nbdtest.Client
	for i := range clients {
		cl, err := nbdtest.Dial("tcp", p.nbd, "r0")
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		clients[i] = cl
	}
	for g := range writers {
		cl := clients[g%conns]
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 19))
			for {
				select {
				case <-stop:
					return
				default:
				}
				b := int64(rng.IntN(blocks/writers)*writers + g)
				mu.Lock()
				v := uint32(len(history[b]) + 1)
				history[b] = append(history[b], ackWrite{version: v, issued: time.Now()})
				mu.Unlock()
				err := cl.Write(blockImage(b, v), b*ackBlock, false)
				now := time.Now()
				mu.Lock()
				w := &history[b][v-1]
				w.acked, w.acknowledgedOK = now, err == nil
				mu.Unlock()
				if err != nil {
					t.Errorf("writer %d: block %d version %d: %v", g, b, v, err)
					return
				}
				written[g]++
			}
		}()
	}

	var calls []snapCall
	for i := range snaps {
		time.Sleep(150 * time.Millisecond)
		from := p
		if i%2 == 1 {
			from = s
		}
		call := snapCall{name: fmt.Sprintf("load-%d", i), from: from, called: time.Now()}
		from.mustCtl("snapshot", "create", call.name, "--node", "all")
		call.ended = time.Now()
		calls = append(calls, call)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	total := 0
	for _, n := range written {
		total += n
	}
	t.Logf("%d writes of 4 KiB by %d writers on %d connections during %d snapshots", total, writers, conns, snaps)

	for _, call := range calls {
		img := readExport(t, p, "r0@"+call.name)
		if len(img) != size {
			t.Fatalf("%s: %d bytes read", call.name, len(img))
		}
		var before, inFlight int
		for b := range int64(blocks) {
			v, err := versionOf(b, img[b*ackBlock:(b+1)*ackBlock])
			if err != nil {
				t.Fatalf("snapshot %s: %v", call.name, err)
			}
			// lo: the newest version acknowledged before the call;
			// hi: the newest issued before it returned.
			var lo, hi uint32
			for _, w := range history[b] {
				if w.acknowledgedOK && w.acked.Before(call.called) {
					lo = w.version
				}
				if w.issued.Before(call.ended) {
					hi = w.version
				}
			}
			switch {
			case v < lo:
				t.Fatalf("snapshot %s (asked on %s): block %d holds version %d, but version %d was acknowledged before the snapshot was called",
					call.name, call.from.name, b, v, lo)
			case v > hi:
				t.Fatalf("snapshot %s (asked on %s): block %d holds version %d, issued after the snapshot call returned (newest before: %d)",
					call.name, call.from.name, b, v, hi)
			}
			if lo > 0 {
				before++
			}
			if lo != hi {
				inFlight++
			}
		}
		if before == 0 {
			t.Fatalf("snapshot %s: no block was written before it: the load did not run", call.name)
		}
		t.Logf("snapshot %s (asked on %s in %v): %d blocks written before it, %d written while it was taken",
			call.name, call.from.name, call.ended.Sub(call.called).Round(time.Millisecond), before, inFlight)
		// The Secondary's copy of the same point is the same image.
		run(t, time.Minute, qemuImg, "compare", "-f", "raw", "-F", "raw",
			exportURI(p, "r0@"+call.name), exportURI(s, "r0@"+call.name))
	}
}
