package chaos

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// Mode says what the checker may assume about the device it reads.
type Mode int

const (
	// AllAcked: every acknowledged write is there (protocol C anywhere, and
	// the disk of a primary that never failed over under protocol A).
	AllAcked Mode = iota
	// Prefix: the disk is a state the history passed through (protocol A
	// after a failover): if it shows a write sent at T, every write
	// acknowledged before T is there or superseded.
	Prefix
)

// Report is what Check found.
type Report struct {
	WritesChecked int      // acknowledged writes whose blocks were checked
	Blocks        int64    // blocks read
	Violations    []string // at most 20 spelled out
	NViolations   int
	// FlushedLost counts blocks whose write, acknowledged before a completed flush,
	// is not on the disk (Prefix mode only: protocol A's flush does not
	// wait for the peer in repd).
	FlushedLost int
}

func (r *Report) violate(format string, args ...any) {
	r.NViolations++
	if len(r.Violations) < 20 {
		r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
	}
}

// Check compares a device image (its first len(img) bytes) with the
// history. See the package doc for the rules.
func Check(h *History, img []byte, mode Mode) Report {
	h.mu.Lock()
	recs := append([]*Rec(nil), h.recs...)
	flushes := append([]Flush(nil), h.flushes...)
	base, baseID := h.base, h.baseID
	h.mu.Unlock()
	nblocks := int64(len(img)) / BlockSize
	var rep Report
	rep.Blocks = nblocks

	// What each block shows.
	shown := make([]uint64, nblocks)
	for b := range nblocks {
		id, ok := parseBlock(img[b*BlockSize:(b+1)*BlockSize], b)
		switch {
		case !ok:
			rep.violate("block %d: garbage (no valid header/checksum: torn or corrupt)", b)
			shown[b] = math.MaxUint64
		case id > uint64(len(recs)):
			rep.violate("block %d: shows write %d that was never sent", b, id)
			shown[b] = math.MaxUint64
		case id != 0:
			r := recs[id-1]
			if b < r.Block || b >= r.Block+r.Blocks {
				rep.violate("block %d: shows write %d which covered %d+%d", b, id, r.Block, r.Blocks)
				shown[b] = math.MaxUint64
			} else {
				shown[b] = id
			}
		}
	}
	limit := uint64(math.MaxUint64)
	if mode == Prefix {
		limit = 0
		for _, id := range shown {
			if id != 0 && id != math.MaxUint64 {
				limit = max(limit, recs[id-1].Sent)
			}
		}
	}
	var lastFlush uint64
	for _, f := range flushes {
		lastFlush = max(lastFlush, f.Sent)
	}

	// For each block, the latest Sent among the acknowledged writes that
	// the content must not predate.
	must := make([]uint64, nblocks)
	mustID := make([]uint64, nblocks)
	flushMust := make([]uint64, nblocks)
	for b := range min(nblocks, int64(len(base))) {
		if id := base[b]; id != 0 {
			must[b], mustID[b] = recs[id-1].Sent, id
		}
	}
	for _, r := range recs {
		if r.Acked == 0 || r.ID <= baseID {
			continue
		}
		rep.WritesChecked++
		for b := r.Block; b < r.Block+r.Blocks && b < nblocks; b++ {
			if r.Acked < limit && r.Sent > must[b] {
				must[b], mustID[b] = r.Sent, r.ID
			}
			if r.Acked < lastFlush && r.Sent > flushMust[b] {
				flushMust[b] = r.Sent
			}
		}
	}
	lost := map[int64]bool{}
	for b := range nblocks {
		id := shown[b]
		if id == math.MaxUint64 {
			continue
		}
		acked := uint64(0) // content acknowledged at (zero content: before everything)
		if id != 0 {
			acked = recs[id-1].Acked
			if acked == 0 {
				acked = math.MaxUint64 // in flight: may be newer than anything
			}
		}
		if must[b] != 0 && acked < must[b] {
			if id == 0 {
				rep.violate("block %d: zeroes, but acknowledged write %d (sent at %d) covers it", b, mustID[b], must[b])
			} else {
				rep.violate("block %d: shows write %d (acked at %d), older than acknowledged write %d (sent at %d)", b, id, acked, mustID[b], must[b])
			}
		}
		if mode == Prefix && flushMust[b] != 0 && acked < flushMust[b] {
			lost[b] = true
		}
	}
	rep.FlushedLost = len(lost)
	return rep
}

