package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/repd/repd/internal/loglimit"
)

// Export is one named device the server offers.
type Export struct {
	// Name is what clients ask for. A client asking for "" gets the export
	// named "" if there is one, else the first export.
	Name        string
	Description string
	Device      Device
	// ReadOnly advertises NBD_FLAG_READ_ONLY; writes, trims and zeroes are
	// refused with NBD_EPERM (a write's payload is still read).
	ReadOnly bool
}

// Default limits; a zero field in Server means the default.
const (
	DefaultMaxPayload       = 32 << 20
	DefaultMaxInFlight      = 64
	DefaultMaxInFlightBytes = 64 << 20
	DefaultMaxReplyBacklog  = 16 << 20
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultWriteTimeout     = 30 * time.Second
	DefaultMaxConns         = 64
	DefaultMaxHandshakes    = 16
	DefaultMaxMetaContexts  = 16
	DefaultMaxExtents       = 16 << 10
	DefaultMaxStatusLength  = 1 << 30
	maxOptionLength         = 64 << 10
	// maxMetaQueries bounds the queries of one NBD_OPT_LIST_META_CONTEXT
	// or NBD_OPT_SET_META_CONTEXT (more: NBD_REP_ERR_TOO_BIG); each is
	// matched against every context the export offers.
	maxMetaQueries = 256
)

// TLSMode says whether a connection must, may or cannot upgrade to TLS with
// NBD_OPT_STARTTLS (the spec's FORCEDTLS, SELECTIVETLS and NOTLS modes).
type TLSMode int

const (
	// TLSOff (NOTLS): NBD_OPT_STARTTLS is refused with NBD_REP_ERR_POLICY.
	TLSOff TLSMode = iota
	// TLSAllow (SELECTIVETLS, no export TLS-only): a client may upgrade
	// with NBD_OPT_STARTTLS or stay plain.
	TLSAllow
	// TLSRequire (FORCEDTLS): every option before NBD_OPT_STARTTLS other
	// than NBD_OPT_ABORT is refused with NBD_REP_ERR_TLS_REQD, and
	// NBD_OPT_EXPORT_NAME (which cannot be refused) ends the session.
	TLSRequire
)

