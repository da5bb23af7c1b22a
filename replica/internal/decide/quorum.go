package decide

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Quorum, lease and election (see the replica package's doc and
// docs/quorum.md for the argument).
//
// Votes: every node of the resource, data node or witness, is a voter with
// one vote. A node counts the votes present: itself, and each connected
// peer, if its data can matter (an UpToDate or Outdated disk) or it is a
// witness. An Inconsistent node (a resync target, a fresh disk) or a Failed
// or detached one does not vote, for itself or for others.

// Voter is a node as the vote count sees it.
type Voter struct {
	Present bool // this node, or a connected peer
	Witness bool
	Disk    Disk
}

// Votes counts the votes of the present voters whose data can matter.
func Votes(voters []Voter) int {
	n := 0
	for _, v := range voters {
		if v.Present && (v.Witness || v.Disk == UpToDate || v.Disk == Outdated) {
			n++
		}
	}
	return n
}

// HasQuorum says whether votes reach need; need 0 means quorum is off.
func HasQuorum(votes, need int) bool { return need == 0 || votes >= need }

// Lease timing. A Primary holds a lease for L (the peer timeout) from the
// send time of each voter's latest acknowledged lease request; a voter that
// received a message from the Primary promises not to help another node
// to the Primary role for Promise(L) after the receipt, measured on its own
// monotonic clock. With both clocks' rates within ±5.8 % of real time,
// Promise(L) = 9L/8 >= L·(1+ε)/(1−ε), so the promise outlasts the lease
// whatever the two rates are; the send precedes the receipt, so the lease
// starts no later than the promise does.
func Promise(lease time.Duration) time.Duration { return lease + lease/8 }

// LeaseUntil is when a Primary's lease ends: expiries are, for each voter
// peer that acknowledged a lease request for the current generation, the
// request's send time plus L; self is the Primary's own vote (0 or 1). The
// lease holds until the latest time at which need votes are still
// covered: the (need-self)-th latest expiry. Forever when self alone is
// enough; 0 (no lease) when too few voters acknowledged.
func LeaseUntil(expiries []time.Duration, self, need int) time.Duration {
	want := need - self
	if want <= 0 {
		return Forever
	}
	if len(expiries) < want {
		return 0
	}
	sorted := slices.Clone(expiries)
	slices.Sort(sorted)
	return sorted[len(sorted)-want]
}

// Forever is a lease that does not end (quorum of one).
const Forever = time.Duration(math.MaxInt64)

// Candidate is a data node as the election sees it.
type Candidate struct {
	ID       uint8
	Name     string
	Priority int
	Disk     Disk
	Current  uint64
	History  [2]uint64
	// AppliedFrom and Applied: the last Primary whose writes it applied
	// and that Primary's sequence number up to which it applied them.
	AppliedFrom uint8
	Applied     uint64
}

// newer says whether a's data generation is newer than b's (b's current
// generation is in a's history), -1 if older, 0 if the same or unrelated.
func newer(a, b Candidate) int {
	switch {
	case a.Current == b.Current:
		return 0
	case inHistory(b.Current, a.History):
		return 1
	case inHistory(a.Current, b.History):
		return -1
	}
	return 0
}

// Better says whether a ranks before b as the successor of a lost
// Primary: UpToDate first, then the newest data generation, then the most
// of the old Primary's writes applied, then priority, then the lower node
// id. Two nodes that see the same facts rank alike.
func Better(a, b Candidate) bool {
	if (a.Disk == UpToDate) != (b.Disk == UpToDate) {
		return a.Disk == UpToDate
	}
	if c := newer(a, b); c != 0 {
		return c > 0
	}
	if a.AppliedFrom == b.AppliedFrom && a.Applied != b.Applied {
		return a.Applied > b.Applied
	}
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.ID < b.ID
}

// Best is the best-ranked of cands (which must not be empty).
func Best(cands []Candidate) Candidate {
	best := cands[0]
	for _, c := range cands[1:] {
		if Better(c, best) {
			best = c
		}
	}
	return best
}

// GrantCheck is what a voter knows when a node asks it for the Primary
// role: since when it has not heard from a Primary (LastPrimary, on its
// monotonic clock, Now on the same), the promise length, and what it knows
// of the data: a witness the newest generation a Primary announced to it
// (Known, 0 for none); a data node its own side.
type GrantCheck struct {
	Now, LastPrimary time.Duration
	Promise          time.Duration
	Witness          bool
	Known            uint64
	Me               Candidate
	MeVotes          bool // a data node whose disk counts (UpToDate or Outdated)
}

// MayGrant says whether the voter may help cand to the Primary role, or
// why not: while its promise to a Primary runs, never; a witness only to a
// candidate holding the newest generation it was told of; a data node not
// to a candidate older than itself.
func MayGrant(g GrantCheck, cand Candidate) error {
	if wait := g.LastPrimary + g.Promise - g.Now; wait > 0 {
		return fmt.Errorf("it heard from a Primary %v ago; the old Primary's lease may still run for up to %v", (g.Now - g.LastPrimary).Round(time.Millisecond), wait.Round(time.Millisecond))
	}
	if cand.Disk != UpToDate {
		return fmt.Errorf("%s's disk is %s", cand.Name, cand.Disk)
	}
	if g.Witness {
		if g.Known != 0 && cand.Current != g.Known && !inHistory(g.Known, cand.History) {
			return fmt.Errorf("%s's data generation %016X is not the newest the Primary announced (%016X): it lacks writes", cand.Name, cand.Current, g.Known)
		}
		return nil
	}
	if g.MeVotes && newer(g.Me, cand) > 0 {
		return fmt.Errorf("%s's data is older than %s's", cand.Name, g.Me.Name)
	}
	return nil
}

// WitnessLease says whether a witness that knows generation known (the
// newest a Primary announced to it; 0 for none) may acknowledge a lease
// request for generation gen from a Primary whose last State showed
// current and history: gen must be known, or a newer generation of the
// same data (known in its history). replaced reports a Primary whose data
// lacks known: another node was Primary since (and may have acknowledged
// writes this one lacks). Neither: the State that announces gen has not
// arrived yet.
func WitnessLease(known, gen, current uint64, history [2]uint64) (ok, replaced bool) {
	switch {
	case known == 0 || gen == known:
		return true, false
	case current != gen:
		return false, false
	case inHistory(known, history):
		return true, false
	}
	return false, true
}
