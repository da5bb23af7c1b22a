package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/nbd/nbdtest"
)

// WireResult is bytes on the replication link per logical byte written, for
// one kind of data and one compression setting (issue 5).
type WireResult struct {
	Data        string  `json:"data"` // csv, repeat-4k, random
	Compression string  `json:"compression"`
	WriteSize   int     `json:"write_size"`
	Logical     int64   `json:"logical_bytes"` // written through NBD
	Wire        int64   `json:"wire_bytes"`    // bytes_sent to the peer, delta
	Ratio       float64 `json:"ratio"`         // Wire / Logical
	// Counters are the daemon's own logical/wire/dedup counters (delta),
	// when it reports them.
	Counters map[string]float64 `json:"counters,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// wireData are the data kinds written in the wire drill.
var wireData = []struct {
	name      string
	writeSize int
	desc      string
}{
	{"csv", 64 << 10, "generated CSV of customer records, 64 KiB writes"},
	{"repeat-4k", 4 << 10, "one random 4 KiB block written at many offsets, 4 KiB writes"},
	{"random", 64 << 10, "random bytes, 64 KiB writes"},
}

const wireBytesPerKind = 32 << 20

// drillWire writes each kind of data through a 2-node protocol C cluster
// with zstd and compares the bytes the primary sent its peer with the bytes
// written. Under protocol C every acknowledged write has crossed the link.
func drillWire(ctx context.Context, env Env) []WireResult {
	var out []WireResult
	fail := func(err string) []WireResult {
		for _, d := range wireData {
			out = append(out, WireResult{Data: d.name, Compression: "zstd", WriteSize: d.writeSize, Error: err})
		}
		return out
	}
	c, err := startCluster(ctx, env, RepdConfig{Name: "wire", Nodes: []string{"alpha", "bravo"}, Protocol: "C",
		Extra: map[string]string{"compression": `"zstd"`, "dedup-index-size": `"64MiB"`}})
	if err != nil {
		return fail("start: " + err.Error())
	}
	defer c.Stop()
	a := c.NBD(0)
	cl, err := nbdtest.Dial(a.Network, a.Addr, c.Data.Resource)
	if err != nil {
		return fail("dial: " + err.Error())
	}
	defer cl.CloseWrite()
	region := c.Data.Size / int64(len(wireData)) &^ (1<<20 - 1) // 1 MiB aligned, like a filesystem's writes
	for k, d := range wireData {
		res := WireResult{Data: d.name, Compression: "zstd", WriteSize: d.writeSize}
		n := int64(min(wireBytesPerKind, region))
		before, err := c.Status(ctx, 0)
		if err != nil || len(before.Peers) == 0 {
			res.Error = fmt.Sprintf("status: %v", err)
			out = append(out, res)
			continue
		}
		gen := wireGenerator(d.name, uint64(k+1))
		if err := writeRegion(ctx, cl, int64(k)*region, n, d.writeSize, gen); err != nil {
			res.Error = err.Error()
			out = append(out, res)
			continue
		}
		after, err := c.Status(ctx, 0)
		if err != nil || len(after.Peers) == 0 {
			res.Error = fmt.Sprintf("status: %v", err)
			out = append(out, res)
			continue
		}
		res.Logical = n
		res.Wire = after.Peers[0].BytesSent - before.Peers[0].BytesSent
		res.Ratio = float64(res.Wire) / float64(res.Logical)
		for k, v := range after.Peers[0].Counters {
			if res.Counters == nil {
				res.Counters = map[string]float64{}
			}
			res.Counters[k] = v - before.Peers[0].Counters[k]
		}
		out = append(out, res)
	}
	return out
}

// writeRegion writes n bytes at off in writes of size bs, 16 in flight;
// gen fills each write's buffer given its index.
func writeRegion(ctx context.Context, cl *nbdtest.Client, off, n int64, bs int, gen func(i int64, b []byte)) error {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	count := n / int64(bs)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bs)
			for ctx.Err() == nil && firstErr.Load() == nil {
				i := next.Add(1) - 1
				if i >= count {
					return
				}
				gen(i, buf)
				if err := cl.Write(buf, off+i*int64(bs), false); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("write at %d: %w", off+i*int64(bs), err))
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return e.(error)
	}
	return ctx.Err()
}

// wireGenerator returns a function filling a write's buffer with the data
// kind: deterministic per write index.
func wireGenerator(kind string, seed uint64) func(i int64, b []byte) {
	switch kind {
	case "csv":
		return func(i int64, b []byte) { fillCSV(b, seed, uint64(i)) }
	case "repeat-4k":
		block := make([]byte, 4096)
		fillRandom(block, seed, 0)
		return func(i int64, b []byte) {
			for o := 0; o < len(b); o += len(block) {
				copy(b[o:], block)
			}
		}
	}
	return func(i int64, b []byte) { fillRandom(b, seed, uint64(i)) }
}

func fillRandom(b []byte, seed, i uint64) {
	r := rand.New(rand.NewPCG(seed, i))
	for o := 0; o < len(b); o += 8 {
		v := r.Uint64()
		for k := 0; k < 8 && o+k < len(b); k++ {
			b[o+k] = byte(v >> (8 * k))
		}
	}
}

var (
	csvFirst   = []string{"Anna", "Ben", "Carla", "David", "Eva", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kim", "Lena", "Mateo", "Nora", "Omar", "Paula", "Quentin", "Rosa", "Sven", "Tara"}
	csvLast    = []string{"Müller", "Schmidt", "Garcia", "Rossi", "Dubois", "Novak", "Smith", "Jones", "Kowalski", "Silva", "Yilmaz", "Jensen", "Nakamura", "Okafor", "Larsen", "Bianchi"}
	csvCity    = []string{"Berlin", "Madrid", "Lyon", "Porto", "Krakow", "Vienna", "Leeds", "Turin", "Aarhus", "Gent", "Brno", "Malmo"}
	csvCountry = []string{"DE", "ES", "FR", "PT", "PL", "AT", "GB", "IT", "DK", "BE", "CZ", "SE"}
	csvPlan    = []string{"free", "basic", "pro", "enterprise"}
)

// fillCSV fills b with lines of a customer table, as a database export or
// log would hold: text with repetitive structure and varying values.
func fillCSV(b []byte, seed, i uint64) {
	r := rand.New(rand.NewPCG(seed, i))
	var s strings.Builder
	id := i * 1000
	for s.Len() < len(b) {
		id++
		f, l := csvFirst[r.IntN(len(csvFirst))], csvLast[r.IntN(len(csvLast))]
		c := r.IntN(len(csvCity))
		day := time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, r.IntN(3650))
		fmt.Fprintf(&s, "%d,%s,%s,%s.%s%d@example.com,%s,%s,%s,%s,%d.%02d\n",
			id, f, l, strings.ToLower(f), strings.ToLower(l), r.IntN(100),
			csvCity[c], csvCountry[c], day.Format("2006-01-02"), csvPlan[r.IntN(len(csvPlan))],
			r.IntN(100000), r.IntN(100))
	}
	copy(b, s.String())
}