// Rebase makes img (which passed a Prefix check) the new starting point:
// later checks require each block to show what img showed there or a newer
// write, and no longer require the writes sent before (protocol A after a
// failover: what the new primary has is what counts from now on).
func (h *History) Rebase(img []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := int64(len(img)) / BlockSize
	h.base = make([]uint64, n)
	for b := range n {
		if id, ok := parseBlock(img[b*BlockSize:(b+1)*BlockSize], b); ok && id <= uint64(len(h.recs)) {
			h.base[b] = id
		}
	}
	h.baseID = uint64(len(h.recs))
}

// Handover is a change of the node whose acknowledgements the clients see:
// the last acknowledgement from From and the first from To after it.
type Handover struct {
	From, To          string
	LastAck, FirstAck uint64        // ticks
	Gap               time.Duration // wall time between the two replies
}

// ExclusiveReport is what CheckExclusive found.
type ExclusiveReport struct {
	Acks        map[string]int // acknowledged writes per node
	Handovers   []Handover
	Violations  []string // at most 20 spelled out
	NViolations int
}

func (r *ExclusiveReport) violate(format string, args ...any) {
	r.NViolations++
	if len(r.Violations) < 20 {
		r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
	}
}

// CheckExclusive checks that at no instant do two nodes acknowledge writes:
// the acknowledgements of different nodes never interleave on the clock. A
// Follower writes to one node at a time, over connections (a route, an
// Epoch) opened once it found that node Primary; a write it sent by the
// route to X and saw acknowledged at tick a is a violation if another node
// acknowledged a write at a tick after the route started and before a:
// X acknowledged after its successor did (or the successor while X still
// did). The NBD connections are not shaped, so a reply is not held long
// enough on the way to explain an interleaving: the lease makes the old
// Primary stop at least an eighth of the timeout before the new one starts.
// A node may be Primary again later (a partition healed, another one
// began): a new route to it starts after its predecessor's last
// acknowledgement, and is judged on its own.
func CheckExclusive(h *History) ExclusiveReport {
	h.mu.Lock()
	var acks []Rec
	for _, r := range h.recs {
		if r.Acked != 0 && r.Node != "" {
			acks = append(acks, *r)
		}
	}
	epochs := append([]Epoch(nil), h.epochs...)
	h.mu.Unlock()
	slices.SortFunc(acks, func(a, b Rec) int { return cmp.Compare(a.Acked, b.Acked) })
	rep := ExclusiveReport{Acks: map[string]int{}}
	byNode := map[string][]Rec{}
	for i, x := range acks {
		rep.Acks[x.Node]++
		byNode[x.Node] = append(byNode[x.Node], x)
		if i > 0 && acks[i-1].Node != x.Node {
			p := acks[i-1]
			rep.Handovers = append(rep.Handovers, Handover{From: p.Node, To: x.Node, LastAck: p.Acked, FirstAck: x.Acked, Gap: x.AckedAt.Sub(p.AckedAt)})
		}
	}
	nodes := slices.Sorted(maps.Keys(byNode))
	for _, x := range acks {
		if x.Epoch < 1 || x.Epoch > len(epochs) {
			continue
		}
		start := epochs[x.Epoch-1].Start
		for _, other := range nodes {
			if other == x.Node {
				continue
			}
			ys := byNode[other]
			i, _ := slices.BinarySearchFunc(ys, start+1, func(y Rec, t uint64) int { return cmp.Compare(y.Acked, t) })
			if i < len(ys) && ys[i].Acked < x.Acked {
				y := ys[i]
				rep.violate("two nodes acknowledged writes at once: %s acknowledged write %d (sent at %d by the route opened at %d) at %d, after %s acknowledged write %d at %d",
					x.Node, x.ID, x.Sent, start, x.Acked, other, y.ID, y.Acked)
			}
		}
	}
	return rep
}
