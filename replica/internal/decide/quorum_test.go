package decide

import (
	"strings"
	"testing"
	"time"
)

func TestVotes(t *testing.T) {
	vs := []Voter{
		{Present: true, Disk: UpToDate},     // self
		{Present: true, Disk: Outdated},     // counts: its data can matter
		{Present: true, Disk: Inconsistent}, // a resync target: no vote
		{Present: true, Witness: true},      // a witness always
		{Present: false, Disk: UpToDate},    // not connected
		{Present: true, Disk: Failed},       // detached
		{Present: true, Disk: Diskless},     // a data node without its disk
	}
	if n := Votes(vs); n != 3 {
		t.Fatalf("votes %d, want 3", n)
	}
	if !HasQuorum(3, 3) || HasQuorum(2, 3) || !HasQuorum(0, 0) {
		t.Fatal("HasQuorum")
	}
}

// The promise outlasts the lease whatever the two clocks' rates, within
// ±5.8 % each: the worst case is a fast promiser and a slow Primary.
func TestPromiseOutlastsLease(t *testing.T) {
	const eps = 0.058
	for _, l := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second} {
		leaseReal := float64(l) / (1 - eps)            // the Primary's clock runs slow: its L lasts longer
		promiseReal := float64(Promise(l)) / (1 + eps) // the voter's runs fast: its promise ends sooner
		if promiseReal < leaseReal {
			t.Fatalf("L=%v: promise %v real < lease %v real", l, time.Duration(promiseReal), time.Duration(leaseReal))
		}
	}
}

func TestLeaseUntil(t *testing.T) {
	s := time.Second
	for _, c := range []struct {
		exp        []time.Duration
		self, need int
		want       time.Duration
	}{
		{nil, 1, 2, 0},                        // nobody acknowledged
		{[]time.Duration{5 * s}, 1, 2, 5 * s}, // self and one peer
		{[]time.Duration{5 * s, 9 * s}, 1, 2, 9 * s},
		{[]time.Duration{5 * s, 9 * s, 7 * s}, 1, 3, 7 * s}, // two peers needed: the second latest
		{[]time.Duration{5 * s, 9 * s}, 0, 2, 5 * s},        // a detached Primary does not count itself
		{nil, 1, 1, Forever},
	} {
		if got := LeaseUntil(c.exp, c.self, c.need); got != c.want {
			t.Errorf("LeaseUntil(%v, %d, %d) = %v, want %v", c.exp, c.self, c.need, got, c.want)
		}
	}
}

func TestBetterAndBest(t *testing.T) {
	const G1, G2, G3 = 0x11, 0x22, 0x33
	up := func(id uint8, cur uint64, hist ...uint64) Candidate {
		c := Candidate{ID: id, Name: string(rune('a' + id)), Disk: UpToDate, Current: cur}
		copy(c.History[:], hist)
		return c
	}
	a, b := up(1, G2, G1), up(2, G1)
	if !Better(a, b) || Better(b, a) {
		t.Fatal("the newer generation must win")
	}
	c, d := up(1, G2, G1), up(2, G2, G1)
	c.AppliedFrom, c.Applied = 9, 100
	d.AppliedFrom, d.Applied = 9, 120
	if !Better(d, c) {
		t.Fatal("more of the old Primary's writes must win")
	}
	d.AppliedFrom = 8 // another Primary's sequence space: not comparable
	if !Better(c, d) {
		t.Fatal("with the writes not comparable, the lower id must win")
	}
	c.Priority = 0
	d.Priority = 5
	if !Better(d, c) {
		t.Fatal("priority must win over the node id")
	}
	out := up(3, G3)
	out.Disk = Outdated
	if Better(out, up(4, G1)) {
		t.Fatal("an Outdated node must not beat an UpToDate one")
	}
	cands := []Candidate{up(5, G1), up(3, G2, G1), up(4, G2, G1)}
	if best := Best(cands); best.ID != 3 {
		t.Fatalf("best %d, want 3", best.ID)
	}
	// Deterministic: any order gives the same.
	if best := Best([]Candidate{cands[2], cands[0], cands[1]}); best.ID != 3 {
		t.Fatalf("best %d in another order", best.ID)
	}
}

func TestMayGrant(t *testing.T) {
	s := time.Second
	cand := Candidate{ID: 2, Name: "beta", Disk: UpToDate, Current: 0x22, History: [2]uint64{0x11}}
	base := GrantCheck{Now: 100 * s, LastPrimary: 90 * s, Promise: Promise(5 * s)}
	if err := MayGrant(base, cand); err != nil {
		t.Fatal(err)
	}
	early := base
	early.LastPrimary = 96 * s
	if err := MayGrant(early, cand); err == nil || !strings.Contains(err.Error(), "lease") {
		t.Fatalf("within the promise: %v", err)
	}
	w := base
	w.Witness, w.Known = true, 0x33
	if err := MayGrant(w, cand); err == nil || !strings.Contains(err.Error(), "lacks writes") {
		t.Fatalf("a witness that knows a newer generation: %v", err)
	}
	w.Known = 0x11 // the candidate is newer than what the witness knows
	if err := MayGrant(w, cand); err != nil {
		t.Fatal(err)
	}
	d := base
	d.Me, d.MeVotes = Candidate{ID: 3, Name: "gamma", Disk: UpToDate, Current: 0x33, History: [2]uint64{0x22}}, true
	if err := MayGrant(d, cand); err == nil || !strings.Contains(err.Error(), "older") {
		t.Fatalf("a data voter newer than the candidate: %v", err)
	}
	in := cand
	in.Disk = Inconsistent
	if err := MayGrant(base, in); err == nil {
		t.Fatal("an Inconsistent candidate was granted")
	}
}

// A witness acknowledges a lease for the generation it knows or a newer
// one of the same data, waits for the State of one it has not seen, and
// calls replaced a Primary whose data lacks what it knows.
func TestWitnessLease(t *testing.T) {
	for _, c := range []struct {
		name                 string
		known, gen, cur      uint64
		hist                 [2]uint64
		wantOK, wantReplaced bool
	}{
		{"nothing known yet", 0, 7, 7, [2]uint64{}, true, false},
		{"the known generation", 5, 5, 5, [2]uint64{3}, true, false},
		{"a newer generation of the same data", 5, 9, 9, [2]uint64{5, 3}, true, false},
		{"its State not seen yet", 5, 9, 5, [2]uint64{3}, false, false},
		{"an older generation: replaced", 9, 5, 5, [2]uint64{3}, false, true},
		{"a diverged generation: replaced", 9, 8, 8, [2]uint64{5, 3}, false, true},
	} {
		ok, replaced := WitnessLease(c.known, c.gen, c.cur, c.hist)
		if ok != c.wantOK || replaced != c.wantReplaced {
			t.Errorf("%s: ok %v replaced %v, want %v %v", c.name, ok, replaced, c.wantOK, c.wantReplaced)
		}
	}
}