func (m TLSMode) String() string {
	switch m {
	case TLSOff:
		return "off"
	case TLSAllow:
		return "allow"
	case TLSRequire:
		return "require"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// ErrTooManyConns is returned by ServeConn for a connection refused because
// MaxConns connections are served, or MaxHandshakes are negotiating.
var ErrTooManyConns = errors.New("nbd: too many connections")

// Server serves exports over NBD. Its zero value with Exports set is ready to
// use; it starts no goroutines until Serve or ServeConn. The fields must not
// change once serving has begun (use ExportsFunc for a changing list).
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, CAN_MULTI_CONN and
// SEND_CACHE always; READ_ONLY for a read-only export, else SEND_WRITE_ZEROES
// and SEND_FAST_ZERO, and SEND_TRIM when the Device is a Trimmer.
// CAN_MULTI_CONN holds because Device.Flush covers every completed write,
// whichever connection it came from. Block sizes advertised: minimum 1,
// preferred 4096, maximum MaxPayload.
type Server struct {
	// Exports is the list offered to clients.
	Exports []Export
	// ExportsFunc, if set, replaces Exports: it is called at each option
	// that needs the list, so exports may come and go while serving.
	ExportsFunc func() []Export

	// Logger receives connection events (Info), refused requests and
	// Device errors (Debug) and recovered panics (Error). nil discards.
	Logger *slog.Logger

	// MaxPayload bounds the length of READ and WRITE requests (default
	// 32 MiB). A longer READ gets NBD_EINVAL; a longer WRITE gets
	// NBD_EINVAL and the connection is closed, since its payload is not
	// read. It is advertised as the maximum block size, which the spec
	// wants at least 4096 (the preferred size) on exports that large.
	MaxPayload int
	// MaxInFlight bounds the requests one connection has at the Device at
	// once (default 64); it is also the size of the connection's worker pool.
	MaxInFlight int
	// MaxInFlightBytes bounds the payload bytes one connection holds at once
	// (default 64 MiB), each request's counted as the buffer it takes (its
	// length rounded up to a power of two, 4 KiB at least; for
	// NBD_CMD_BLOCK_STATUS its largest possible reply's, plus one Device
	// answer of MaxExtents extents); a single larger request is still
	// admitted alone.
	MaxInFlightBytes int
	// MaxReplyBacklog bounds the reply bytes one connection has queued for
	// its socket but not yet written (default 16 MiB). At the bound the
	// reader stops taking requests until the client reads; a single larger
	// reply is still sent.
	MaxReplyBacklog int
	// HandshakeTimeout bounds the handshake: option haggling and the TLS
	// handshake together (default 30s; negative: none).
	HandshakeTimeout time.Duration
	// WriteTimeout ends a connection whose client takes no reply bytes for
	// this long (default 30s; negative: none): its requests' buffers are
	// freed and its workers return.
	WriteTimeout time.Duration
	// MaxConns bounds the connections served at once, in any phase
	// (default 64); MaxHandshakes bounds those still negotiating (default
	// 16). A connection beyond either is closed at once, before the
	// greeting, and logged (at most one line a second).
	MaxConns      int
	MaxHandshakes int

	// MaxMetaContexts bounds the metadata contexts one connection may
	// select with NBD_OPT_SET_META_CONTEXT (default 16; more: the option
	// fails with NBD_REP_ERR_TOO_BIG): each NBD_CMD_BLOCK_STATUS asks the
	// Device about every one.
	MaxMetaContexts int
	// MaxExtents bounds the extents sent per context in one
	// NBD_CMD_BLOCK_STATUS reply (default 16384, 128 KiB); the client asks
	// again for the rest.
	MaxExtents int
	// MaxStatusLength bounds the range one NBD_CMD_BLOCK_STATUS asks the
	// Device about (default 1 GiB); a longer request is answered for its
	// first MaxStatusLength bytes, as the spec allows.
	MaxStatusLength int64

	// TLS is the server's TLS configuration: its certificate, and ClientCAs
	// with ClientAuth = tls.RequireAndVerifyClientCert for mutual TLS (see
	// TLSConfig). It is used when a client sends NBD_OPT_STARTTLS and
	// TLSMode is not TLSOff.
	TLS     *tls.Config
	TLSMode TLSMode

	// OnRequest, if set, is called after each request has been answered
	// (not for NBD_CMD_DISC) with the command name ("read", "write",
	// "flush", "trim", "cache", "write_zeroes", "block_status" or
	// "unknown"), its length, the time from parse to reply, and the error
	// answered (nil on success). It runs on the connection's goroutines
	// and must be quick.
	OnRequest func(cmd string, n int64, dur time.Duration, err error)

	mu          sync.Mutex
	shutdown    bool
	listeners   map[net.Listener]struct{}
	conns       map[*conn]struct{}
	handshaking int              // conns still negotiating
	closeSeq    uint64           // CloseExport calls so far
	refusedLog  loglimit.Limiter // a line a second for refused connections
	endedLog    loglimit.Limiter // a line a second for failed negotiations
	wg          sync.WaitGroup   // Serve calls and connections
}

// check refuses a configuration the server cannot serve.
func (s *Server) check() error {
	switch s.TLSMode {
	case TLSOff:
	case TLSAllow, TLSRequire:
		if s.TLS == nil || (len(s.TLS.Certificates) == 0 && s.TLS.GetCertificate == nil && s.TLS.GetConfigForClient == nil) {
			return fmt.Errorf("nbd: TLS mode %s needs Server.TLS with a certificate", s.TLSMode)
		}
	default:
		return fmt.Errorf("nbd: unknown %v", s.TLSMode)
	}
	return nil
}

// Serve accepts connections on l and serves each in its own goroutine until l
// fails or is closed, ctx is done, or Shutdown is called. Then it stops its
// connections (gracefully, see Shutdown; when ctx is done the Devices see a
// cancelled context too), waits for their goroutines and returns:
// ErrServerClosed after Shutdown, ctx.Err() when ctx is done, else the
// Accept error.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if err := s.check(); err != nil {
		l.Close()
		return err
	}
	if !s.track(func() {
		if s.listeners == nil {
			s.listeners = make(map[net.Listener]struct{})
		}
		s.listeners[l] = struct{}{}
	}) {
		l.Close()
		return ErrServerClosed
	}
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		s.wg.Done()
	}()

	stopListening := context.AfterFunc(ctx, func() { l.Close() })
	defer stopListening()
	// stopCtx stops this Serve's connections when the accept loop ends;
	// their Devices keep ctx so that in-flight requests finish normally.
	stopCtx, stopConns := context.WithCancel(ctx)
	defer stopConns()

	var wg sync.WaitGroup
	var err error
	var delay time.Duration
	for {
		nc, aerr := l.Accept()
		if aerr != nil {
			var ne net.Error
			if errors.As(aerr, &ne) && ne.Timeout() && ctx.Err() == nil && !s.closing() {
				// Transient (e.g. EMFILE reported as timeout): back off.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
				continue
			}
			switch {
			case s.closing():
				err = ErrServerClosed
			case ctx.Err() != nil:
				err = ctx.Err()
			default:
				err = aerr
			}
			break
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, stopCtx, nc)
		}()
	}
	stopConns()
	wg.Wait()
	return err
}

