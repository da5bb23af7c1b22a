package drill

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/nbd/nbdtest"
)

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
func drillWire(ctx context.Context, env target.Env) []result.WireResult {
	var out []result.WireResult
	fail := func(err string) []result.WireResult {
		for _, d := range wireData {
			out = append(out, result.WireResult{Data: d.name, Compression: "zstd", WriteSize: d.writeSize, Error: err})
		}
		return out
	}
	c, err := target.StartCluster(ctx, env, target.RepdConfig{Name: "wire", Nodes: []string{"alpha", "bravo"}, Protocol: "C",
		Extra: map[string]string{"compression": `"zstd"`, "dedup-index-size": `"64MiB"`}})
	if err != nil {
		return fail("start: " + err.Error())
	}
	defer c.Stop()
	cl, err := c.Nodes[0].DialNBD()
	if err != nil {
		return fail("dial: " + err.Error())
	}
	defer cl.CloseWrite()
	region := c.Opt.Size / int64(len(wireData)) &^ (1<<20 - 1) // 1 MiB aligned, like a filesystem's writes
	for k, d := range wireData {
		res := result.WireResult{Data: d.name, Compression: "zstd", WriteSize: d.writeSize}
		n := int64(min(wireBytesPerKind, region))
		before, err := c.Nodes[0].Status(ctx)
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
		after, err := c.Nodes[0].Status(ctx)
		if err != nil || len(after.Peers) == 0 {
			res.Error = fmt.Sprintf("status: %v", err)
			out = append(out, res)
			continue
		}
		res.Logical = n
		res.Wire = after.Peers[0].BytesSent - before.Peers[0].BytesSent
		res.Ratio = float64(res.Wire) / float64(res.Logical)
		b := counters(before.Peers[0])
		for k, v := range counters(after.Peers[0]) {
			if res.Counters == nil {
				res.Counters = map[string]float64{}
			}
			res.Counters[k] = v - b[k]
		}
		out = append(out, res)
	}
	return out
}

// counters are the numeric fields of a peer's status whose names speak of
// logical or wire bytes, compression or dedup, by their JSON names.
func counters(p api.PeerStatus) map[string]float64 {
	b, err := json.Marshal(p)
	if err != nil {
		return nil
	}
	var raw map[string]any
	if json.Unmarshal(b, &raw) != nil {
		return nil
	}
	m := map[string]float64{}
	for k, v := range raw {
		f, ok := v.(float64)
		if !ok {
			continue
		}
		for _, w := range []string{"logical", "wire", "dedup", "compress"} {
			if strings.Contains(k, w) {
				m[k] = f
			}
		}
	}
	return m
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
