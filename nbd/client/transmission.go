package client

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sort"
)

// Extent is one run of blocks with the same status in a metadata context.
type Extent struct {
	Off, Len int64
	Flags    uint32
}

// End is the offset just past the extent.
func (e Extent) End() int64 { return e.Off + e.Len }

// Span is one piece of a ReadBatch: read len(Buf) bytes at Off.
type Span struct {
	Off int64
	Buf []byte
}

// maxStatusRequest is the largest range one BLOCK_STATUS asks about: small
// enough that a server reporting 512-byte extents (the finest the spec
// recommends) stays within MaxExtents.
const maxStatusRequest = MaxExtents * 512

// statusInFlight is how many BLOCK_STATUS requests Extents pipelines: what
// a server can make one call hold is statusInFlight*MaxExtents extents
// per context (12 MiB).
const statusInFlight = 4

// maxErrorChunks bounds the error chunks one reply may carry.
const maxErrorChunks = 1024

// pending is one request awaiting its reply.
type pending struct {
	cmd     uint16
	cookie  uint64
	off, n  int64
	buf     []byte // READ: the destination, len n
	cover   intervals
	status  map[string][]Extent // BLOCK_STATUS: extents by context name
	err     error               // the first error the server reported
	errors  int
	done    bool
	command string
}

func putRequest(b []byte, cmd, flags uint16, cookie, off uint64, n uint32) {
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], cmd)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], n)
}

// ReadAt reads len(p) bytes at off, as io.ReaderAt: a read reaching past
// the end returns what there is and io.EOF.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd read at negative offset %d", off)
	}
	if off >= c.size {
		return 0, io.EOF
	}
	n := int64(len(p))
	eof := false
	if off+n > c.size {
		n, eof = c.size-off, true
	}
	if err := c.Read(context.Background(), p[:n], off); err != nil {
		return 0, err
	}
	if eof {
		return int(n), io.EOF
	}
	return int(n), nil
}

// Read reads len(p) bytes at off; the range must lie within the export.
// Holes the server reports read as zeroes.
func (c *Client) Read(ctx context.Context, p []byte, off int64) error {
	return c.ReadBatch(ctx, []Span{{Off: off, Buf: p}})
}

// ReadBatch reads every span, pipelining up to Options.InFlight requests
// of at most Options.MaxRequest bytes. On a server error it still reads
// the rest and returns the first error (an *Error).
func (c *Client) ReadBatch(ctx context.Context, spans []Span) error {
	var reqs []*pending
	var bounces []func()
	for _, s := range spans {
		n := int64(len(s.Buf))
		if s.Off < 0 || n > c.size || s.Off > c.size-n {
			return fmt.Errorf("nbd read %d+%d: outside the export's %d bytes", s.Off, n, c.size)
		}
		if n == 0 {
			continue
		}
		off, buf := s.Off, s.Buf
		if bm := int64(c.blockMin); bm > 1 && (off%bm != 0 || n%bm != 0) {
			// The server wants aligned requests: read the aligned range
			// into a bounce buffer and copy the part asked for.
			lo, hi := off/bm*bm, min((off+n+bm-1)/bm*bm, c.size)
			bounce := make([]byte, hi-lo)
			dst, skip := s.Buf, off-lo
			bounces = append(bounces, func() { copy(dst, bounce[skip:]) })
			off, buf = lo, bounce
		}
		for len(buf) > 0 {
			k := min(len(buf), c.maxRequest)
			reqs = append(reqs, &pending{cmd: cmdRead, command: "read", off: off, n: int64(k), buf: buf[:k]})
			off, buf = off+int64(k), buf[k:]
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	if err := c.run(ctx, reqs); err != nil {
		return err
	}
	for _, b := range bounces {
		b()
	}
	return nil
}

// BlockStatus asks for the status of [off, off+n) in every negotiated
// metadata context, with one NBD_CMD_BLOCK_STATUS (REQ_ONE off). The server
// may describe less than n bytes (a shorter list) but never nothing; the
// extents are clipped to the range asked for. n is reduced to at most
// MaxExtents*512 bytes.
func (c *Client) BlockStatus(ctx context.Context, off, n int64) (map[string][]Extent, error) {
	if len(c.ctxByID) == 0 {
		return nil, fmt.Errorf("nbd block status: no metadata context was negotiated (ask for one in Options.MetaContexts)")
	}
	if off < 0 || n <= 0 || off >= c.size {
		return nil, fmt.Errorf("nbd block status %d+%d: outside the export's %d bytes", off, n, c.size)
	}
	n = min(n, c.size-off, maxStatusRequest)
	p := &pending{cmd: cmdBlockStatus, command: "block-status", off: off, n: n, status: map[string][]Extent{}}
	if err := c.run(ctx, []*pending{p}); err != nil {
		return nil, err
	}
	return p.status, nil
}

// Extents walks the status of [off, off+n) in context name, calling fn for
// each extent in order. The range is asked about in consecutive pieces of
// at most MaxExtents*512 bytes, statusInFlight of them pipelined (a 1 GiB
// export: 16 pieces in four round trips, not 16); a piece the server
// describes only in part is asked about again from where its reply ends.
func (c *Client) Extents(ctx context.Context, name string, off, n int64, fn func(Extent) error) error {
	if !c.HasMetaContext(name) {
		return fmt.Errorf("nbd export %q offers no metadata context %q", c.export, name)
	}
	if off < 0 || n <= 0 || off > c.size-n {
		return fmt.Errorf("nbd block status %d+%d: outside the export's %d bytes", off, n, c.size)
	}
	end := off + n
	reqs := make([]*pending, 0, statusInFlight)
	for off < end {
		reqs = reqs[:0]
		for a := off; a < end && len(reqs) < statusInFlight; {
			k := min(end-a, maxStatusRequest)
			reqs = append(reqs, &pending{cmd: cmdBlockStatus, command: "block-status", off: a, n: k, status: map[string][]Extent{}})
			a += k
		}
		if err := c.run(ctx, reqs); err != nil {
			return err
		}
		for _, p := range reqs {
			ext := p.status[name]
			for _, e := range ext {
				if err := fn(e); err != nil {
					return err
				}
			}
			off = ext[len(ext)-1].End()
			if off < p.off+p.n {
				break // described in part: ask again from off
			}
		}
	}
	return nil
}

// run sends reqs and collects their replies with the connection to itself.
func (c *Client) run(ctx context.Context, reqs []*pending) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return c.broken
	}
	done := c.arm(ctx)
	err := c.pipeline(reqs)
	if cerr := done(); err != nil && cerr != nil {
		err = fmt.Errorf("nbd: %w (connection closed: %v)", cerr, err)
		c.fail(err)
	}
	return err
}