// ServeConn serves one connection until the client disconnects, the
// connection fails, ctx is done or Shutdown is called, and closes it. It
// returns nil after a clean end (NBD_OPT_ABORT, NBD_CMD_DISC, EOF between
// requests, or a stop) and the reason otherwise (ErrTooManyConns for a
// connection beyond MaxConns or MaxHandshakes).
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	if err := s.check(); err != nil {
		nc.Close()
		return err
	}
	return s.serveConn(ctx, ctx, nc)
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading requests on every connection, lets requests already read finish and
// be answered (complete requests still buffered are answered NBD_ESHUTDOWN),
// then closes the connections. If ctx ends first, it closes the connections at
// once, cancels the context given to the Devices, and returns ctx.Err() once
// every goroutine has exited (a Device that ignores its context delays
// that). Serve and ServeConn return ErrServerClosed afterwards.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.kill()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// track registers a Serve call or a connection unless shutting down.
func (s *Server) track(add func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	add()
	s.wg.Add(1)
	return true
}

func (s *Server) serveConn(devCtx, stopCtx context.Context, nc net.Conn) error {
	c := newConn(s, devCtx, nc)
	var refused error
	if !s.track(func() {
		if refused = s.admit(c); refused != nil {
			return
		}
		if s.conns == nil {
			s.conns = make(map[*conn]struct{})
		}
		s.conns[c] = struct{}{}
		s.handshaking++
		c.handshaking = true
	}) {
		nc.Close()
		c.cancel()
		return ErrServerClosed
	}
	if refused != nil {
		s.wg.Done()
		nc.Close()
		c.cancel()
		return refused
	}
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		if c.handshaking {
			s.handshaking--
		}
		s.mu.Unlock()
		close(c.ended)
		s.wg.Done()
	}()
	stopped := make(chan struct{})
	stopAfter := context.AfterFunc(stopCtx, func() {
		defer close(stopped)
		c.stop()
	})
	defer func() {
		if !stopAfter() {
			<-stopped
		}
	}()

	err := c.serve()
	if s.closing() && err == nil {
		err = ErrServerClosed
	}
	return err
}

// admit decides, under s.mu, whether c may be served: a connection beyond
// MaxConns or MaxHandshakes is refused and counted for the log.
func (s *Server) admit(c *conn) error {
	var err error
	switch {
	case len(s.conns) >= s.maxConns():
		err = fmt.Errorf("%w: %d connections served (the limit)", ErrTooManyConns, len(s.conns))
	case s.handshaking >= s.maxHandshakes():
		err = fmt.Errorf("%w: %d connections negotiating (the limit)", ErrTooManyConns, s.handshaking)
	default:
		return nil
	}
	s.refusedLog.Log(c.log, slog.LevelWarn, "refused_since_last_log", "nbd: connection refused", "err", err)
	return err
}

