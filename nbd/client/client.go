package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a connection.
type Options struct {
	// Export is the export name (NBD_OPT_GO). DialURI takes it from the URI.
	Export string
	// TLS, when set, makes NBD_OPT_STARTTLS the first option; a server that
	// refuses it is an error (no silent downgrade). An empty ServerName is
	// taken from the host dialed ("localhost" for a unix socket).
	TLS *tls.Config
	// MetaContexts are selected with NBD_OPT_SET_META_CONTEXT (they need
	// structured replies). A context the server does not offer is simply
	// absent from Client.MetaContexts: check with HasMetaContext.
	MetaContexts []string
	// NoStructuredReplies skips NBD_OPT_STRUCTURED_REPLY (reads then get
	// simple replies and block status is unavailable).
	NoStructuredReplies bool
	// MaxRequest is the largest READ sent (default 4 MiB; never above the
	// server's maximum block size, nor 32 MiB).
	MaxRequest int
	// InFlight is how many requests one call pipelines (default 8).
	InFlight int
	// Logger receives debug lines about the negotiation (default: none).
	Logger *slog.Logger
}

// Stats counts what a Client asked and received.
type Stats struct {
	Requests    int64 // requests sent (READ and BLOCK_STATUS)
	ReadBytes   int64 // bytes asked for by READ requests
	DataBytes   int64 // data bytes received (simple replies and OFFSET_DATA chunks)
	HoleBytes   int64 // bytes reported as holes (OFFSET_HOLE chunks)
	StatusCalls int64 // BLOCK_STATUS requests
}

// Client is one NBD connection in the transmission phase. Its methods may be
// called from several goroutines; they take turns on the connection (a
// single call pipelines its own requests). It starts no goroutines.
type Client struct {
	conn net.Conn // the stream: raw, or TLS over raw
	raw  net.Conn // the socket, for deadlines
	br   *bufio.Reader
	bw   *bufio.Writer
	log  *slog.Logger

	export     string
	size       int64
	flags      uint16
	structured bool
	noZeroes   bool
	blockMin   uint32
	blockPref  uint32
	blockMax   uint32
	maxRequest int
	inFlight   int
	ctxByName  map[string]uint32
	ctxByID    map[uint32]string

	mu     sync.Mutex // serialises use of the connection
	cookie uint64
	broken error // set once the stream is unusable; every later call returns it

	requests, readBytes, dataBytes, holeBytes, statusCalls atomic.Int64
}

// DialURI connects to the export an NBD URI names (see ParseURI). An nbds
// URI needs opts.TLS; opts.Export is replaced by the URI's export.
func DialURI(ctx context.Context, uri string, opts Options) (*Client, error) {
	t, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if t.TLS && opts.TLS == nil {
		return nil, fmt.Errorf("nbd URI %q asks for TLS (nbds): give a TLS configuration (CA certificate)", uri)
	}
	if !t.TLS && opts.TLS != nil {
		return nil, fmt.Errorf("nbd URI %q is plain nbd:// but a TLS configuration was given: write nbds:// to use TLS", uri)
	}
	opts.Export = t.Export
	return Dial(ctx, t.Network, t.Address, opts)
}

// Dial connects to network ("tcp" or "unix") address and negotiates
// opts.Export. The context bounds the dial and the handshake.
func Dial(ctx context.Context, network, address string, opts Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd dial %s %s: %w", network, address, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	opts.TLS = serverName(opts.TLS, network, address)
	c, err := New(ctx, conn, opts)
	if err != nil {
		return nil, fmt.Errorf("nbd %s %s export %q: %w", network, address, opts.Export, err)
	}
	return c, nil
}

// serverName fills in the name the server's certificate must carry when
// cfg leaves it empty: the host dialed, or "localhost" for a unix socket.
func serverName(cfg *tls.Config, network, address string) *tls.Config {
	if cfg == nil || cfg.ServerName != "" || cfg.InsecureSkipVerify {
		return cfg
	}
	cfg = cfg.Clone()
	cfg.ServerName = "localhost"
	if network == "tcp" {
		cfg.ServerName, _, _ = net.SplitHostPort(address)
	}
	return cfg
}