// pipeline keeps up to c.inFlight requests outstanding until every reply
// is in. A broken stream fails the connection; server-reported errors do
// not, and the first one is returned once all replies are read.
func (c *Client) pipeline(reqs []*pending) error {
	inflight := make(map[uint64]*pending, c.inFlight)
	next := 0
	var first error
	for next < len(reqs) || len(inflight) > 0 {
		if next < len(reqs) && len(inflight) < c.inFlight {
			for next < len(reqs) && len(inflight) < c.inFlight {
				p := reqs[next]
				next++
				p.cookie = c.nextCookie()
				var b [requestSize]byte
				putRequest(b[:], p.cmd, 0, p.cookie, uint64(p.off), uint32(p.n))
				c.bw.Write(b[:])
				inflight[p.cookie] = p
				c.requests.Add(1)
				if p.cmd == cmdRead {
					c.readBytes.Add(p.n)
				} else {
					c.statusCalls.Add(1)
				}
			}
			if err := c.bw.Flush(); err != nil {
				return c.fail(fmt.Errorf("nbd send request: %w", err))
			}
		}
		p, err := c.reply(inflight)
		if err != nil {
			return c.fail(err)
		}
		if p.done {
			delete(inflight, p.cookie)
			if p.err != nil && first == nil {
				first = p.err
			}
		}
	}
	return first
}

// reply reads one reply message (a simple reply or one structured chunk)
// and applies it to its request.
func (c *Client) reply(inflight map[uint64]*pending) (*pending, error) {
	var h [4 + structuredReplyRestSize]byte
	if err := c.readFull(h[:4]); err != nil {
		return nil, err
	}
	switch m := binary.BigEndian.Uint32(h[:4]); m {
	case magicSimpleReply:
		if err := c.readFull(h[4 : 4+simpleReplyRestSize]); err != nil {
			return nil, err
		}
		errno, cookie := binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
		p := inflight[cookie]
		if p == nil {
			return nil, protocolErr("simple reply to cookie %d, which is not in flight", cookie)
		}
		return p, c.simpleReply(p, errno)
	case magicStructuredReply:
		if !c.structured {
			return nil, protocolErr("structured reply chunk although structured replies were not negotiated")
		}
		if err := c.readFull(h[4 : 4+structuredReplyRestSize]); err != nil {
			return nil, err
		}
		flags, typ := binary.BigEndian.Uint16(h[4:]), binary.BigEndian.Uint16(h[6:])
		cookie, length := binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[16:])
		p := inflight[cookie]
		if p == nil {
			return nil, protocolErr("reply chunk (type %d) to cookie %d, which is not in flight", typ, cookie)
		}
		if err := c.chunk(p, typ, length); err != nil {
			return nil, err
		}
		if flags&replyFlagDone != 0 {
			return p, c.finish(p)
		}
		if typ == replyTypeNone {
			return nil, protocolErr("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE")
		}
		return p, nil
	default:
		return nil, protocolErr("reply magic %#x", m)
	}
}

