package journal

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestInflightSet checks the overlap queries and swap removals of
// Inflight against a plain list, on random ranges.
func TestInflightSet(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var s Inflight
	var model []*Entry
	for step := range 20000 {
		if len(model) > 0 && r.IntN(2) == 0 {
			e := model[r.IntN(len(model))]
			s.Remove(e)
			model = slices.DeleteFunc(model, func(x *Entry) bool { return x == e })
			s.Remove(e) // a second removal is a no-op
		} else {
			off := r.Int64N(1 << 20)
			n := 1 + r.Int64N(64<<10)
			var want []*Entry
			for _, x := range model {
				if x.Off < off+n && off < x.Off+x.N {
					want = append(want, x)
				}
			}
			got := s.Overlapping(off, n, nil)
			slices.SortFunc(got, func(a, b *Entry) int { return cmp.Compare(a.Seq, b.Seq) })
			if !slices.Equal(got, want) {
				t.Fatalf("step %d: overlapping(%d, %d) = %d entries, want %d", step, off, n, len(got), len(want))
			}
			for _, x := range got {
				if x.LocalCh == nil {
					t.Fatalf("step %d: an overlapped entry has no local channel", step)
				}
			}
			e := &Entry{Kind: Write, Seq: uint64(step), Off: off, N: n}
			s.Add(e)
			model = append(model, e)
		}
		if len(s.ents) != len(model) || len(s.spans) != len(model) {
			t.Fatalf("step %d: set holds %d entries, want %d", step, len(s.ents), len(model))
		}
	}
	// An entry that was never added is not removed in another's place.
	stranger := &Entry{Off: 0, N: 1}
	before := len(s.ents)
	s.Remove(stranger)
	if len(s.ents) != before {
		t.Fatal("removing an entry that is not in the set removed another")
	}
}

// What a disconnect marks: every entry still owed by the peer, no matter
// whether it was shipped, and nothing else.
func TestDropMarksUnacked(t *testing.T) {
	var j Log
	j.Max = 1 << 20
	const a, b = 1, 2
	for i := range 6 {
		j.Push(&Entry{Seq: uint64(i + 1), Off: int64(i) * 4096, N: 4096, Ship: a | b, Pend: a | b, Size: 100, Ready: true})
	}
	j.Push(&Entry{Seq: 7, Kind: Barrier, Ship: a | b, Pend: a | b, Ready: true})
	var pr Progress
	var acked []uint64
	j.Ack(&pr, b, 3, time.Now(), func(e *Entry) { acked = append(acked, e.Seq) })
	if pr.AckFrom != 3 || pr.AckSeq != 3 || len(acked) != 3 {
		t.Fatalf("ack up to 3: AckFrom %d AckSeq %d acked %v", pr.AckFrom, pr.AckSeq, acked)
	}
	for _, e := range j.ents[:3] {
		if e.Acked != b || e.Pend != a {
			t.Fatalf("entry %d: acked %b pend %b", e.Seq, e.Acked, e.Pend)
		}
	}
	var marked []int64
	n := j.Drop(&pr, b, func(e *Entry) {
		if e.Marks() {
			marked = append(marked, e.Off)
		}
	})
	if n != 4 || len(marked) != 3 || marked[0] != 3*4096 || marked[2] != 5*4096 {
		t.Fatalf("dropped %d, marked %v", n, marked)
	}
	for pos := j.Base; pos < j.End(); pos++ {
		if e := j.At(pos); e.Pend != a {
			t.Fatalf("entry %d still waits for %b", e.Seq, e.Pend)
		}
	}
}

