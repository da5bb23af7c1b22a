// Package nbdtest is a small NBD client for tests: it negotiates option by
// option, sends well-formed or deliberately broken requests, and pipelines
// them, matching replies to requests by cookie.
//
// It speaks simple replies, and structured replies once
// Negotiation.StructuredReply succeeded: chunks are collected per request
// and checked (inside the request, no overlap, a final chunk). It starts
// one goroutine per Client (the reply reader), which Close waits for.
package nbdtest

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/repd/repd/nbd"
)

// OptionReply is one reply to an option during negotiation.
type OptionReply struct {
	Option uint32
	Type   uint32
	Data   []byte
}

// OptionError is a final option reply with an error type.
type OptionError struct {
	Option  uint32
	Type    uint32
	Message string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("nbd option %d: reply %#x: %s", e.Option, e.Type, e.Message)
}

// Negotiation is a connection in the handshake phase.
type Negotiation struct {
	Conn net.Conn
	// HandshakeFlags are the server's handshake flags.
	HandshakeFlags uint16
	br             *bufio.Reader
	structured     bool
	contexts       map[uint32]string // from the last SetMetaContext
}

// Negotiate reads the server's greeting on c and answers clientFlags.
func Negotiate(c net.Conn, clientFlags uint32) (*Negotiation, error) {
	n := &Negotiation{Conn: c, br: bufio.NewReader(c)}
	var g [18]byte
	if _, err := io.ReadFull(n.br, g[:]); err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[0:]) != nbd.MagicInit || binary.BigEndian.Uint64(g[8:]) != nbd.MagicOption {
		return nil, fmt.Errorf("bad greeting %x", g)
	}
	n.HandshakeFlags = binary.BigEndian.Uint16(g[16:])
	var f [4]byte
	binary.BigEndian.PutUint32(f[:], clientFlags)
	if _, err := c.Write(f[:]); err != nil {
		return nil, fmt.Errorf("send client flags: %w", err)
	}
	return n, nil
}

// NewNegotiation speaks option haggling on c, whose greeting and client
// flags are already exchanged (for a connection a test upgraded itself).
func NewNegotiation(c net.Conn) *Negotiation {
	return &Negotiation{Conn: c, br: bufio.NewReader(c)}
}

// Reader is the buffered reader of the connection: after a successful
// Info(nbd.OptGo, ...) a caller may speak the transmission phase itself by
// writing to Conn and reading from Reader.
func (n *Negotiation) Reader() *bufio.Reader { return n.br }

