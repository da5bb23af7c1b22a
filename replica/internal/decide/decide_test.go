package decide

import (
	"errors"
	"testing"

	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
)

func TestCompare(t *testing.T) {
	const X, Y, Z, H = 0x10, 0x20, 0x30, 0x40
	prim := func(s Side) Side { s.Role = api.Primary; return s }
	up := func(id uint8, cur, bm uint64, hist ...uint64) Side {
		s := Side{ID: id, Name: string(rune('a' + id)), Disk: UpToDate, Current: cur, Bitmap: bm}
		copy(s.History[:], hist)
		return s
	}
	tests := []struct {
		name     string
		me, peer Side
		rel      Relation
		source   bool // me
		full     bool
		err      error
	}{
		{"fresh both", Side{ID: 1, Disk: Inconsistent}, Side{ID: 2, Disk: Inconsistent}, RelInSync, true, false, nil},
		{"equal currents", up(1, X, 0), up(2, X, 0), RelInSync, true, false, nil},
		{"equal, peer primary is source", up(1, X, 0), prim(up(2, X, 0)), RelInSync, false, false, nil},
		{"I wrote while peer away", prim(up(1, Y, X, X)), up(2, X, 0), RelMeNewer, true, false, nil},
		{"peer wrote while I was away", up(1, X, 0), prim(up(2, Y, X, X)), RelPeerNewer, false, false, nil},
		{"peer is fresh: full sync", prim(up(1, X, 0)), Side{ID: 2, Disk: Inconsistent}, RelMeNewer, true, true, nil},
		{"I am fresh: full sync", Side{ID: 1, Disk: Inconsistent}, prim(up(2, X, 0)), RelPeerNewer, false, true, nil},
		{"peer two generations behind: full", up(1, Z, Y, Y, X), up(2, X, 0), RelMeNewer, true, true, nil},
		{"split brain: both rotated from X", prim(up(1, Y, X, X)), up(2, Z, X, X), RelSplitBrain, false, false, ErrSplitBrain},
		{"split brain by history", up(1, Y, H, X), up(2, Z, 0, X), RelSplitBrain, false, false, ErrSplitBrain},
		{"unrelated", up(1, X, 0), up(2, Y, 0), RelUnrelated, false, false, ErrUnrelated},
		{"two primaries", prim(up(1, X, 0)), prim(up(2, X, 0)), 0, false, false, ErrRefused},
		{"two primaries after split brain", prim(up(1, Y, X, X)), prim(up(2, Z, X, X)), 0, false, false, ErrSplitBrain},
		{"primary is older than peer", prim(up(1, X, 0)), up(2, Y, X, X), 0, false, false, ErrRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := Compare(tc.me, tc.peer)
			w := Compare(tc.peer, tc.me)
			if tc.err != nil {
				if !errors.Is(v.Err, tc.err) || !errors.Is(w.Err, tc.err) {
					t.Fatalf("got %v / %v, want %v from both sides", v.Err, w.Err, tc.err)
				}
				t.Logf("refusal: %v", v.Err)
				return
			}
			if v.Err != nil || w.Err != nil {
				t.Fatalf("unexpected refusal: %v / %v", v.Err, w.Err)
			}
			if v.Rel != tc.rel || v.SourceIsMe != tc.source || v.Full != tc.full {
				t.Fatalf("got %v source=%v full=%v, want %v %v %v", v.Rel, v.SourceIsMe, v.Full, tc.rel, tc.source, tc.full)
			}
			// Symmetry: the peer sees the mirror image.
			mirror := map[Relation]Relation{RelInSync: RelInSync, RelMeNewer: RelPeerNewer, RelPeerNewer: RelMeNewer}
			if w.Rel != mirror[v.Rel] || (v.Rel == RelInSync && w.SourceIsMe == v.SourceIsMe) || w.Full != v.Full {
				t.Fatalf("asymmetric: %+v vs %+v", v, w)
			}
		})
	}
}

func TestCompareDiscardResolvesSplitBrain(t *testing.T) {
	a := Side{ID: 1, Name: "a", Role: api.Primary, Disk: UpToDate, Current: 0x20, Bitmap: 0x10}
	b := Side{ID: 2, Name: "b", Disk: UpToDate, Current: 0x30, Bitmap: 0x10, Discard: true}
	v := Compare(b, a)
	if v.Err != nil || v.Rel != RelPeerNewer || v.SourceIsMe || v.Full {
		t.Fatalf("victim: %+v", v)
	}
	if p := Plan(v, b, a, true); p != api.SyncTarget {
		t.Fatalf("victim plan %v", p)
	}
	w := Compare(a, b)
	if w.Err != nil || !w.SourceIsMe {
		t.Fatalf("survivor: %+v", w)
	}
	if p := Plan(w, a, b, true); p != api.SyncSource {
		t.Fatalf("survivor plan %v", p)
	}
	// Unrelated data with discard: full sync.
	b.Current, b.Bitmap = 0x99, 0
	if v := Compare(b, a); v.Err != nil || !v.Full {
		t.Fatalf("unrelated discard: %+v", v)
	}
	// A Primary cannot discard.
	a.Discard, b.Discard = true, false
	if v := Compare(a, b); !errors.Is(v.Err, ErrRefused) {
		t.Fatalf("primary discard: %+v", v)
	}
}