// A peer's progress through the log: shipping stops at an entry that is not
// ready and skips entries not for the peer; a full batch says more waits;
// acks advance the cursors, measure latency and end the timeout; resync
// blocks clear only once a later barrier is acknowledged.
func TestProgress(t *testing.T) {
	const me, other = 1, 2
	var j Log
	j.Max = 1 << 20
	var pr Progress
	j.Start(&pr)
	push := func(e *Entry) *Entry { e.Seq = uint64(j.End() + 1); e.Size = Overhead; j.Push(e); return e }
	push(&Entry{Kind: Write, Ship: me, Pend: me, Ready: true, Data: make([]byte, 10)})
	push(&Entry{Kind: Write, Ship: other, Pend: other, Ready: true})
	rs := push(&Entry{Kind: Resync, Off: 8192, N: 4096, Ship: me, Pend: me})
	push(&Entry{Kind: Barrier, Ship: me, Pend: me, Ready: true})

	all := func(n, bytes int) bool { return false }
	batch, more := j.Ship(&pr, me, nil, all)
	if len(batch) != 1 || batch[0].Seq != 1 || more || pr.Next != 2 {
		t.Fatalf("first ship: %d entries, more %v, next %d", len(batch), more, pr.Next)
	}
	if batch[0].Refs != 1 {
		t.Fatal("a shipped entry holds no reference")
	}
	rs.Ready = true
	batch, more = j.Ship(&pr, me, batch[:0], func(n, bytes int) bool { return n >= 1 })
	if len(batch) != 1 || batch[0] != rs || !more {
		t.Fatalf("second ship: %d entries (%v), more %v", len(batch), batch, more)
	}
	t0 := time.Unix(1000, 0)
	pr.Shipped(3, t0)
	if pr.Overdue(t0.Add(time.Second), 2*time.Second) || !pr.Overdue(t0.Add(3*time.Second), 2*time.Second) {
		t.Fatal("Overdue")
	}
	j.Ack(&pr, me, 3, t0.Add(40*time.Millisecond), func(*Entry) {})
	if pr.AckSeq != 3 || len(pr.Sent) != 0 || pr.Latency != 40*time.Millisecond || pr.Acks != 1 {
		t.Fatalf("after ack: %+v", pr)
	}
	if len(pr.ResyncAcked) != 1 {
		t.Fatalf("resync block not noted: %+v", pr.ResyncAcked)
	}
	var cleared []int64
	pr.ClearResynced(3, func(off, n int64) { cleared = append(cleared, off) })
	if len(cleared) != 0 {
		t.Fatal("a resync block cleared by a barrier older than it")
	}
	j.Ack(&pr, me, 4, t0.Add(50*time.Millisecond), func(e *Entry) {
		if e.Kind == Barrier {
			pr.ClearResynced(e.Seq, func(off, n int64) { cleared = append(cleared, off) })
		}
	})
	if len(cleared) != 1 || cleared[0] != 8192 || len(pr.ResyncAcked) != 0 {
		t.Fatalf("barrier ack cleared %v, left %v", cleared, pr.ResyncAcked)
	}
}

// Bytes counts the entries not closed; Trim frees only a freed head; Find
// looks up by sequence number within positions.
func TestLogBookkeeping(t *testing.T) {
	var j Log
	j.Max = 1000
	a := &Entry{Seq: 1, Size: 600}
	b := &Entry{Seq: 2, Size: 300}
	j.Push(a)
	if j.Full(400) != false || !j.Full(500) {
		t.Fatal("Full")
	}
	j.Push(b)
	j.Shrink(b, 100)
	if j.Bytes != 700 {
		t.Fatalf("bytes %d after shrink", j.Bytes)
	}
	j.Close(b)
	j.Close(b)
	if j.Bytes != 600 {
		t.Fatalf("bytes %d after closing b twice", j.Bytes)
	}
	b.Freed = true
	j.Trim()
	if j.Base != 0 || j.End() != 2 {
		t.Fatal("trim freed past an unfreed head")
	}
	if j.Find(2, 0, 2) != b || j.Find(3, 0, 2) != nil || j.Find(2, 0, 1) != nil {
		t.Fatal("Find")
	}
	j.Close(a)
	a.Freed = true
	j.Trim()
	if j.Base != 2 || j.End() != 2 || j.Bytes != 0 {
		t.Fatalf("after freeing all: base %d end %d bytes %d", j.Base, j.End(), j.Bytes)
	}
	if j.Full(5000) {
		t.Fatal("an empty log refuses an oversized entry")
	}
}
