package replica

import (
	"sync"
	"time"

	"github.com/repd/repd/protocol"
)

// kind is what a journal entry carries.
type kind uint8

const (
	kWrite   kind = iota // application write (data, trim or zeroes)
	kBarrier             // flush barrier: peers make everything before it durable
	kResync              // resync data for one peer, read from the local disk
	kVerify              // online verify: hashes of a range for one peer (verify.go)
)

// entryOverhead is what an entry without data counts against the journal.
const entryOverhead = 128

// entry is one element of the journal: a write, barrier or resync block, in
// sequence order. Its fields are guarded by Node.mu except data, which is
// immutable once the entry is ready (local for resync entries: read) and
// stays valid while pend or refs are non-zero.
type entry struct {
	seq   uint64
	kind  kind
	flags protocol.Flags
	off   int64
	n     int64
	data  []byte
	buf   *[]byte  // pooled buffer behind data
	fp    []uint64 // dedup fingerprints of data's 4 KiB blocks (dedup.go), if computed by the writer

	ship uint64 // peers (bit = 1<<index) it is sent to
	pend uint64 // peers that have not acknowledged it
	refs int    // shippers writing it right now

	deps    []*entry      // earlier in-flight entries it overlaps
	ready   bool          // data present (resync: read locally)
	local   bool          // written locally (resync: read)
	localCh chan struct{} // closed when local; made on demand (localChLocked), under n.mu
	doneCh  chan struct{} // closed when done; made on demand (Node.doneCh), under n.mu
	closed  bool          // doneCh closed
	freed   bool          // bytes returned, buffer released
	err     error         // local I/O error
	// noLocal: the local disk failed (detach) and the entry was not written
	// here; it completes successfully only if a peer acked it. localErr is
	// the disk's error, if this entry met it.
	noLocal  bool
	localErr error
	acked    uint64 // peers that acknowledged it
	size     int64
	born     time.Time // when the write entered the journal (protocol-A lag)
	slot     int       // index in n.inflight while there
}

// marks says whether a peer that loses the entry must have its range
// marked out of sync.
func (e *entry) marks() bool { return e.kind == kWrite || e.kind == kResync }

// inflightSet holds the entries not yet local, for the overlap checks of
// later ones. Their ranges sit in one array, so a check reads no entry;
// each entry knows its index, so removal swaps the last one into its place.
type inflightSet struct {
	spans []byteRange
	ents  []*entry
}

// byteRange is [off, end).
type byteRange struct{ off, end int64 }

// overlapping appends to deps each entry overlapping [off, off+n) and makes
// sure it has a local channel to wait on; n.mu held.
func (s *inflightSet) overlapping(off, n int64, deps []*entry) []*entry {
	end := off + n
	for i, x := range s.spans {
		if x.off < end && off < x.end {
			e := s.ents[i]
			e.localChLocked()
			deps = append(deps, e)
		}
	}
	return deps
}

func (s *inflightSet) add(e *entry) {
	e.slot = len(s.ents)
	s.spans = append(s.spans, byteRange{e.off, e.off + e.n})
	s.ents = append(s.ents, e)
}

// remove takes e out if it is in.
func (s *inflightSet) remove(e *entry) {
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

// journal is the ordered in-memory log of entries not yet acknowledged by
// every peer they were sent to. Positions are absolute (they survive head
// trimming), so each peer keeps its ship and ack cursors as positions.
// Guarded by Node.mu.
type journal struct {
	ents  []*entry
	base  int64 // position of ents[0]
	bytes int64 // bytes held by live entries
	max   int64
}

// age is how long the oldest write still owed to a peer has waited; zero
// when none is owed. It looks at most a few entries past the head.
func (j *journal) age(now time.Time) time.Duration {
	for i, e := range j.ents {
		if i == 64 {
			break
		}
		if e.kind == kWrite && e.pend != 0 && !e.born.IsZero() {
			return now.Sub(e.born)
		}
	}
	return 0
}

func (j *journal) end() int64 { return j.base + int64(len(j.ents)) }

func (j *journal) at(pos int64) *entry { return j.ents[pos-j.base] }

func (j *journal) push(e *entry) {
	j.ents = append(j.ents, e)
	j.bytes += e.size
}

// full reports whether an entry of size more would exceed the bound (an
// entry always fits into an empty journal).
func (j *journal) full(size int64) bool { return j.bytes > 0 && j.bytes+size > j.max }

// trim pops freed entries from the head.
func (j *journal) trim() {
	i := 0
	for i < len(j.ents) && j.ents[i].freed {
		j.ents[i] = nil
		i++
	}
	if i == 0 {
		return
	}
	j.base += int64(i)
	if i == len(j.ents) {
		// Empty: start again at the front of the same array (slicing
		// past its end would make the next push allocate a new one).
		j.ents = j.ents[:0]
		return
	}
	j.ents = j.ents[i:]
	if cap(j.ents) > 1024 && len(j.ents) < cap(j.ents)/4 {
		j.ents = append(make([]*entry, 0, max(64, 2*len(j.ents))), j.ents...)
	}
}

// ack clears peer bit's pending flag on every entry from position from with
// seq <= seq, calling acked for each, and returns the new ack cursor.
func (j *journal) ack(bit uint64, from int64, seq uint64, acked func(*entry)) int64 {
	if from < j.base {
		from = j.base
	}
	pos := from
	for ; pos < j.end(); pos++ {
		e := j.at(pos)
		if e.seq > seq {
			break
		}
		if e.pend&bit != 0 {
			e.pend &^= bit
			acked(e)
		}
	}
	return pos
}

// drop removes peer bit from every entry from position from that still
// waits for it, calling lost for each (which marks its bitmap), and returns
// how many there were. It is what a disconnect, an ack timeout or a
// pull-ahead does to the peer's share of the journal.
func (j *journal) drop(bit uint64, from int64, lost func(*entry)) int {
	if from < j.base {
		from = j.base
	}
	n := 0
	for pos := from; pos < j.end(); pos++ {
		e := j.at(pos)
		if e.pend&bit != 0 {
			e.pend &^= bit
			lost(e)
			n++
		}
	}
	return n
}

// Buffers for entry data, by size class, so the write path does not
// allocate per write.
var bufPools = [...]struct {
	size int
	pool sync.Pool
}{{size: 4 << 10}, {size: 64 << 10}, {size: protocol.MaxData}}

func getBuf(n int) ([]byte, *[]byte) {
	for i := range bufPools {
		c := &bufPools[i]
		if n <= c.size {
			if b, ok := c.pool.Get().(*[]byte); ok {
				return (*b)[:n], b
			}
			b := make([]byte, c.size)
			return b[:n], &b
		}
	}
	b := make([]byte, n)
	return b, nil
}

func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	for i := range bufPools {
		c := &bufPools[i]
		if cap(*b) == c.size {
			c.pool.Put(b)
			return
		}
	}
}
