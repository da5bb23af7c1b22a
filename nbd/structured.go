package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Reads with holes: a READ of at least holeReadMin bytes on a Device that
// is an Allocator sends the runs that read as zeroes (at least minHole
// bytes long) as NBD_REPLY_TYPE_OFFSET_HOLE chunks and reads only the rest
// from the Device; at most maxReadChunks chunks per reply (the rest goes
// as data). Smaller reads are not worth the Allocation call.
const (
	holeReadMin   = 64 << 10
	minHole       = 4 << 10
	maxReadChunks = 64
)

// appendChunk appends a structured reply chunk header for a payload of
// length bytes.
func appendChunk(b []byte, flags, typ uint16, cookie uint64, length int) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicStructuredReply)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, uint32(length))
}

// errMessage is the message of an error chunk: the request and the error,
// valid UTF-8 without NUL, at most MaxString bytes.
func errMessage(typ uint16, off uint64, n int64, err error) string {
	return wireString(fmt.Sprintf("%s %d+%d: %v", cmdName(typ), off, n, err))
}

// answer replies to a request that carries no data: success, or the error
// err. With structured replies an error goes as an NBD_REPLY_TYPE_ERROR
// chunk whose message says what failed, and a READ (of 0 bytes) succeeds
// with NBD_REPLY_TYPE_NONE; anything else gets a simple reply.
func (c *conn) answer(cookie uint64, typ uint16, off uint64, n int64, err error, held bool, cost int64) {
	var b [SimpleReplySize]byte
	c.send(c.appendAnswer(b[:0], cookie, typ, off, n, err), nil, held, cost)
}