func (c *Client) simpleReply(p *pending, errno uint32) error {
	p.done = true
	if errno != 0 {
		p.err = &Error{Command: p.command, Off: p.off, N: p.n, Errno: errno, Offset: -1}
		return nil
	}
	if p.cmd != cmdRead {
		return protocolErr("%s answered by a simple reply without error or data", p.command)
	}
	if c.structured {
		return protocolErr("READ answered by a simple reply although structured replies were negotiated")
	}
	if err := c.readFull(p.buf); err != nil {
		return err
	}
	c.dataBytes.Add(p.n)
	return nil
}

// chunk applies one structured reply chunk of typ with length bytes of
// payload to p. Every length is checked before anything is read.
func (c *Client) chunk(p *pending, typ uint16, length uint32) error {
	switch {
	case typ == replyTypeNone:
		if length != 0 {
			return protocolErr("NBD_REPLY_TYPE_NONE with %d bytes of payload", length)
		}
		return nil
	case typ == replyTypeOffsetData:
		if p.cmd != cmdRead {
			return protocolErr("OFFSET_DATA chunk in the reply to %s", p.command)
		}
		if length < 9 || int64(length)-8 > p.n {
			return protocolErr("OFFSET_DATA chunk of %d bytes for a read of %d", length, p.n)
		}
		var b [8]byte
		if err := c.readFull(b[:]); err != nil {
			return err
		}
		n := int64(length) - 8
		lo, err := p.place(binary.BigEndian.Uint64(b[:]), n)
		if err != nil {
			return err
		}
		if err := c.readFull(p.buf[lo : lo+n]); err != nil {
			return err
		}
		c.dataBytes.Add(n)
		return nil
	case typ == replyTypeOffsetHole:
		if p.cmd != cmdRead {
			return protocolErr("OFFSET_HOLE chunk in the reply to %s", p.command)
		}
		if length != 12 {
			return protocolErr("OFFSET_HOLE chunk of %d bytes, want 12", length)
		}
		var b [12]byte
		if err := c.readFull(b[:]); err != nil {
			return err
		}
		n := int64(binary.BigEndian.Uint32(b[8:]))
		if n == 0 {
			return protocolErr("OFFSET_HOLE chunk of size 0")
		}
		lo, err := p.place(binary.BigEndian.Uint64(b[:]), n)
		if err != nil {
			return err
		}
		clear(p.buf[lo : lo+n])
		c.holeBytes.Add(n)
		return nil
	case typ == replyTypeBlockStatus:
		return c.statusChunk(p, length)
	case typ&replyTypeErrorBit != 0:
		return c.errorChunk(p, typ, length)
	default:
		return protocolErr("unknown reply chunk type %d", typ)
	}
}

// place checks that the content chunk [off, off+n) lies inside p's range
// and overlaps nothing received before, records it, and returns its index
// in p.buf.
func (p *pending) place(off uint64, n int64) (int64, error) {
	if off < uint64(p.off) || off > math.MaxInt64 || int64(off)-p.off > p.n-n {
		return 0, protocolErr("content chunk %d+%d outside the read %d+%d", off, n, p.off, p.n)
	}
	lo := int64(off) - p.off
	if err := p.cover.add(lo, lo+n); err != nil {
		return 0, protocolErr("content chunk %d+%d in the read %d+%d: %v", off, n, p.off, p.n, err)
	}
	return lo, nil
}

