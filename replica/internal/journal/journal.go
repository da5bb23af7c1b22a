// Package journal is the Primary's ordered in-memory log of the writes,
// barriers, resync and verify items not yet acknowledged by every peer they
// were sent to, the set of items not yet written locally (for the overlap
// checks of later writes), and each peer's progress through the log.
//
// Logic only: no locks (the replica's node lock guards all of it), no
// sockets, no clock reads (times are passed in). Peers are bits of a uint64
// mask (bit = 1<<peer index).
//
// Positions are absolute: they survive trimming of the log's head, so a
// peer's cursors (Progress) stay valid while entries before them are freed.
package journal

import (
	"context"
	"time"

	"github.com/repd/repd/protocol"
)

// Kind is what an entry carries.
type Kind uint8

// Kinds.
const (
	Write   Kind = iota // application write (data, trim or zeroes)
	Barrier             // flush barrier: peers make everything before it durable
	Resync              // resync data for one peer, read from the local disk
	Verify              // online verify: hashes of a range for one peer
	// Snapshot: a snapshot named Name is taken here and by the peers it
	// is shipped to. Taken locally, it spans the whole device in the
	// in-flight set: it waits for every earlier entry and holds back
	// every later one.
	Snapshot
)

// Overhead is what an entry without data counts against the log's bound:
// about the memory of the entry itself (its struct, 312 bytes on amd64,
// and its places in the log and the in-flight set). The replica package's
// TestJournalMemoryBounded measures the heap a full log takes.
const Overhead = 384

// Entry is one element of the log, in sequence order. Its fields are
// guarded by the caller's lock, except Data, which is immutable once the
// entry is Ready and stays valid while Pend or Refs is non-zero.
type Entry struct {
	Seq   uint64
	Kind  Kind
	Flags protocol.Flags
	Off   int64
	N     int64
	Data  []byte
	Name  string   // a Snapshot's name
	Buf   *[]byte  // pooled buffer behind Data (bufpool)
	FP    []uint64 // dedup fingerprints of Data's 4 KiB blocks, if the writer computed them

	Ship  uint64 // peers it is sent to
	Pend  uint64 // peers of Ship that have neither acknowledged it nor been dropped
	Acked uint64 // peers that acknowledged it
	Refs  int    // shippers writing it out right now

	Deps    []*Entry      // earlier entries not yet local that it overlaps (Inflight)
	Ready   bool          // Data present (resync: read locally)
	Local   bool          // written locally (resync: read)
	LocalCh chan struct{} // closed when Local; made on demand (LocalChan)
	DoneCh  chan struct{} // closed when done (the caller's completion); made on demand
	Closed  bool          // done: DoneCh closed, its room returned to the log
	Freed   bool          // done and no shipper holds it: Data released
	// Borrowed: Data is the writer's own buffer, not a copy (a protocol-C
	// write, whose caller keeps the buffer until the write completes):
	// the entry completes only once no shipper holds it either (Refs ==
	// 0), since the caller reuses the buffer then.
	Borrowed bool
	Err      error // local I/O error
	// NoLocal: the local disk failed (detach) and the entry was not written
	// here; it completes successfully only if a peer acked it. LocalErr is
	// the disk's error, if this entry met it.
	NoLocal  bool
	LocalErr error
	AL       bool      // holds activity-log references on its range, released when done
	Size     int64     // what it counts against the log's bound (Overhead + data)
	Born     time.Time // when a write entered the log (protocol-A lag); zero: not measured
	slot     int       // index in an Inflight while there

	// OnDone completes a write that no goroutine waits for (the caller's
	// asynchronous completion): the caller calls it once, outside its
	// lock, with the write's result, and then the function it returns,
	// if any. Ctx is the write's context; Completed says OnDone is due or
	// was called.
	OnDone    func(error) func()
	Ctx       context.Context
	Completed bool
}

// Marks says whether a peer that loses the entry must have its range
// marked out of sync.
func (e *Entry) Marks() bool { return e.Kind == Write || e.Kind == Resync }

// LocalChan returns a channel closed once e is Local, making it if nobody
// waited before; the caller closes LocalCh when it sets Local.
func (e *Entry) LocalChan() chan struct{} {
	if e.Local {
		return ClosedCh
	}
	if e.LocalCh == nil {
		e.LocalCh = make(chan struct{})
	}
	return e.LocalCh
}

// ClosedCh is a closed channel, for waits that are over before they begin.
var ClosedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Log is the ordered log. Invariants: Base is the position of the first
// entry held; every entry before it is Freed; Bytes is the sum of Size over
// the entries not yet Closed; an entry past Max is admitted only into an
// empty log (Full).
type Log struct {
	ents  []*Entry
	Base  int64 // position of the first entry held
	Bytes int64 // bytes held by entries not yet closed
	Max   int64 // the bound on Bytes
}

// End is the position after the last entry.
func (l *Log) End() int64 { return l.Base + int64(len(l.ents)) }

// At is the entry at pos, Base <= pos < End.
func (l *Log) At(pos int64) *Entry { return l.ents[pos-l.Base] }

