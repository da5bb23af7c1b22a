package chaos

import (
	"strings"
	"testing"

	"github.com/repd/repd/api"
	"github.com/repd/repd/nbd/nbdtest"
)

// image builds a device image of n blocks from per-block write ids.
func image(n int64, shown map[int64]uint64) []byte {
	img := make([]byte, n*BlockSize)
	for b, id := range shown {
		fillBlock(img[b*BlockSize:], id, b)
	}
	return img
}

// The checker catches what it must and allows what it may.
func TestCheck(t *testing.T) {
	h := &History{}
	w1 := h.add(0, 2) // blocks 0,1
	h.done(w1, nil)
	w2 := h.add(1, 2) // blocks 1,2; sent after w1 acked
	h.done(w2, nil)
	w3 := h.add(3, 1) // in flight at the fault
	s := h.tick()
	h.flushed(s)
	w4 := h.add(4, 1)
	h.done(w4, nil)
	_ = w3

	cases := []struct {
		name   string
		shown  map[int64]uint64
		mode   Mode
		want   string // substring of the first violation; "" none
		flushL int
	}{
		{"all there", map[int64]uint64{0: 1, 1: 2, 2: 2, 4: 4}, AllAcked, "", 0},
		{"in-flight write present", map[int64]uint64{0: 1, 1: 2, 2: 2, 3: 3, 4: 4}, AllAcked, "", 0},
		{"acked write missing", map[int64]uint64{0: 1, 1: 2, 2: 2}, AllAcked, "block 4: zeroes", 0},
		{"older write under newer", map[int64]uint64{0: 1, 1: 1, 2: 2, 4: 4}, AllAcked, "block 1: shows write 1", 0},
		{"prefix: only the first write", map[int64]uint64{0: 1, 1: 1}, Prefix, "", 2},
		{"prefix: flushed writes there, later one lost", map[int64]uint64{0: 1, 1: 2, 2: 2}, Prefix, "", 0},
		{"prefix: newer visible, older lost", map[int64]uint64{1: 2, 2: 2, 4: 4}, Prefix, "block 0: zeroes", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := Check(h, image(8, c.shown), c.mode)
			got := ""
			if len(rep.Violations) > 0 {
				got = rep.Violations[0]
			}
			if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Fatalf("violations %q, want %q", rep.Violations, c.want)
			}
			if rep.FlushedLost != c.flushL {
				t.Errorf("FlushedLost %d, want %d", rep.FlushedLost, c.flushL)
			}
		})
	}
	img := image(8, map[int64]uint64{0: 1})
	img[100] ^= 1
	if rep := Check(h, img, AllAcked); rep.NViolations == 0 || !strings.Contains(rep.Violations[0], "garbage") {
		t.Fatalf("a flipped bit passed: %q", rep.Violations)
	}
}

// ackOn records a write acknowledged by node on the route epoch.
func ackOn(h *History, node string, epoch int) *Rec {
	r := h.addOn(0, 1, node, epoch)
	h.done(r, nil)
	return r
}

// CheckExclusive accepts failovers back and forth and catches an old
// Primary that acknowledges after its successor did, whether a write it
// held from before the failover or a new one.
func TestCheckExclusive(t *testing.T) {
	legit := func() *History {
		h := &History{}
		a := h.newEpoch("alpha")
		ackOn(h, "alpha", a)
		ackOn(h, "alpha", a)
		stuck := h.addOn(1, 1, "alpha", a) // suspended on alpha, fails later
		b := h.newEpoch("beta")
		ackOn(h, "beta", b)
		h.done(stuck, &nbdtest.Error{Code: 5})
		ackOn(h, "beta", b)
		a2 := h.newEpoch("alpha") // alpha elected again later
		ackOn(h, "alpha", a2)
		return h
	}
	rep := CheckExclusive(legit())
	if rep.NViolations != 0 || len(rep.Handovers) != 2 || rep.Acks["alpha"] != 3 || rep.Acks["beta"] != 2 {
		t.Fatalf("a clean history: %+v", rep)
	}
	if h := rep.Handovers[0]; h.From != "alpha" || h.To != "beta" || h.LastAck >= h.FirstAck {
		t.Errorf("first handover %+v", h)
	}

	// The suspended write completes on alpha after beta acknowledged.
	h := &History{}
	a := h.newEpoch("alpha")
	ackOn(h, "alpha", a)
	stuck := h.addOn(1, 1, "alpha", a)
	b := h.newEpoch("beta")
	ackOn(h, "beta", b)
	h.done(stuck, nil)
	rep = CheckExclusive(h)
	if rep.NViolations != 1 || !strings.Contains(rep.Violations[0], "alpha acknowledged write 2") {
		t.Fatalf("late acknowledgement by the old Primary: %+v", rep)
	}

	// Both go on acknowledging, each on its own route, interleaved.
	h = &History{}
	a = h.newEpoch("alpha")
	b = h.newEpoch("beta")
	for range 3 {
		ackOn(h, "alpha", a)
		ackOn(h, "beta", b)
	}
	if rep := CheckExclusive(h); rep.NViolations < 4 {
		t.Fatalf("interleaved acknowledgements: %+v", rep)
	}

	// A Workload's writes (no route) are not judged.
	h = &History{}
	ackOn(h, "", 0)
	ackOn(h, "", 0)
	if rep := CheckExclusive(h); rep.NViolations != 0 || len(rep.Acks) != 0 {
		t.Fatalf("writes without a node: %+v", rep)
	}
}

// CheckEvents catches a split brain and a Primary without an UpToDate disk.
func TestCheckEvents(t *testing.T) {
	ev := func(node, kind, old, new, msg string) NodeEvent {
		return NodeEvent{Node: node, Event: api.Event{Kind: kind, Old: old, New: new, Message: msg}}
	}
	clean := []NodeEvent{
		ev("beta", "exists", "", "Secondary", "role"), ev("beta", "exists", "", "UpToDate", "disk"),
		ev("beta", "role", "Secondary", "Primary", ""),
		ev("alpha", "disk", "UpToDate", "Outdated", ""), ev("alpha", "role", "Primary", "Secondary", "replaced"),
		ev("alpha", "disk", "Outdated", "Inconsistent", ""), ev("alpha", "disk", "Inconsistent", "UpToDate", ""),
		ev("alpha", "role", "Secondary", "Primary", ""),
	}
	if bad := CheckEvents(clean); len(bad) != 0 {
		t.Fatalf("clean events: %q", bad)
	}
	bad := CheckEvents(append(clean,
		ev("beta", "disk", "UpToDate", "Inconsistent", ""), ev("beta", "role", "Secondary", "Primary", ""),
		ev("alpha", "split-brain", "", "", "diverged")))
	if len(bad) != 2 || !strings.Contains(bad[0], "beta became Primary while its disk was Inconsistent") || !strings.Contains(bad[1], "split brain") {
		t.Fatalf("violations %q", bad)
	}
}