func TestPlan(t *testing.T) {
	p := Side{ID: 1, Role: api.Primary, Disk: UpToDate}
	s := Side{ID: 2, Disk: UpToDate}
	inc := Side{ID: 3, Disk: Inconsistent}
	tests := []struct {
		name     string
		v        Verdict
		me, peer Side
		dirty    bool
		want     api.Repl
	}{
		{"in sync, clean", Verdict{Rel: RelInSync}, p, s, false, api.Established},
		{"in sync, dirty, me primary", Verdict{Rel: RelInSync, SourceIsMe: true}, p, s, true, api.SyncSource},
		{"newer primary", Verdict{Rel: RelMeNewer, SourceIsMe: true}, p, s, true, api.SyncSource},
		{"target of primary", Verdict{Rel: RelPeerNewer}, s, p, true, api.SyncTarget},
		{"two secondaries differ: wait", Verdict{Rel: RelMeNewer, SourceIsMe: true}, s, Side{ID: 3, Disk: UpToDate}, true, api.PausedSync},
		{"two secondaries same generation: settle", Verdict{Rel: RelInSync, SourceIsMe: true}, s, Side{ID: 3, Disk: UpToDate}, true, api.Established},
		{"source inconsistent: wait", Verdict{Rel: RelInSync, SourceIsMe: true}, inc, p, true, api.PausedSync},
		{"refused", Verdict{Err: ErrRefused}, p, s, true, api.ReplOff},
	}
	for _, tc := range tests {
		if got := Plan(tc.v, tc.me, tc.peer, tc.dirty); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCanPromote(t *testing.T) {
	tests := []struct {
		name  string
		force bool
		disk  Disk
		peers []PeerView
		ok    bool
	}{
		{"uptodate alone", false, UpToDate, nil, true},
		{"inconsistent", false, Inconsistent, nil, false},
		{"inconsistent forced", true, Inconsistent, nil, true},
		{"outdated", false, Outdated, nil, false},
		{"failed even forced", true, Failed, nil, false},
		{"connected primary", true, UpToDate, []PeerView{{Name: "b", Connected: true, Role: api.Primary}}, false},
		{"disconnected primary", false, UpToDate, []PeerView{{Name: "b", Role: api.Primary}}, true},
		{"peer newer", false, UpToDate, []PeerView{{Name: "b", Connected: true, Newer: true}}, false},
		{"peer newer forced", true, UpToDate, []PeerView{{Name: "b", Connected: true, Newer: true}}, true},
	}
	for _, tc := range tests {
		err := CanPromote(tc.force, tc.disk, tc.peers)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("%s: got %v", tc.name, err)
		}
	}
}

func TestRotateAndNeedRotate(t *testing.T) {
	bms := []uint64{0, 0x77, 0}
	recv := []bool{true, false, false}
	if !NeedRotate(bms, recv) {
		t.Fatal("peer 2 is away without a bitmap UUID: rotate")
	}
	cur, hist := Rotate(0x10, bms, [2]uint64{0x5, 0}, []bool{false, true, true}, 0x20)
	if cur != 0x20 || hist != [2]uint64{0x10, 0x5} || bms[0] != 0 || bms[1] != 0x77 || bms[2] != 0x10 {
		t.Fatalf("rotate: cur %x hist %x bms %x", cur, hist, bms)
	}
	if NeedRotate(bms, recv) {
		t.Fatal("every away peer has a bitmap UUID now")
	}
}

// Diverging generations where one side is Inconsistent (a resync target
// still holds its old generation until the resync ends) are not a split
// brain: both sides refuse for now, the same way, and connect again; the
// victim's --discard-my-data still resolves it at once.
func TestCompareInconsistentIsNotSplitBrain(t *testing.T) {
	a := Side{ID: 1, Name: "alpha", Disk: Inconsistent, Current: 0xEF, Bitmap: 0xA6, History: [2]uint64{0xA6}}
	g := Side{ID: 3, Name: "gamma", Disk: UpToDate, Current: 0x78, Bitmap: 0xA6, History: [2]uint64{0xA6}}
	if v := relate(a, g); v.Rel != RelSplitBrain {
		t.Fatalf("the generations should diverge here: %+v", v)
	}
	for _, v := range []Verdict{Compare(a, g), Compare(g, a)} {
		if errors.Is(v.Err, ErrSplitBrain) || !errors.Is(v.Err, ErrRefused) || !v.CutResync {
			t.Fatalf("want a refusal that is not a split brain, marked CutResync, got %+v", v)
		}
	}
	a.Disk = UpToDate
	if v := Compare(a, g); !errors.Is(v.Err, ErrSplitBrain) {
		t.Fatalf("both UpToDate: want split brain, got %+v", v)
	}
	a.Disk, a.Discard = Inconsistent, true
	if v := Compare(a, g); v.Err != nil || v.Rel != RelPeerNewer {
		t.Fatalf("discard: %+v", v)
	}
}

// A cut resync's refusal is resolved only by the Primary that holds its
// lease, and both sides reach the same plan: the Inconsistent side
// discards and is resynced whole from the Primary.
func TestResolveCutResync(t *testing.T) {
	inc := Side{ID: 1, Name: "alpha", Disk: Inconsistent, Current: 0xEF, Bitmap: 0xA6, History: [2]uint64{0xA6}}
	prim := Side{ID: 2, Name: "beta", Role: api.Primary, Disk: UpToDate, Current: 0x78, Bitmap: 0xA6, History: [2]uint64{0xA6}}
	for _, lease := range []bool{true, false} {
		a, b := inc, prim
		va, victimA, okA := ResolveCutResync(Compare(a, b), &a, &b, false, lease)
		a2, b2 := inc, prim
		vb, victimB, okB := ResolveCutResync(Compare(b2, a2), &b2, &a2, lease, false)
		if okA != lease || okB != lease {
			t.Fatalf("lease %v: resolved %v/%v", lease, okA, okB)
		}
		if !lease {
			if !va.CutResync || va.Err == nil || !vb.CutResync || vb.Err == nil {
				t.Fatalf("without the lease the refusal stands: %+v / %+v", va, vb)
			}
			continue
		}
		if victimA.Name != "alpha" || victimB.Name != "alpha" || !a.Discard || !a2.Discard {
			t.Fatalf("victims %s/%s, discard %v/%v", victimA.Name, victimB.Name, a.Discard, a2.Discard)
		}
		if va.Err != nil || va.Rel != RelPeerNewer || va.SourceIsMe || !va.Full {
			t.Fatalf("the Inconsistent side's verdict: %+v", va)
		}
		if vb.Err != nil || vb.Rel != RelMeNewer || !vb.SourceIsMe || !vb.Full {
			t.Fatalf("the Primary's verdict: %+v", vb)
		}
	}
	// Not a cut resync: nothing to resolve.
	x, y := prim, prim
	y.ID, y.Name, y.Role = 3, "gamma", api.Secondary
	if _, _, ok := ResolveCutResync(Compare(x, y), &x, &y, true, false); ok {
		t.Fatal("resolved a verdict that was no cut resync")
	}
}

func TestAutoResolve(t *testing.T) {
	a := Side{ID: 1, Name: "alpha"}
	b := Side{ID: 2, Name: "beta"}
	pa := a
	pa.Role = api.Primary
	for _, tc := range []struct {
		policy       config.SplitBrainPolicy
		me, peer     Side
		mine, theirs int64
		dm, dp       bool
	}{
		{config.SplitBrainDisconnect, a, b, 0, 10, false, false},
		{config.SplitBrainDiscardZeroChanges, a, b, 0, 10, true, false},
		{config.SplitBrainDiscardZeroChanges, a, b, 10, 0, false, true},
		{config.SplitBrainDiscardZeroChanges, a, b, 10, 10, false, false},
		{config.SplitBrainDiscardZeroChanges, a, b, 0, 0, false, true}, // higher id discards
		{config.SplitBrainDiscardZeroChanges, b, a, 0, 0, true, false},
		{config.SplitBrainDiscardZeroChanges, pa, b, 0, 10, false, false}, // a Primary: 0pri does not apply
	} {
		dm, dp := AutoResolve(tc.policy, tc.me, tc.peer, tc.mine, tc.theirs)
		if dm != tc.dm || dp != tc.dp {
			t.Errorf("%q %s/%s changes %d/%d: got %v,%v want %v,%v", tc.policy, tc.me.Name, tc.peer.Name, tc.mine, tc.theirs, dm, dp, tc.dm, tc.dp)
		}
	}
}

// A Primary that crashes (no Close) marks its activity log's hot extents
// out of sync at the next open, and they resync; a clean Close marks
// nothing.