func (c *Client) statusChunk(p *pending, length uint32) error {
	if p.cmd != cmdBlockStatus {
		return protocolErr("BLOCK_STATUS chunk in the reply to %s", p.command)
	}
	if length < 12 || (length-4)%8 != 0 || (length-4)/8 > MaxExtents {
		return protocolErr("BLOCK_STATUS chunk of %d bytes (want 4 + 8 per extent, at most %d extents)", length, MaxExtents)
	}
	var b [4]byte
	if err := c.readFull(b[:]); err != nil {
		return err
	}
	id := binary.BigEndian.Uint32(b[:])
	name, ok := c.ctxByID[id]
	if !ok {
		return protocolErr("BLOCK_STATUS chunk for context id %d, which was not negotiated", id)
	}
	if _, dup := p.status[name]; dup {
		return protocolErr("two BLOCK_STATUS chunks for context %q in one reply", name)
	}
	count := int((length - 4) / 8)
	ext := make([]Extent, 0, min(count, 1024))
	var buf [8 * 512]byte
	sum := int64(0)
	for i := 0; i < count; {
		k := min(count-i, len(buf)/8)
		if err := c.readFull(buf[:8*k]); err != nil {
			return err
		}
		for j := 0; j < k; j++ {
			n := int64(binary.BigEndian.Uint32(buf[8*j:]))
			flags := binary.BigEndian.Uint32(buf[8*j+4:])
			if n == 0 {
				return protocolErr("BLOCK_STATUS extent of length 0 for context %q", name)
			}
			if sum >= p.n {
				return protocolErr("BLOCK_STATUS for context %q describes more extents than the %d bytes asked for", name, p.n)
			}
			n = min(n, p.n-sum) // the last extent may reach past the range
			if l := len(ext); l > 0 && ext[l-1].Flags == flags {
				ext[l-1].Len += n
			} else {
				ext = append(ext, Extent{Off: p.off + sum, Len: n, Flags: flags})
			}
			sum += n
		}
		i += k
	}
	p.status[name] = ext
	return nil
}

func (c *Client) errorChunk(p *pending, typ uint16, length uint32) error {
	if length < 6 || length > MaxErrorChunk {
		return protocolErr("error chunk of %d bytes (want 6..%d)", length, MaxErrorChunk)
	}
	b := make([]byte, length)
	if err := c.readFull(b); err != nil {
		return err
	}
	p.errors++
	if p.errors > maxErrorChunks {
		return protocolErr("more than %d error chunks in one reply", maxErrorChunks)
	}
	errno, mlen := binary.BigEndian.Uint32(b), int(binary.BigEndian.Uint16(b[4:]))
	if mlen > len(b)-6 {
		return protocolErr("error chunk message of %d bytes in a %d-byte chunk", mlen, length)
	}
	e := &Error{Command: p.command, Off: p.off, N: p.n, Errno: errno, Message: printable(b[6 : 6+mlen]), Offset: -1}
	switch typ {
	case replyTypeError:
		if errno == 0 {
			return protocolErr("NBD_REPLY_TYPE_ERROR with error 0")
		}
	case replyTypeErrorOffset:
		if len(b)-6-mlen != 8 || errno == 0 {
			return protocolErr("NBD_REPLY_TYPE_ERROR_OFFSET of %d bytes with a %d-byte message and error %d", length, mlen, errno)
		}
		o := binary.BigEndian.Uint64(b[6+mlen:])
		if o < uint64(p.off) || o-uint64(p.off) >= uint64(p.n) {
			return protocolErr("error offset %d outside the request %d+%d", o, p.off, p.n)
		}
		e.Offset = int64(o)
	default:
		// An unknown error type: the reply has failed, the stream goes on.
		if errno == 0 {
			e.Errno = 5
		}
	}
	if p.err == nil {
		p.err = e
	}
	return nil
}

// finish checks a reply whose last chunk arrived.
func (c *Client) finish(p *pending) error {
	p.done = true
	if p.err != nil {
		return nil
	}
	switch p.cmd {
	case cmdRead:
		if got := p.cover.total(); got != p.n {
			return protocolErr("read %d+%d ended with %d bytes not sent", p.off, p.n, p.n-got)
		}
	case cmdBlockStatus:
		for name := range c.ctxByName {
			if _, ok := p.status[name]; !ok {
				return protocolErr("block status %d+%d ended without extents for context %q", p.off, p.n, name)
			}
		}
	}
	return nil
}

// intervals is a sorted set of disjoint half-open ranges, adjacent ones
// joined.
type intervals []struct{ lo, hi int64 }

func (s *intervals) add(lo, hi int64) error {
	v := *s
	j := sort.Search(len(v), func(i int) bool { return v[i].hi > lo })
	if j < len(v) && v[j].lo < hi {
		return fmt.Errorf("overlaps bytes %d..%d received before", v[j].lo, v[j].hi)
	}
	left := j > 0 && v[j-1].hi == lo
	right := j < len(v) && v[j].lo == hi
	switch {
	case left && right:
		v[j-1].hi = v[j].hi
		v = append(v[:j], v[j+1:]...)
	case left:
		v[j-1].hi = hi
	case right:
		v[j].lo = lo
	default:
		if len(v) >= MaxFragments {
			return fmt.Errorf("more than %d separate pieces", MaxFragments)
		}
		v = append(v, struct{ lo, hi int64 }{})
		copy(v[j+1:], v[j:])
		v[j] = struct{ lo, hi int64 }{lo, hi}
	}
	*s = v
	return nil
}

func (s intervals) total() int64 {
	t := int64(0)
	for _, v := range s {
		t += v.hi - v.lo
	}
	return t
}
