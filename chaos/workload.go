package chaos

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/internal/zero"
	"github.com/repd/repd/nbd/nbdtest"
)

// BlockSize is the unit the workload writes and the checker identifies.
const BlockSize = 4096

const blockMagic = 0x5245504443484b31 // "REPDCHK1"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Rec is one write of the history. Sent and Acked are ticks of the
// History's logical clock: Sent is taken before the request is sent, Acked
// after its successful reply arrived (0: never acknowledged).
type Rec struct {
	ID     uint64
	Block  int64 // first block
	Blocks int64
	Sent   uint64
	Acked  uint64
	Failed bool // an error reply or a broken connection: unknown outcome
	// Node served the write; Epoch is the Follower's route it went by
	// (an index into History.epochs, 1-based; 0 for a Workload's write).
	Node  string
	Epoch int
	// AckedAt is when the reply arrived (wall clock), for the report's
	// handover gaps.
	AckedAt time.Time
	// Code is the NBD error of an error reply (0: none, or the
	// connection broke).
	Code uint32
}

// Epoch is one route of a Follower: its writes went to Node from the tick
// Start on, over connections opened after Node was found Primary.
type Epoch struct {
	Node  string
	Start uint64
}

// Flush is one NBD flush of the history.
type Flush struct {
	Sent, Acked uint64
}

// History is every write and flush the workloads sent, shared across
// phases (before and after a failover).
type History struct {
	clock atomic.Uint64

	mu      sync.Mutex
	recs    []*Rec // index = ID-1
	epochs  []Epoch
	flushes []Flush
	base    []uint64 // per block, the write a Rebase saw there
	baseID  uint64   // writes up to this ID were sent before the Rebase
}

func (h *History) tick() uint64 { return h.clock.Add(1) }

func (h *History) add(block, blocks int64) *Rec { return h.addOn(block, blocks, "", 0) }

// addOn records a write about to be sent to node by the route epoch.
func (h *History) addOn(block, blocks int64, node string, epoch int) *Rec {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := &Rec{ID: uint64(len(h.recs) + 1), Block: block, Blocks: blocks, Node: node, Epoch: epoch}
	h.recs = append(h.recs, r)
	r.Sent = h.tick()
	return r
}

// newEpoch starts a route to node and returns its number.
func (h *History) newEpoch(node string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.epochs = append(h.epochs, Epoch{Node: node, Start: h.tick()})
	return len(h.epochs)
}

func (h *History) done(r *Rec, err error) {
	t := h.tick()
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		r.Acked, r.AckedAt = t, now
	} else {
		r.Failed, r.Code = true, nbdtest.ErrorCode(err)
	}
}

func (h *History) flushed(sent uint64) {
	t := h.tick()
	h.mu.Lock()
	h.flushes = append(h.flushes, Flush{Sent: sent, Acked: t})
	h.mu.Unlock()
}

// Counts reports how many writes were sent, acknowledged and failed.
func (h *History) Counts() (sent, acked, failed, flushes int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		switch {
		case r.Acked != 0:
			acked++
		case r.Failed:
			failed++
		}
	}
	return len(h.recs), acked, failed, len(h.flushes)
}

// fillBlock writes the content of block b of write id into p (BlockSize).
func fillBlock(p []byte, id uint64, b int64) {
	binary.LittleEndian.PutUint64(p[0:], blockMagic)
	binary.LittleEndian.PutUint64(p[8:], id)
	binary.LittleEndian.PutUint64(p[16:], uint64(b))
	x := id*0x9E3779B97F4A7C15 ^ uint64(b)
	for i := 24; i < BlockSize-8; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	binary.LittleEndian.PutUint32(p[BlockSize-8:], 0)
	binary.LittleEndian.PutUint32(p[BlockSize-4:], crc32.Checksum(p[:BlockSize-4], castagnoli))
}