// Push appends e and counts its size.
func (l *Log) Push(e *Entry) {
	l.ents = append(l.ents, e)
	l.Bytes += e.Size
}

// Full reports whether an entry of size more would exceed the bound (an
// entry always fits into an empty log).
func (l *Log) Full(size int64) bool { return l.Bytes > 0 && l.Bytes+size > l.Max }

// Close marks e done: its room is returned to the bound.
func (l *Log) Close(e *Entry) {
	if !e.Closed {
		e.Closed = true
		l.Bytes -= e.Size
	}
}

// Shrink lowers e's size to size (a resync block found all zero travels
// without its data); e is not closed yet.
func (l *Log) Shrink(e *Entry, size int64) {
	if !e.Closed && size < e.Size {
		l.Bytes -= e.Size - size
		e.Size = size
	}
}

// Age is how long the oldest write still owed to a peer has waited; zero
// when none is owed. It looks at most a few entries past the head.
func (l *Log) Age(now time.Time) time.Duration {
	for i, e := range l.ents {
		if i == 64 {
			break
		}
		if e.Kind == Write && e.Pend != 0 && !e.Born.IsZero() {
			return now.Sub(e.Born)
		}
	}
	return 0
}

// Trim pops freed entries from the head.
func (l *Log) Trim() {
	i := 0
	for i < len(l.ents) && l.ents[i].Freed {
		l.ents[i] = nil
		i++
	}
	if i == 0 {
		return
	}
	l.Base += int64(i)
	if i == len(l.ents) {
		// Empty: start again at the front of the same array (slicing
		// past its end would make the next push allocate a new one).
		l.ents = l.ents[:0]
		return
	}
	l.ents = l.ents[i:]
	if cap(l.ents) > 1024 && len(l.ents) < cap(l.ents)/4 {
		l.ents = append(make([]*Entry, 0, max(64, 2*len(l.ents))), l.ents...)
	}
}

// Find returns the entry with sequence number seq among the positions
// [from, to) of the log, or nil.
func (l *Log) Find(seq uint64, from, to int64) *Entry {
	for pos := max(from, l.Base); pos < min(to, l.End()); pos++ {
		if e := l.At(pos); e.Seq >= seq {
			if e.Seq == seq {
				return e
			}
			return nil
		}
	}
	return nil
}

// Progress is one peer's position in the log, in the spirit of etcd raft's
// tracker.Progress: what was shipped to it, what it acknowledged, what it
// is known to hold. Guarded by the caller's lock like the log.
type Progress struct {
	// Next is the position of the next entry to consider shipping.
	// Every entry before it that goes to this peer was shipped (or the
	// peer was dropped from it). AckFrom <= Next once a session started.
	Next int64
	// AckFrom is the position of the oldest entry that may still wait for
	// this peer's acknowledgement; none before it does.
	AckFrom int64
	// AckSeq is the peer's cumulative acknowledgement: it applied every
	// entry shipped to it with a sequence number up to AckSeq.
	AckSeq uint64
	// Have is a sequence number up to which the peer holds every write of
	// this Primary: AckSeq, as of the last ack that found nothing marked
	// out of sync toward it (the caller decides). Secondaries learn it
	// (PeerSeqs) to drop their marks of writes the peer is known to hold.
	Have uint64
	// Sent lists the batches shipped and not yet wholly acknowledged,
	// oldest first: the ack timeout runs from Sent[0].At, and the latency
	// is measured from a batch's send to the ack that covers it.
	Sent []Batch
	// ResyncAcked lists the resync blocks acknowledged but not yet known
	// durable on the peer: their out-of-sync bits clear when a later
	// barrier is acknowledged (ClearResynced).
	ResyncAcked []Span
	// Acks counts acknowledgements; Latency is the moving average (weight
	// 1/8) of send→ack over the batches they covered.
	Acks    int64
	Latency time.Duration
}

// Batch is a shipped batch: its last sequence number and when it went.
type Batch struct {
	Seq uint64
	At  time.Time
}

// Span is a resync block acknowledged by the peer.
type Span struct {
	Seq    uint64
	Off, N int64
}

// Start begins a session with the peer at the log's end: nothing before it
// is shipped to or expected from the peer in this session.
func (l *Log) Start(pr *Progress) {
	pr.Next, pr.AckFrom = l.End(), l.End()
	pr.Sent, pr.ResyncAcked = nil, nil
}

// Ship appends to batch the ready entries from pr.Next on that still go to
// the peer (bit), in order, until an entry is not ready yet or full (given
// the batch's length and data bytes) says stop. It takes a reference
// (Refs) on each; the caller releases them once written. more reports
// entries waiting behind a full batch.
func (l *Log) Ship(pr *Progress, bit uint64, batch []*Entry, full func(n, bytes int) bool) (_ []*Entry, more bool) {
	pr.Next = max(pr.Next, l.Base) // entries before the head are freed: none waits for us
	bytes := 0
	for pr.Next < l.End() && !full(len(batch), bytes) {
		e := l.At(pr.Next)
		if e.Ship&bit != 0 && e.Pend&bit != 0 {
			if !e.Ready {
				return batch, false
			}
			e.Refs++
			batch = append(batch, e)
			bytes += len(e.Data)
		}
		pr.Next++
	}
	return batch, pr.Next < l.End() && full(len(batch), bytes)
}

