package chaos

import (
	"fmt"
	"math"
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