// StartTLS sends NBD_OPT_STARTTLS and, after the server's NBD_REP_ACK,
// runs the TLS handshake with cfg; option haggling then goes on inside TLS
// (Conn is the TLS connection). A refusal is returned as *OptionError.
func (n *Negotiation) StartTLS(cfg *tls.Config) error {
	if _, err := n.Option(nbd.OptStartTLS, nil); err != nil {
		return err
	}
	if n.br.Buffered() > 0 {
		return errors.New("server sent data after its STARTTLS reply")
	}
	tc := tls.Client(n.Conn, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	n.Conn = tc
	n.br = bufio.NewReader(tc)
	n.structured, n.contexts = false, nil
	return nil
}

// StructuredReply sends NBD_OPT_STRUCTURED_REPLY; after an ACK the
// Client expects structured replies.
func (n *Negotiation) StructuredReply() error {
	if _, err := n.Option(nbd.OptStructuredReply, nil); err != nil {
		return err
	}
	n.structured = true
	return nil
}

// MetaData builds the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
func MetaData(export string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaContexts reads NBD_REP_META_CONTEXT replies: context id (4) | name.
func metaContexts(rs []OptionReply) (map[uint32]string, []string, error) {
	ids := make(map[uint32]string)
	var names []string
	for _, r := range rs {
		if r.Type != nbd.RepMetaContext || len(r.Data) < 5 {
			return nil, nil, fmt.Errorf("unexpected reply type %d (%d bytes) to a meta context option", r.Type, len(r.Data))
		}
		id, name := binary.BigEndian.Uint32(r.Data), string(r.Data[4:])
		ids[id] = name
		names = append(names, name)
	}
	return ids, names, nil
}

// ListMetaContext sends NBD_OPT_LIST_META_CONTEXT and returns the names.
func (n *Negotiation) ListMetaContext(export string, queries ...string) ([]string, error) {
	rs, err := n.Option(nbd.OptListMetaContext, MetaData(export, queries...))
	if err != nil {
		return nil, err
	}
	_, names, err := metaContexts(rs)
	return names, err
}

// SetMetaContext sends NBD_OPT_SET_META_CONTEXT and returns the selected
// contexts by id; a Client entering transmission afterwards knows them.
func (n *Negotiation) SetMetaContext(export string, queries ...string) (map[uint32]string, error) {
	n.contexts = nil
	rs, err := n.Option(nbd.OptSetMetaContext, MetaData(export, queries...))
	if err != nil {
		return nil, err
	}
	ids, names, err := metaContexts(rs)
	if err != nil {
		return nil, err
	}
	if len(ids) != len(names) {
		return nil, fmt.Errorf("context ids not unique: %v", names)
	}
	n.contexts = ids
	return ids, nil
}

// SendOption sends one option with raw data.
func (n *Negotiation) SendOption(opt uint32, data []byte) error {
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint64(b[0:], nbd.MagicOption)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	_, err := n.Conn.Write(append(b, data...))
	return err
}

// ReadOptionReply reads one option reply.
func (n *Negotiation) ReadOptionReply() (OptionReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(n.br, h[:]); err != nil {
		return OptionReply{}, err
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != nbd.MagicOptionReply {
		return OptionReply{}, fmt.Errorf("bad option reply magic %#x", m)
	}
	r := OptionReply{
		Option: binary.BigEndian.Uint32(h[8:]),
		Type:   binary.BigEndian.Uint32(h[12:]),
	}
	r.Data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	if _, err := io.ReadFull(n.br, r.Data); err != nil {
		return r, err
	}
	return r, nil
}

// Option sends opt and reads its replies up to the final one (NBD_REP_ACK or
// an error). It returns the replies before the final one; a final error
// reply is returned as *OptionError.
func (n *Negotiation) Option(opt uint32, data []byte) ([]OptionReply, error) {
	if err := n.SendOption(opt, data); err != nil {
		return nil, err
	}
	var rs []OptionReply
	for {
		r, err := n.ReadOptionReply()
		if err != nil {
			return rs, err
		}
		if r.Option != opt {
			return rs, fmt.Errorf("reply for option %d, want %d", r.Option, opt)
		}
		switch {
		case r.Type == nbd.RepAck:
			return rs, nil
		case r.Type&nbd.RepFlagError != 0:
			return rs, &OptionError{Option: opt, Type: r.Type, Message: string(r.Data)}
		}
		rs = append(rs, r)
	}
}

// ExportInfo is what NBD_OPT_INFO or NBD_OPT_GO told about an export.
type ExportInfo struct {
	Size        int64
	Flags       uint16
	Name        string
	Description string
	// Block size constraints; zero if not sent.
	MinBlock, PrefBlock, MaxBlock uint32
	Replies                       []OptionReply
}

// InfoData builds the data of NBD_OPT_INFO/NBD_OPT_GO.
func InfoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// Info sends opt (nbd.OptInfo or nbd.OptGo) for name, requesting infos.
func (n *Negotiation) Info(opt uint32, name string, infos ...uint16) (ExportInfo, error) {
	rs, err := n.Option(opt, InfoData(name, infos...))
	info := ExportInfo{Replies: rs}
	if err != nil {
		return info, err
	}
	var sawExport bool
	for _, r := range rs {
		if r.Type != nbd.RepInfo || len(r.Data) < 2 {
			return info, fmt.Errorf("unexpected reply type %d (%d bytes)", r.Type, len(r.Data))
		}
		d := r.Data[2:]
		switch binary.BigEndian.Uint16(r.Data) {
		case nbd.InfoExport:
			if len(d) != 10 {
				return info, fmt.Errorf("NBD_INFO_EXPORT of %d bytes", len(d))
			}
			sawExport = true
			info.Size = int64(binary.BigEndian.Uint64(d))
			info.Flags = binary.BigEndian.Uint16(d[8:])
		case nbd.InfoName:
			info.Name = string(d)
		case nbd.InfoDescription:
			info.Description = string(d)
		case nbd.InfoBlockSize:
			if len(d) != 12 {
				return info, fmt.Errorf("NBD_INFO_BLOCK_SIZE of %d bytes", len(d))
			}
			info.MinBlock = binary.BigEndian.Uint32(d)
			info.PrefBlock = binary.BigEndian.Uint32(d[4:])
			info.MaxBlock = binary.BigEndian.Uint32(d[8:])
		}
	}
	if !sawExport {
		return info, errors.New("no NBD_INFO_EXPORT before NBD_REP_ACK")
	}
	return info, nil
}

// Go enters transmission on name with NBD_OPT_GO.
func (n *Negotiation) Go(name string, infos ...uint16) (*Client, error) {
	info, err := n.Info(nbd.OptGo, name, infos...)
	if err != nil {
		return nil, err
	}
	return n.client(info.Size, info.Flags), nil
}

// ExportName enters transmission with NBD_OPT_EXPORT_NAME. noZeroes must
// match the client flags sent (whether 124 zero bytes follow).
func (n *Negotiation) ExportName(name string, noZeroes bool) (*Client, error) {
	if err := n.SendOption(nbd.OptExportName, []byte(name)); err != nil {
		return nil, err
	}
	var b [10 + 124]byte
	m := 10
	if !noZeroes {
		m += 124
	}
	if _, err := io.ReadFull(n.br, b[:m]); err != nil {
		return nil, fmt.Errorf("read export reply: %w", err)
	}
	for _, z := range b[10:m] {
		if z != 0 {
			return nil, errors.New("nonzero padding after NBD_OPT_EXPORT_NAME")
		}
	}
	return n.client(int64(binary.BigEndian.Uint64(b[:])), binary.BigEndian.Uint16(b[8:])), nil
}

// Dial connects to an NBD server and enters transmission on export with
// NBD_OPT_GO (fixed newstyle, no zeroes).
func Dial(network, addr, export string) (*Client, error) {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	cl, err := NewClient(c, export)
	if err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// NewClient negotiates export on c with NBD_OPT_GO.
func NewClient(c net.Conn, export string) (*Client, error) {
	n, err := Negotiate(c, nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes)
	if err != nil {
		return nil, err
	}
	return n.Go(export, nbd.InfoBlockSize)
}

// Client is a connection in the transmission phase. Its methods may be called
// from several goroutines at once; requests are pipelined.
type Client struct {
	Size  int64
	Flags uint16
	// Structured: structured replies were negotiated. Contexts: the
	// metadata contexts selected, by id.
	Structured bool
	Contexts   map[uint32]string

	conn net.Conn
	br   *bufio.Reader

	wmu sync.Mutex // serializes sends

	mu      sync.Mutex
	pending map[uint64]*Call
	next    uint64
	err     error // set when the reply reader stops
	done    chan struct{}
}

func (n *Negotiation) client(size int64, flags uint16) *Client {
	c := &Client{
		Size:       size,
		Flags:      flags,
		Structured: n.structured,
		Contexts:   n.contexts,
		conn:       n.Conn,
		br:         n.br,
		pending:    make(map[uint64]*Call),
		done:       make(chan struct{}),
	}
	go c.readReplies()
	return c
}

// Request is a transmission request. Zero Magic means nbd.MagicRequest; zero
// Cookie means a fresh one. Payload is sent after the header as is (it need
// not match Length). ReplyData is how many data bytes follow a successful
// reply: 0 means Length for NBD_CMD_READ and none otherwise, negative means
// none.
type Request struct {
	Magic     uint32
	Flags     uint16
	Type      uint16
	Cookie    uint64
	Offset    uint64
	Length    uint32
	Payload   []byte
	ReplyData int
	// NoReply: do not wait for a reply (set for NBD_CMD_DISC).
	NoReply bool
}

// Reply is a simple reply, or the chunks of a structured one. For a
// structured reply Error is the first error chunk's (Message its text),
// Data a READ's content assembled from its chunks, Status the extents of
// BLOCK_STATUS chunks by context id.
type Reply struct {
	Error   uint32
	Cookie  uint64
	Data    []byte
	Chunks  []Chunk
	Message string
	Status  map[uint32][]Extent
	Holes   int // bytes sent as OFFSET_HOLE
}

// Chunk is one structured reply chunk.
type Chunk struct {
	Flags, Type uint16
	Payload     []byte
}

// Extent is one block status descriptor.
type Extent struct {
	Len, Flags uint32
}

// Call is a request in flight.
type Call struct {
	Req   Request
	Reply Reply
	Err   error
	Done  chan struct{}
	want  int
}

// Wait waits for the reply. Err is set if the connection ended first.
func (call *Call) Wait() (Reply, error) {
	<-call.Done
	return call.Reply, call.Err
}

// Error is a reply with a nonzero error value (and, in an error chunk, a
// message).
type Error struct {
	Code    uint32
	Message string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd error %d: %s", e.Code, e.Message)
	}
	return fmt.Sprintf("nbd error %d", e.Code)
}

// ErrorCode returns the NBD error value in err, 0 if it carries none.
func ErrorCode(err error) uint32 {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Start sends req and returns at once; Wait on the Call for its reply.
func (c *Client) Start(req Request) (*Call, error) {
	calls, err := c.StartBatch([]Request{req})
	if err != nil {
		return nil, err
	}
	return calls[0], nil
}

// StartBatch sends reqs in one write, so that the server receives them
// together, and returns their Calls in order.
func (c *Client) StartBatch(reqs []Request) ([]*Call, error) {
	calls := make([]*Call, len(reqs))
	var b []byte
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	for i, req := range reqs {
		if req.Magic == 0 {
			req.Magic = nbd.MagicRequest
		}
		if req.Type == nbd.CmdDisc {
			req.NoReply = true
		}
		if req.Cookie == 0 {
			c.next++
			req.Cookie = c.next
		}
		call := &Call{Req: req, Done: make(chan struct{}), want: req.ReplyData}
		switch {
		case req.ReplyData == 0 && req.Type == nbd.CmdRead:
			call.want = int(req.Length)
		case req.ReplyData < 0:
			call.want = 0
		}
		if !req.NoReply {
			if _, dup := c.pending[req.Cookie]; dup {
				for _, prev := range calls[:i] {
					delete(c.pending, prev.Req.Cookie)
				}
				c.mu.Unlock()
				return nil, fmt.Errorf("cookie %d already in flight", req.Cookie)
			}
			c.pending[req.Cookie] = call
		}
		calls[i] = call
		b = binary.BigEndian.AppendUint32(b, req.Magic)
		b = binary.BigEndian.AppendUint16(b, req.Flags)
		b = binary.BigEndian.AppendUint16(b, req.Type)
		b = binary.BigEndian.AppendUint64(b, req.Cookie)
		b = binary.BigEndian.AppendUint64(b, req.Offset)
		b = binary.BigEndian.AppendUint32(b, req.Length)
		b = append(b, req.Payload...)
	}
	c.mu.Unlock()

	c.wmu.Lock()
	_, err := c.conn.Write(b)
	c.wmu.Unlock()
	if err != nil {
		// The reply reader fails the pending calls when the connection ends.
		return nil, fmt.Errorf("send requests: %w", err)
	}
	for _, call := range calls {
		if call.Req.NoReply {
			close(call.Done)
		}
	}
	return calls, nil
}

// CloseWrite half-closes a TCP or unix connection (the server sees EOF).
func (c *Client) CloseWrite() error {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connection cannot half-close")
}

// Do sends req and waits for its reply.
func (c *Client) Do(req Request) (Reply, error) {
	call, err := c.Start(req)
	if err != nil {
		return Reply{}, err
	}
	return call.Wait()
}

// SendRaw writes b to the connection as is (for truncated or garbled
// streams). Replies to requests it contains cannot be matched.
func (c *Client) SendRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(b)
	return err
}

func (c *Client) do(req Request) (Reply, error) {
	r, err := c.Do(req)
	if err == nil && r.Error != 0 {
		err = &Error{Code: r.Error, Message: r.Message}
	}
	return r, err
}

// BlockStatus sends NBD_CMD_BLOCK_STATUS with flags (nbd.CmdFlagReqOne).
func (c *Client) BlockStatus(off, n int64, flags uint16) (Reply, error) {
	return c.do(Request{Type: nbd.CmdBlockStatus, Flags: flags, Offset: uint64(off), Length: uint32(n)})
}

// Read reads len(p) bytes at off.
func (c *Client) Read(p []byte, off int64) error {
	r, err := c.do(Request{Type: nbd.CmdRead, Offset: uint64(off), Length: uint32(len(p))})
	if err == nil {
		copy(p, r.Data)
	}
	return err
}

func fuaFlag(fua bool) uint16 {
	if fua {
		return nbd.CmdFlagFUA
	}
	return 0
}

// Write writes p at off.
func (c *Client) Write(p []byte, off int64, fua bool) error {
	_, err := c.do(Request{Type: nbd.CmdWrite, Flags: fuaFlag(fua), Offset: uint64(off), Length: uint32(len(p)), Payload: p})
	return err
}

// Flush sends NBD_CMD_FLUSH.
func (c *Client) Flush() error {
	_, err := c.do(Request{Type: nbd.CmdFlush})
	return err
}

// Trim sends NBD_CMD_TRIM.
func (c *Client) Trim(off, n int64, fua bool) error {
	_, err := c.do(Request{Type: nbd.CmdTrim, Flags: fuaFlag(fua), Offset: uint64(off), Length: uint32(n)})
	return err
}

// WriteZeroes sends NBD_CMD_WRITE_ZEROES with flags (FUA, NO_HOLE, FAST_ZERO).
func (c *Client) WriteZeroes(off, n int64, flags uint16) error {
	_, err := c.do(Request{Type: nbd.CmdWriteZeroes, Flags: flags, Offset: uint64(off), Length: uint32(n)})
	return err
}

// Cache sends NBD_CMD_CACHE.
func (c *Client) Cache(off, n int64) error {
	_, err := c.do(Request{Type: nbd.CmdCache, Offset: uint64(off), Length: uint32(n)})
	return err
}

// Disc sends NBD_CMD_DISC and waits until the server closes the connection
// (after answering every request in flight), then closes it.
func (c *Client) Disc() error {
	if _, err := c.Start(Request{Type: nbd.CmdDisc}); err != nil {
		return err
	}
	<-c.done
	return c.conn.Close()
}

// Closed is closed when the reply reader stops (the connection ended).
func (c *Client) Closed() <-chan struct{} { return c.done }

// Err is why the reply reader stopped (io.EOF when the server closed
// cleanly), or nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection and waits for the reply reader.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) readReplies() {
	defer close(c.done)
	var err error
	for err == nil {
		err = c.readReply()
	}
	c.mu.Lock()
	c.err = err
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, call := range pending {
		call.Err = err
		close(call.Done)
	}
}

func (c *Client) readReply() error {
	var h [nbd.ChunkHeaderSize]byte
	if _, err := io.ReadFull(c.br, h[:4]); err != nil {
		return err
	}
	switch m := binary.BigEndian.Uint32(h[0:]); {
	case m == nbd.MagicStructuredReply && c.Structured:
		return c.readChunk(h[:])
	case m != nbd.MagicSimpleReply:
		return fmt.Errorf("bad reply magic %#x", m)
	}
	if _, err := io.ReadFull(c.br, h[4:nbd.SimpleReplySize]); err != nil {
		return err
	}
	r := Reply{Error: binary.BigEndian.Uint32(h[4:]), Cookie: binary.BigEndian.Uint64(h[8:])}
	c.mu.Lock()
	call := c.pending[r.Cookie]
	delete(c.pending, r.Cookie)
	c.mu.Unlock()
	if call == nil {
		return fmt.Errorf("reply for unknown cookie %d", r.Cookie)
	}
	if c.Structured && call.Req.Type == nbd.CmdRead {
		call.Err = errors.New("simple reply to a READ although structured replies were negotiated")
		close(call.Done)
		return call.Err
	}
	if r.Error == 0 && call.want > 0 {
		r.Data = make([]byte, call.want)
		if _, err := io.ReadFull(c.br, r.Data); err != nil {
			call.Err = err
			close(call.Done)
			return err
		}
	}
	call.Reply = r
	close(call.Done)
	return nil
}

// maxChunk bounds a chunk's payload (a READ of 32 MiB and its offset).
const maxChunk = 32<<20 + 8

// readChunk reads one structured reply chunk (h holds its magic) and,
// after the final one, completes its call.
func (c *Client) readChunk(h []byte) error {
	if _, err := io.ReadFull(c.br, h[4:nbd.ChunkHeaderSize]); err != nil {
		return err
	}
	ch := Chunk{Flags: binary.BigEndian.Uint16(h[4:]), Type: binary.BigEndian.Uint16(h[6:])}
	cookie := binary.BigEndian.Uint64(h[8:])
	length := binary.BigEndian.Uint32(h[16:])
	if length > maxChunk {
		return fmt.Errorf("chunk of %d bytes", length)
	}
	ch.Payload = make([]byte, length)
	if _, err := io.ReadFull(c.br, ch.Payload); err != nil {
		return err
	}
	c.mu.Lock()
	call := c.pending[cookie]
	if ch.Flags&nbd.ReplyFlagDone != 0 {
		delete(c.pending, cookie)
	}
	c.mu.Unlock()
	if call == nil {
		return fmt.Errorf("chunk (type %d) for unknown cookie %d", ch.Type, cookie)
	}
	call.Reply.Cookie = cookie
	call.Reply.Chunks = append(call.Reply.Chunks, ch)
	if ch.Flags&nbd.ReplyFlagDone == 0 {
		if ch.Type == nbd.ReplyTypeNone {
			return errors.New("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE")
		}
		return nil
	}
	err := call.assemble()
	if err != nil {
		call.Err = err
	}
	close(call.Done)
	return err
}

// assemble checks a structured reply's chunks and fills in Reply.
func (call *Call) assemble() error {
	r := &call.Reply
	req := call.Req
	var covered []([2]uint64)
	place := func(off uint64, n uint64) error {
		if n == 0 || off < req.Offset || off+n > req.Offset+uint64(req.Length) {
			return fmt.Errorf("content chunk %d+%d outside the request %d+%d", off, n, req.Offset, req.Length)
		}
		for _, cv := range covered {
			if off < cv[1] && cv[0] < off+n {
				return fmt.Errorf("content chunk %d+%d overlaps %d..%d", off, n, cv[0], cv[1])
			}
		}
		covered = append(covered, [2]uint64{off, off + n})
		return nil
	}
	if req.Type == nbd.CmdRead {
		r.Data = make([]byte, req.Length)
	}
	var total uint64
	for _, ch := range r.Chunks {
		p := ch.Payload
		switch {
		case ch.Type == nbd.ReplyTypeNone:
			if len(p) != 0 {
				return fmt.Errorf("NBD_REPLY_TYPE_NONE with %d bytes", len(p))
			}
		case ch.Type == nbd.ReplyTypeOffsetData:
			if req.Type != nbd.CmdRead || len(p) < 9 {
				return fmt.Errorf("OFFSET_DATA of %d bytes for command %d", len(p), req.Type)
			}
			off, n := binary.BigEndian.Uint64(p), uint64(len(p)-8)
			if err := place(off, n); err != nil {
				return err
			}
			copy(r.Data[off-req.Offset:], p[8:])
			total += n
		case ch.Type == nbd.ReplyTypeOffsetHole:
			if req.Type != nbd.CmdRead || len(p) != 12 {
				return fmt.Errorf("OFFSET_HOLE of %d bytes for command %d", len(p), req.Type)
			}
			off, n := binary.BigEndian.Uint64(p), uint64(binary.BigEndian.Uint32(p[8:]))
			if err := place(off, n); err != nil {
				return err
			}
			total += n
			r.Holes += int(n)
		case ch.Type == nbd.ReplyTypeBlockStatus:
			if req.Type != nbd.CmdBlockStatus || len(p) < 12 || (len(p)-4)%8 != 0 {
				return fmt.Errorf("BLOCK_STATUS chunk of %d bytes for command %d", len(p), req.Type)
			}
			if r.Status == nil {
				r.Status = make(map[uint32][]Extent)
			}
			id := binary.BigEndian.Uint32(p)
			if _, dup := r.Status[id]; dup {
				return fmt.Errorf("two BLOCK_STATUS chunks for context id %d", id)
			}
			var ext []Extent
			for q := p[4:]; len(q) > 0; q = q[8:] {
				e := Extent{Len: binary.BigEndian.Uint32(q), Flags: binary.BigEndian.Uint32(q[4:])}
				if e.Len == 0 {
					return fmt.Errorf("extent of length 0 for context id %d", id)
				}
				ext = append(ext, e)
			}
			r.Status[id] = ext
		case ch.Type == nbd.ReplyTypeError || ch.Type == nbd.ReplyTypeErrorOffset:
			if len(p) < 6 || int(binary.BigEndian.Uint16(p[4:])) > len(p)-6 {
				return fmt.Errorf("error chunk of %d bytes", len(p))
			}
			errno, ml := binary.BigEndian.Uint32(p), int(binary.BigEndian.Uint16(p[4:]))
			if errno == 0 {
				return errors.New("error chunk with error 0")
			}
			if ch.Type == nbd.ReplyTypeError && len(p) != 6+ml || ch.Type == nbd.ReplyTypeErrorOffset && len(p) != 14+ml {
				return fmt.Errorf("error chunk of %d bytes with a %d-byte message", len(p), ml)
			}
			if r.Error == 0 {
				r.Error, r.Message = errno, string(p[6:6+ml])
			}
		default:
			return fmt.Errorf("unknown chunk type %d", ch.Type)
		}
	}
	if r.Error != 0 {
		return nil
	}
	switch req.Type {
	case nbd.CmdRead:
		if total != uint64(req.Length) {
			return fmt.Errorf("READ %d+%d answered with %d bytes", req.Offset, req.Length, total)
		}
	case nbd.CmdBlockStatus:
		if len(r.Status) == 0 {
			return errors.New("BLOCK_STATUS answered without status chunks")
		}
	}
	return nil
}