// Shipped records a batch ending at seq sent at now.
func (pr *Progress) Shipped(seq uint64, now time.Time) {
	pr.Sent = append(pr.Sent, Batch{Seq: seq, At: now})
}

// Overdue reports whether the oldest unacknowledged batch has waited
// longer than timeout.
func (pr *Progress) Overdue(now time.Time, timeout time.Duration) bool {
	return len(pr.Sent) > 0 && now.Sub(pr.Sent[0].At) > timeout
}

// Ack records the peer's cumulative acknowledgement of seq at now: each
// entry from AckFrom up to seq that waited for bit is acknowledged (Pend
// cleared, Acked set, fn called: the caller completes it), resync blocks
// are noted for ClearResynced, and the batches covered leave Sent.
func (l *Log) Ack(pr *Progress, bit uint64, seq uint64, now time.Time, fn func(*Entry)) {
	pos := max(pr.AckFrom, l.Base)
	for ; pos < l.End(); pos++ {
		e := l.At(pos)
		if e.Seq > seq {
			break
		}
		if e.Pend&bit != 0 {
			e.Pend &^= bit
			e.Acked |= bit
			if e.Kind == Resync {
				pr.ResyncAcked = append(pr.ResyncAcked, Span{Seq: e.Seq, Off: e.Off, N: e.N})
			}
			fn(e)
		}
	}
	pr.AckFrom = pos
	pr.AckSeq = max(pr.AckSeq, seq)
	i := 0
	for i < len(pr.Sent) && pr.Sent[i].Seq <= seq {
		i++
	}
	if i > 0 {
		d := now.Sub(pr.Sent[i-1].At)
		if pr.Latency == 0 {
			pr.Latency = d
		} else {
			pr.Latency += (d - pr.Latency) / 8
		}
	}
	pr.Acks++
	pr.Sent = pr.Sent[i:]
}

// ClearResynced passes clear every resync block acknowledged before the
// barrier seq, which the peer made durable when it acknowledged the
// barrier, and forgets them.
func (pr *Progress) ClearResynced(seq uint64, clear func(off, n int64)) {
	k := 0
	for _, r := range pr.ResyncAcked {
		if r.Seq < seq {
			clear(r.Off, r.N)
		} else {
			pr.ResyncAcked[k] = r
			k++
		}
	}
	pr.ResyncAcked = pr.ResyncAcked[:k]
}

// Drop removes the peer (bit) from every entry from AckFrom on that still
// waits for it, calling lost for each (the caller marks its range out of
// sync and completes it), and returns how many there were. It is what a
// disconnect, an ack timeout or a pull-ahead does to the peer's share of
// the log; the peer's batches and unconfirmed resync blocks are forgotten.
func (l *Log) Drop(pr *Progress, bit uint64, lost func(*Entry)) int {
	n := 0
	for pos := max(pr.AckFrom, l.Base); pos < l.End(); pos++ {
		e := l.At(pos)
		if e.Pend&bit != 0 {
			e.Pend &^= bit
			lost(e)
			n++
		}
	}
	pr.Sent, pr.ResyncAcked = nil, nil
	return n
}

// Inflight holds the entries not yet local, for the overlap checks of later
// ones. Their ranges sit in one array, so a check reads no entry; each
// entry knows its index, so removal swaps the last one into its place.
type Inflight struct {
	spans []byteRange
	ents  []*Entry
}

// byteRange is [off, end).
type byteRange struct{ off, end int64 }

// Overlapping appends to deps each entry overlapping [off, off+n) and makes
// sure it has a local channel to wait on.
func (s *Inflight) Overlapping(off, n int64, deps []*Entry) []*Entry {
	end := off + n
	for i, x := range s.spans {
		if x.off < end && off < x.end {
			e := s.ents[i]
			e.LocalChan()
			deps = append(deps, e)
		}
	}
	return deps
}

// Add puts e in.
func (s *Inflight) Add(e *Entry) {
	e.slot = len(s.ents)
	s.spans = append(s.spans, byteRange{e.Off, e.Off + e.N})
	s.ents = append(s.ents, e)
}

// Remove takes e out if it is in.
func (s *Inflight) Remove(e *Entry) {
	i := e.slot
	if i < 0 || i >= len(s.ents) || s.ents[i] != e {
		return
	}
	last := len(s.ents) - 1
	s.spans[i], s.ents[i] = s.spans[last], s.ents[last]
	s.ents[i].slot = i
	s.ents[last] = nil
	s.spans, s.ents = s.spans[:last], s.ents[:last]
	e.slot = -1
}

// Len is how many entries are in.
func (s *Inflight) Len() int { return len(s.ents) }