// endHandshake stops counting c as negotiating.
func (s *Server) endHandshake(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.handshaking {
		c.handshaking = false
		s.handshaking--
	}
}

// enter looks up the export c asks for to enter transmission (name as
// sent) and, if found, records c as serving it, so that CloseExport finds
// it. A CloseExport that ran during the lookup makes it look again: the
// export may have been taken out of the list just before.
func (s *Server) enter(c *conn, name string) (Export, bool) {
	for range 100 {
		s.mu.Lock()
		seq := s.closeSeq
		s.mu.Unlock()
		e, found := s.lookup(name)
		s.mu.Lock()
		if s.closeSeq == seq {
			c.serving, c.transmitting = e.Name, found
			s.mu.Unlock()
			return e, found
		}
		s.mu.Unlock()
	}
	return Export{}, false
}

// CloseExport ends the connections in transmission on the export named
// name, as Shutdown ends all of them: each stops reading requests, answers
// those already read (complete requests still buffered get NBD_ESHUTDOWN)
// and closes. It returns once they have ended; if ctx ends first it closes
// them at once, cancels the context their Device calls got, and returns
// ctx.Err() once their goroutines have exited (a Device that ignores its
// context delays that).
//
// Take the export out of Exports or ExportsFunc's list first (a snapshot
// being deleted): then no connection enters it afterwards, and once
// CloseExport returns the server no longer calls its Device.
func (s *Server) CloseExport(ctx context.Context, name string) error {
	s.mu.Lock()
	s.closeSeq++
	var ending []*conn
	for c := range s.conns {
		if c.transmitting && c.serving == name {
			ending = append(ending, c)
			c.stop()
		}
	}
	s.mu.Unlock()
	for i, c := range ending {
		select {
		case <-c.ended:
			continue
		case <-ctx.Done():
		}
		for _, c := range ending[i:] {
			c.kill()
		}
		for _, c := range ending[i:] {
			<-c.ended
		}
		return ctx.Err()
	}
	return nil
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) exports() []Export {
	if s.ExportsFunc != nil {
		return s.ExportsFunc()
	}
	return s.Exports
}

// lookup finds an export by name; "" falls back to the first export.
func (s *Server) lookup(name string) (Export, bool) {
	exps := s.exports()
	for _, e := range exps {
		if e.Name == name && e.Device != nil {
			return e, true
		}
	}
	if name == "" && len(exps) > 0 && exps[0].Device != nil {
		return exps[0], true
	}
	return Export{}, false
}

// orDefault is v if it is set (positive), else def.
func orDefault[T int | int64](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

func (s *Server) maxPayload() int  { return orDefault(s.MaxPayload, DefaultMaxPayload) }
func (s *Server) maxInFlight() int { return orDefault(s.MaxInFlight, DefaultMaxInFlight) }
func (s *Server) maxInFlightBytes() int64 {
	return int64(orDefault(s.MaxInFlightBytes, DefaultMaxInFlightBytes))
}
func (s *Server) maxReplyBacklog() int64 {
	return int64(orDefault(s.MaxReplyBacklog, DefaultMaxReplyBacklog))
}
func (s *Server) maxConns() int          { return orDefault(s.MaxConns, DefaultMaxConns) }
func (s *Server) maxHandshakes() int     { return orDefault(s.MaxHandshakes, DefaultMaxHandshakes) }
func (s *Server) maxMetaContexts() int   { return orDefault(s.MaxMetaContexts, DefaultMaxMetaContexts) }
func (s *Server) maxExtents() int        { return orDefault(s.MaxExtents, DefaultMaxExtents) }
func (s *Server) maxStatusLength() int64 { return orDefault(s.MaxStatusLength, DefaultMaxStatusLength) }

// The timeouts are zero for the default; a negative one is none.
func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout == 0 {
		return DefaultWriteTimeout
	}
	return s.WriteTimeout
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout == 0 {
		return DefaultHandshakeTimeout
	}
	return s.HandshakeTimeout
}
