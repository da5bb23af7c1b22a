package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
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
	m := fmt.Sprintf("%s %d+%d: %v", cmdName(typ), off, n, err)
	m = strings.ToValidUTF8(strings.ReplaceAll(m, "\x00", " "), "?")
	if len(m) > MaxString {
		m = m[:MaxString]
		for !utf8.ValidString(m) {
			m = m[:len(m)-1]
		}
	}
	return m
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
		add(l, e.Flags&StateZero != 0 && l >= minHole)
	}
	if pos < end {
		add(end-pos, false) // not described: read it
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

// statusCost is what a BLOCK_STATUS reply can take at most: a chunk per
// selected context with up to MaxExtents extents (one with REQ_ONE). It
// is the request's gate budget, so that pipelined status requests cannot
// make the server hold more than MaxInFlightBytes of replies.
func (c *conn) statusCost(r *request) int64 {
	ext := int64(c.srv.maxExtents())
	if r.flags&CmdFlagReqOne != 0 {
		ext = 1
	}
	return int64(len(c.metas)) * (ChunkHeaderSize + 4 + 8*ext)
}

// blockStatus answers NBD_CMD_BLOCK_STATUS: one NBD_REPLY_TYPE_BLOCK_STATUS
// chunk per selected context describing [off, off+n) (n at most
// MaxStatusLength, extents at most MaxExtents, one with REQ_ONE), or an
// error chunk naming the context that failed.
func (c *conn) blockStatus(r *request) {
	n := min(r.n, c.srv.maxStatusLength())
	limit := c.srv.maxExtents()
	if r.flags&CmdFlagReqOne != 0 {
		limit = 1
	}
	all := make([][]Extent, len(c.metas))
	size := 0
	for i, m := range c.metas {
		exts, err := c.status(m.name, r.off, n)
		if err == nil {
			exts = clipExtents(exts, n, limit)
			if len(exts) == 0 {
				err = fmt.Errorf("the device described no bytes: %w", errNoExtents)
			}
		}
		if err != nil {
			err = fmt.Errorf("context %s: %w", m.name, err)
			c.log.Debug("nbd: device error", "cmd", "block_status", "off", r.off, "n", n, "err", err)
			c.answer(r.cookie, r.typ, r.woff, r.n, err, true, r.cost)
			c.done(r, err)
			return
		}
		all[i] = exts
		size += ChunkHeaderSize + 4 + 8*len(exts)
	}
	buf := payloads.Get(size)
	b := (*buf)[:0]
	for i, m := range c.metas {
		var flags uint16
		if i == len(c.metas)-1 {
			flags = ReplyFlagDone
		}
		b = appendChunk(b, flags, ReplyTypeBlockStatus, r.cookie, 4+8*len(all[i]))
		b = binary.BigEndian.AppendUint32(b, m.id)
		for _, e := range all[i] {
			b = binary.BigEndian.AppendUint32(b, uint32(e.Len))
			b = binary.BigEndian.AppendUint32(b, e.Flags)
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

// clipExtents cuts a Device's extents to the n bytes asked for, stops at
// an empty one, joins neighbours with the same flags and keeps at most
// limit. The lengths fit the wire's 32 bits since n does.
func clipExtents(exts []Extent, n int64, limit int) []Extent {
	out := make([]Extent, 0, min(len(exts), limit))
	var pos int64
	for _, e := range exts {
		if pos >= n || e.Len <= 0 {
			break
		}
		l := min(e.Len, n-pos)
		pos += l
		if k := len(out); k > 0 && out[k-1].Flags == e.Flags {
			out[k-1].Len += l
			continue
		}
		if len(out) == limit {
			break
		}
		out = append(out, Extent{Len: l, Flags: e.Flags})
	}
	return out
}