// New negotiates opts.Export over conn, which it owns from then on (it is
// closed on failure).
func New(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	c := &Client{
		conn:      conn,
		raw:       conn,
		br:        bufio.NewReaderSize(conn, 64<<10),
		bw:        bufio.NewWriterSize(conn, 4<<10),
		log:       opts.Logger,
		export:    opts.Export,
		ctxByName: map[string]uint32{},
		ctxByID:   map[uint32]string{},
		blockMin:  1,
		blockPref: 4096,
		blockMax:  32 << 20,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if len(opts.Export) > maxStringLen {
		conn.Close()
		return nil, fmt.Errorf("export name of %d bytes: the protocol allows at most %d", len(opts.Export), maxStringLen)
	}
	done := c.arm(ctx)
	err := c.handshake(opts)
	if cerr := done(); err != nil && cerr != nil {
		err = fmt.Errorf("%w (%v)", cerr, err)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.maxRequest = 4 << 20
	if opts.MaxRequest > 0 {
		c.maxRequest = opts.MaxRequest
	}
	c.maxRequest = min(c.maxRequest, int(c.blockMax), 32<<20)
	if c.blockMin > 1 {
		c.maxRequest -= c.maxRequest % int(c.blockMin)
	}
	c.inFlight = 8
	if opts.InFlight > 0 {
		c.inFlight = min(opts.InFlight, 256)
	}
	return c, nil
}

// arm applies ctx to the connection: its deadline, and cancellation by
// moving the deadline into the past. The returned function disarms it (once
// it returns, ctx no longer touches the socket) and returns ctx.Err().
func (c *Client) arm(ctx context.Context) func() error {
	raw := c.raw
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	} else {
		raw.SetDeadline(time.Time{})
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		raw.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() error {
		if !stop() {
			<-fired
		}
		raw.SetDeadline(time.Time{})
		if err := ctx.Err(); err != nil {
			return err
		}
		// The socket's deadline may pass a moment before ctx's timer fires.
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
			return context.DeadlineExceeded
		}
		return nil
	}
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// Export is the export's name as asked for.
func (c *Client) Export() string { return c.export }

// TransmissionFlags are the export's flags (FlagReadOnly, ...).
func (c *Client) TransmissionFlags() uint16 { return c.flags }

// ReadOnly reports whether the server announced a read-only export.
func (c *Client) ReadOnly() bool { return c.flags&FlagReadOnly != 0 }

// Structured reports whether structured replies were negotiated.
func (c *Client) Structured() bool { return c.structured }

// BlockSize is the server's block size constraints (minimum, preferred,
// maximum; the spec's defaults 1, 4096, 32 MiB when it sent none).
func (c *Client) BlockSize() (minimum, preferred, maximum int) {
	return int(c.blockMin), int(c.blockPref), int(c.blockMax)
}

// MetaContexts are the metadata contexts the server selected.
func (c *Client) MetaContexts() []string {
	out := make([]string, 0, len(c.ctxByName))
	for n := range c.ctxByName {
		out = append(out, n)
	}
	return out
}

// HasMetaContext reports whether the server selected the context name.
func (c *Client) HasMetaContext(name string) bool {
	_, ok := c.ctxByName[name]
	return ok
}

// Stats returns the counters so far.
func (c *Client) Stats() Stats {
	return Stats{
		Requests:    c.requests.Load(),
		ReadBytes:   c.readBytes.Load(),
		DataBytes:   c.dataBytes.Load(),
		HoleBytes:   c.holeBytes.Load(),
		StatusCalls: c.statusCalls.Load(),
	}
}

// Close sends NBD_CMD_DISC (unless the connection is broken) and closes the
// connection. It waits for no reply: there is none.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		// Closed already, or closed when the stream broke.
		c.broken = ErrClosed
		return nil
	}
	c.broken = ErrClosed
	c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	var req [requestSize]byte
	putRequest(req[:], cmdDisc, 0, c.nextCookie(), 0, 0)
	c.bw.Write(req[:])
	c.bw.Flush()
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("nbd close: %w", err)
	}
	return nil
}

// fail marks the connection unusable and closes it.
func (c *Client) fail(err error) error {
	if c.broken == nil {
		c.broken = err
		c.conn.Close()
	}
	return err
}

func (c *Client) nextCookie() uint64 {
	c.cookie++
	return c.cookie
}

// readFull reads exactly len(p) bytes of the server's stream.
func (c *Client) readFull(p []byte) error {
	if _, err := io.ReadFull(c.br, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read from server: %w", err)
	}
	return nil
}

// discard skips n bytes of the server's stream.
func (c *Client) discard(n int64) error {
	if _, err := io.CopyN(io.Discard, c.br, n); err != nil {
		return fmt.Errorf("read from server: %w", err)
	}
	return nil
}