// appendAnswer appends answer's reply to b.
func (c *conn) appendAnswer(b []byte, cookie uint64, typ uint16, off uint64, n int64, err error) []byte {
	if !c.structured || err == nil && typ != CmdRead && typ != CmdBlockStatus {
		return appendSimpleReply(b, cookie, errorCode(err))
	}
	if err == nil {
		return appendChunk(b, ReplyFlagDone, ReplyTypeNone, cookie, 0)
	}
	if errors.Is(err, ErrOutOfRange) || errors.Is(err, ErrNoSpace) {
		err = fmt.Errorf("%w (the export has %d bytes)", err, c.size)
	}
	msg := errMessage(typ, off, n, err)
	b = appendChunk(b, ReplyFlagDone, ReplyTypeError, cookie, 6+len(msg))
	b = binary.BigEndian.AppendUint32(b, errorCode(err))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// segment is a piece of a READ: data read from the Device, or a hole.
type segment struct {
	off, n int64
	hole   bool
}

// readSegments splits a READ into data and holes when the Device can tell
// (see holeReadMin); nil means one piece of data.
func (c *conn) readSegments(r *request) []segment {
	if c.allocator == nil || r.n < holeReadMin || r.flags&CmdFlagDF != 0 {
		return nil
	}
	exts, err := c.allocator.Allocation(c.ctx, r.off, r.n)
	if err != nil {
		// The read itself says whether the Device can be read.
		c.log.Debug("nbd: allocation for a read", "off", r.off, "n", r.n, "err", err)
		return nil
	}
	var segs []segment
	pos, end := r.off, r.off+r.n
	add := func(n int64, hole bool) {
		if k := len(segs); k > 0 && segs[k-1].hole == hole {
			segs[k-1].n += n
		} else {
			segs = append(segs, segment{off: pos, n: n, hole: hole})
		}
		pos += n
	}
	for _, e := range exts {
		if e.Len <= 0 || pos >= end {
			break
		}
		l := min(e.Len, end-pos)
		hole := e.Flags&StateZero != 0 && l >= minHole
		if k := len(segs); k == maxReadChunks && segs[k-1].hole != hole {
			// A further chunk: the rest goes as data (below), so segs
			// stays within maxReadChunks+1 whatever the Device answered.
			break
		}
		add(l, hole)
	}
	if pos < end {
		add(end-pos, false) // not described (or beyond the chunk bound): read it
	}
	if len(segs) > maxReadChunks {
		last := &segs[maxReadChunks-1]
		last.n, last.hole = end-last.off, false
		segs = segs[:maxReadChunks]
	}
	if len(segs) == 1 && !segs[0].hole {
		return nil
	}
	return segs
}

// readStructured answers a READ with structured replies: one
// NBD_REPLY_TYPE_OFFSET_DATA chunk, or data and hole chunks (see
// readSegments), or an error chunk. Everything is read before anything is
// sent, so the final chunk is never followed by an error.
func (c *conn) readStructured(r *request) {
	segs := c.readSegments(r)
	var err error
	if segs == nil {
		err = c.dev.ReadAt(c.ctx, *r.buf, r.off)
	}
	for _, s := range segs {
		if !s.hole {
			if err = c.dev.ReadAt(c.ctx, (*r.buf)[s.off-r.off:][:s.n], s.off); err != nil {
				break
			}
		}
	}
	if err != nil {
		c.log.Debug("nbd: device error", "cmd", "read", "off", r.off, "n", r.n, "err", err)
		c.answer(r.cookie, r.typ, r.woff, r.n, err, true, r.cost)
		c.done(r, err)
		return
	}
	if segs == nil {
		segs = []segment{{off: r.off, n: r.n}}
	}
	for i, s := range segs {
		last := i == len(segs)-1
		var flags uint16
		var cost int64
		if last {
			flags, cost = ReplyFlagDone, r.cost
		}
		var h [ChunkHeaderSize + 12]byte
		if s.hole {
			b := appendChunk(h[:0], flags, ReplyTypeOffsetHole, r.cookie, 12)
			b = binary.BigEndian.AppendUint64(b, uint64(s.off))
			b = binary.BigEndian.AppendUint32(b, uint32(s.n))
			c.send(b, nil, last, cost)
			continue
		}
		b := appendChunk(h[:0], flags, ReplyTypeOffsetData, r.cookie, 8+int(s.n))
		b = binary.BigEndian.AppendUint64(b, uint64(s.off))
		c.send(b, (*r.buf)[s.off-r.off:][:s.n], last, cost)
	}
	c.done(r, nil)
}

// extentSize is what an Extent takes in memory (int64 + uint32, padded).
const extentSize = 16

// statusLimit is the most extents a status request's reply gives per
// context: MaxExtents, one with REQ_ONE.
func (c *conn) statusLimit(r *request) int {
	if r.flags&CmdFlagReqOne != 0 {
		return 1
	}
	return c.srv.maxExtents()
}

// statusSize is the length of the largest reply with at most ext extents
// per context: one chunk per selected context.
func (c *conn) statusSize(ext int) int {
	return len(c.metas) * (ChunkHeaderSize + 4 + 8*ext)
}

// statusCost is what a BLOCK_STATUS request holds at most, its gate
// budget: the buffer of its largest reply (statusSize rounded up to its
// class, as payloads.Get gives it), held until the reply is written, and,
// while the reply is built, one Device answer at a time (MaxExtents
// extents from a Device that stops there, as Allocator asks; the Device
// is not told about REQ_ONE). So pipelined status requests cannot make
// the server hold more than MaxInFlightBytes: counting the reply's length
// alone let 16 contexts hold 4 MiB buffers at a counted 2 MiB each.
func (c *conn) statusCost(r *request) int64 {
	return int64(payloads.Cap(c.statusSize(c.statusLimit(r)))) + extentSize*int64(c.srv.maxExtents())
}

// blockStatus answers NBD_CMD_BLOCK_STATUS: one NBD_REPLY_TYPE_BLOCK_STATUS
// chunk per selected context describing [off, off+n) (n at most
// MaxStatusLength, extents at most MaxExtents, one with REQ_ONE), or an
// error chunk naming the context that failed. Each Device answer is
// encoded straight into the reply's buffer, and dropped before the next
// context is asked: the request holds nothing its cost does not count.
func (c *conn) blockStatus(r *request) {
	n := min(r.n, c.srv.maxStatusLength())
	limit := c.statusLimit(r)
	buf := payloads.Get(c.statusSize(limit))
	b := (*buf)[:0]
	for i, m := range c.metas {
		var flags uint16
		if i == len(c.metas)-1 {
			flags = ReplyFlagDone
		}
		exts, err := c.status(m.name, r.off, n)
		if err == nil {
			var k int
			b, k = appendStatus(b, flags, r.cookie, m.id, exts, n, limit)
			if k == 0 {
				err = fmt.Errorf("the device described no bytes: %w", errNoExtents)
			}
		}
		if err != nil {
			payloads.Put(buf)
			err = fmt.Errorf("context %s: %w", m.name, err)
			c.log.Debug("nbd: device error", "cmd", "block_status", "off", r.off, "n", n, "err", err)
			c.answer(r.cookie, r.typ, r.woff, r.n, err, true, r.cost)
			c.done(r, err)
			return
		}
	}
	c.send(nil, b, true, r.cost)
	payloads.Put(buf)
	c.done(r, nil)
}

// errNoExtents: a Device answered block status with nothing.
var errNoExtents = errors.New("nbd: no extents")

// status asks the Device about [off, off+n) in context name.
func (c *conn) status(name string, off, n int64) ([]Extent, error) {
	if name == ContextBaseAllocation {
		if c.allocator == nil {
			return []Extent{{Len: n}}, nil // all data: always true
		}
		return c.allocator.Allocation(c.ctx, off, n)
	}
	if c.metaDev == nil {
		return nil, fmt.Errorf("export %q offers no metadata context %q any more", c.exp.Name, name)
	}
	return c.metaDev.BlockStatus(c.ctx, name, off, n)
}

// appendStatus appends the NBD_REPLY_TYPE_BLOCK_STATUS chunk of context
// id from a Device's extents: cut to the n bytes asked for, stopped at an
// empty one, neighbours with the same flags joined, at most limit of them.
// k is how many it holds. The lengths fit the wire's 32 bits since n does.
func appendStatus(b []byte, flags uint16, cookie uint64, id uint32, exts []Extent, n int64, limit int) (_ []byte, k int) {
	start := len(b)
	b = appendChunk(b, flags, ReplyTypeBlockStatus, cookie, 0) // its length once known
	b = binary.BigEndian.AppendUint32(b, id)
	var pos int64
	var last uint32
	for _, e := range exts {
		if pos >= n || e.Len <= 0 {
			break
		}
		l := min(e.Len, n-pos)
		pos += l
		if k > 0 && e.Flags == last {
			prev := b[len(b)-8:]
			binary.BigEndian.PutUint32(prev, binary.BigEndian.Uint32(prev)+uint32(l))
			continue
		}
		if k == limit {
			break
		}
		b = binary.BigEndian.AppendUint32(b, uint32(l))
		b = binary.BigEndian.AppendUint32(b, e.Flags)
		last = e.Flags
		k++
	}
	binary.BigEndian.PutUint32(b[start+ChunkHeaderSize-4:], uint32(4+8*k))
	return b, k
}