// parseBlock identifies a block's content: id 0 and ok for all zeroes.
func parseBlock(p []byte, b int64) (id uint64, ok bool) {
	if zero.Is(p) {
		return 0, true
	}
	if binary.LittleEndian.Uint64(p) != blockMagic ||
		crc32.Checksum(p[:BlockSize-4], castagnoli) != binary.LittleEndian.Uint32(p[BlockSize-4:]) ||
		int64(binary.LittleEndian.Uint64(p[16:])) != b {
		return 0, false
	}
	return binary.LittleEndian.Uint64(p[8:]), true
}

// Workload writes to one NBD export with Conns connections of Depth
// pipelined writers each, into the first Blocks blocks, in writes of 1 to
// MaxBlocks blocks (so they overlap), each writer flushing every FlushEvery
// writes.
type Workload struct {
	Addr, Export string
	Conns, Depth int
	Blocks       int64
	MaxBlocks    int64
	FlushEvery   int
	Seed         uint64
	H            *History

	maxLat  atomic.Int64 // ns, over completed requests
	pending sync.Map     // *Rec -> time.Time sent
	errs    atomic.Int64
}

// Run writes until ctx ends or every connection broke. A connection that
// cannot be opened is an error; broken ones later are the faults' doing.
func (w *Workload) Run(ctx context.Context) error {
	var clients []*nbdtest.Client
	for range w.Conns {
		c, err := nbdtest.Dial("tcp", w.Addr, w.Export)
		if err != nil {
			for _, c := range clients {
				c.Close()
			}
			return fmt.Errorf("nbd connect %s: %w", w.Addr, err)
		}
		clients = append(clients, c)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range clients {
			c.Close()
		}
	})
	defer stop()
	var wg sync.WaitGroup
	for i, c := range clients {
		for d := range w.Depth {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.writer(ctx, c, uint64(i*w.Depth+d))
			}()
		}
	}
	wg.Wait()
	for _, c := range clients {
		c.Close()
	}
	return nil
}

func (w *Workload) writer(ctx context.Context, c *nbdtest.Client, k uint64) {
	rng := rand.New(rand.NewPCG(w.Seed, k))
	buf := make([]byte, w.MaxBlocks*BlockSize)
	for n := 1; ctx.Err() == nil; n++ {
		blocks := 1 + rng.Int64N(w.MaxBlocks)
		b := rng.Int64N(w.Blocks - blocks + 1)
		r := w.H.add(b, blocks)
		p := buf[:blocks*BlockSize]
		for i := range blocks {
			fillBlock(p[i*BlockSize:], r.ID, b+i)
		}
		t0 := time.Now()
		w.pending.Store(r, t0)
		err := c.Write(p, b*BlockSize, rng.IntN(50) == 0)
		w.pending.Delete(r)
		w.H.done(r, err)
		w.lat(time.Since(t0))
		if err != nil {
			w.errs.Add(1)
			if nbdtest.ErrorCode(err) == 0 {
				return // connection gone
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if w.FlushEvery > 0 && n%w.FlushEvery == 0 {
			s := w.H.tick()
			t0 := time.Now()
			err := c.Flush()
			w.lat(time.Since(t0))
			if err == nil {
				w.H.flushed(s)
			} else if nbdtest.ErrorCode(err) == 0 {
				return
			}
		}
	}
}

func (w *Workload) lat(d time.Duration) {
	for {
		old := w.maxLat.Load()
		if int64(d) <= old || w.maxLat.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// MaxLatency is the longest request so far, counting requests still
// waiting for their reply.
func (w *Workload) MaxLatency() time.Duration {
	m := time.Duration(w.maxLat.Load())
	w.pending.Range(func(_, v any) bool {
		m = max(m, time.Since(v.(time.Time)))
		return true
	})
	return m
}

// ResetLatency forgets the latencies seen so far.
func (w *Workload) ResetLatency() { w.maxLat.Store(0) }

// Errors is how many writes got an error reply or a broken connection.
func (w *Workload) Errors() int64 { return w.errs.Load() }
