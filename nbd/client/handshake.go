package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"unicode/utf8"
)

// handshake runs the fixed newstyle negotiation up to the transmission phase.
func (c *Client) handshake(opts Options) error {
	if err := c.greet(); err != nil {
		return err
	}
	if opts.TLS != nil {
		if err := c.startTLS(opts.TLS); err != nil {
			return err
		}
	}
	if !opts.NoStructuredReplies {
		t, _, err := c.simpleOption(optStructuredReply, nil)
		switch {
		case err == nil && t == repAck:
			c.structured = true
		case err != nil && !isOptionError(err, repErrUnsup):
			return err
		}
	}
	if len(opts.MetaContexts) > 0 {
		if !c.structured {
			return fmt.Errorf("metadata contexts %q need structured replies, which the server does not offer", opts.MetaContexts)
		}
		err := c.setMetaContexts(opts.MetaContexts)
		if isOptionError(err, repErrUnsup) {
			// A server without metadata contexts: none are selected, and
			// HasMetaContext says so.
			c.log.Debug("nbd server does not support metadata contexts", "err", err)
			err = nil
		}
		if err != nil {
			return err
		}
	}
	return c.goExport()
}

// greet reads the server's greeting and sends the client flags.
func (c *Client) greet() error {
	var g [18]byte
	if err := c.readFull(g[:]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[0:]) != magicInit {
		return protocolErr("greeting starts %x, not NBDMAGIC: is this an NBD server?", g[:8])
	}
	switch binary.BigEndian.Uint64(g[8:]) {
	case magicOption:
	case magicOldstyle:
		return fmt.Errorf("the server speaks the oldstyle handshake, which has no export names; only fixed newstyle servers are supported")
	default:
		return protocolErr("greeting magic %x is neither IHAVEOPT nor oldstyle", g[8:16])
	}
	hf := binary.BigEndian.Uint16(g[16:])
	if hf&flagFixedNewstyle == 0 {
		return fmt.Errorf("the server does not speak fixed newstyle negotiation (handshake flags %#x); it is too old", hf)
	}
	cf := flagCFixedNewstyle
	if hf&flagNoZeroes != 0 {
		cf |= flagCNoZeroes
		c.noZeroes = true
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], cf)
	if _, err := c.conn.Write(b[:]); err != nil {
		return fmt.Errorf("send client flags: %w", err)
	}
	return nil
}

// startTLS upgrades the connection; any refusal is an error.
func (c *Client) startTLS(cfg *tls.Config) error {
	if c.br.Buffered() > 0 {
		return protocolErr("server sent %d unrequested bytes before TLS", c.br.Buffered())
	}
	if _, _, err := c.simpleOption(optStartTLS, nil); err != nil {
		return fmt.Errorf("TLS was asked for: %w", err)
	}
	if c.br.Buffered() > 0 {
		return protocolErr("server sent %d bytes after acknowledging STARTTLS, before the TLS handshake", c.br.Buffered())
	}
	tc := tls.Client(c.conn, cfg)
	if err := tc.HandshakeContext(context.Background()); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.conn = tc
	c.br = bufio.NewReaderSize(tc, c.br.Size())
	c.bw = bufio.NewWriterSize(tc, c.bw.Size())
	return nil
}

// sendOption sends one option with its data.
func (c *Client) sendOption(opt uint32, data []byte) error {
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOption)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	b = append(b, data...)
	if _, err := c.bw.Write(b); err != nil {
		return fmt.Errorf("send %s: %w", optionName(opt), err)
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send %s: %w", optionName(opt), err)
	}
	return nil
}

// readOptionReply reads one reply to opt, its data bounded by MaxOptionReply.
func (c *Client) readOptionReply(opt uint32) (typ uint32, data []byte, err error) {
	var h [optionReplyHeaderSize]byte
	if err := c.readFull(h[:]); err != nil {
		return 0, nil, fmt.Errorf("reply to %s: %w", optionName(opt), err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptionReply {
		return 0, nil, protocolErr("reply to %s has magic %#x", optionName(opt), m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, protocolErr("reply to %s names %s", optionName(opt), optionName(o))
	}
	typ = binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > MaxOptionReply {
		return 0, nil, protocolErr("reply to %s announces %d bytes of data; the client accepts at most %d", optionName(opt), n, MaxOptionReply)
	}
	data = make([]byte, n)
	if err := c.readFull(data); err != nil {
		return 0, nil, fmt.Errorf("reply to %s: %w", optionName(opt), err)
	}
	if typ&repFlagError != 0 {
		return typ, data, &OptionError{Option: opt, Type: typ, Message: printable(data)}
	}
	return typ, data, nil
}

// simpleOption sends an option whose only success reply is NBD_REP_ACK.
func (c *Client) simpleOption(opt uint32, data []byte) (uint32, []byte, error) {
	if err := c.sendOption(opt, data); err != nil {
		return 0, nil, err
	}
	t, d, err := c.readOptionReply(opt)
	if err != nil {
		return t, d, err
	}
	if t != repAck {
		return t, d, protocolErr("reply to %s is type %d, not NBD_REP_ACK", optionName(opt), t)
	}
	return t, d, nil
}

func isOptionError(err error, typ uint32) bool {
	var oe *OptionError
	return errors.As(err, &oe) && oe.Type == typ
}

// metaContextData encodes export name and queries for
// NBD_OPT_{SET,LIST}_META_CONTEXT.
func metaContextData(export string, queries []string) ([]byte, error) {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		if len(q) > maxStringLen || !utf8.ValidString(q) {
			return nil, fmt.Errorf("metadata context query %q: not a UTF-8 string of at most %d bytes", q, maxStringLen)
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b, nil
}

// metaContextReplies reads NBD_REP_META_CONTEXT replies up to the final one.
func (c *Client) metaContextReplies(opt uint32, each func(id uint32, name string) error) error {
	for i := 0; ; i++ {
		t, d, err := c.readOptionReply(opt)
		if err != nil {
			return err
		}
		switch t {
		case repAck:
			return nil
		case repMetaContext:
		default:
			return protocolErr("reply to %s is type %d", optionName(opt), t)
		}
		if i >= MaxOptionReplies {
			return protocolErr("more than %d replies to %s", MaxOptionReplies, optionName(opt))
		}
		if len(d) < 5 || len(d)-4 > maxStringLen || !utf8.Valid(d[4:]) {
			return protocolErr("NBD_REP_META_CONTEXT of %d bytes: want a context id and a UTF-8 name of 1..%d bytes", len(d), maxStringLen)
		}
		if err := each(binary.BigEndian.Uint32(d), string(d[4:])); err != nil {
			return err
		}
	}
}

// setMetaContexts selects the contexts named by queries.
func (c *Client) setMetaContexts(queries []string) error {
	data, err := metaContextData(c.export, queries)
	if err != nil {
		return err
	}
	if err := c.sendOption(optSetMetaContext, data); err != nil {
		return err
	}
	return c.metaContextReplies(optSetMetaContext, func(id uint32, name string) error {
		if _, dup := c.ctxByID[id]; dup {
			return protocolErr("server gave context id %d twice", id)
		}
		if _, dup := c.ctxByName[name]; dup {
			return protocolErr("server selected context %q twice", name)
		}
		c.ctxByID[id], c.ctxByName[name] = name, id
		c.log.Debug("nbd meta context", "name", name, "id", id)
		return nil
	})
}

// goExport sends NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME on a
// server without it) and reads the export's size and flags.
func (c *Client) goExport() error {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(c.export)))
	data = append(data, c.export...)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	if err := c.sendOption(optGo, data); err != nil {
		return err
	}
	gotExport := false
	for i := 0; ; i++ {
		t, d, err := c.readOptionReply(optGo)
		if isOptionError(err, repErrUnsup) {
			return c.exportName()
		}
		if err != nil {
			return err
		}
		if t == repAck {
			if !gotExport {
				return protocolErr("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return nil
		}
		if t != repInfo {
			return protocolErr("reply to NBD_OPT_GO is type %d", t)
		}
		if i >= MaxOptionReplies {
			return protocolErr("more than %d NBD_REP_INFO replies", MaxOptionReplies)
		}
		if len(d) < 2 {
			return protocolErr("NBD_REP_INFO of %d bytes", len(d))
		}
		switch binary.BigEndian.Uint16(d) {
		case infoExport:
			if len(d) != 12 {
				return protocolErr("NBD_INFO_EXPORT of %d bytes, want 12", len(d))
			}
			if err := c.setExport(binary.BigEndian.Uint64(d[2:]), binary.BigEndian.Uint16(d[10:])); err != nil {
				return err
			}
			gotExport = true
		case infoBlockSize:
			if len(d) != 14 {
				return protocolErr("NBD_INFO_BLOCK_SIZE of %d bytes, want 14", len(d))
			}
			if err := c.setBlockSize(binary.BigEndian.Uint32(d[2:]), binary.BigEndian.Uint32(d[6:]), binary.BigEndian.Uint32(d[10:])); err != nil {
				return err
			}
		}
	}
}

// exportName ends the negotiation the old way, for servers without NBD_OPT_GO.
func (c *Client) exportName() error {
	c.log.Debug("nbd server lacks NBD_OPT_GO; using NBD_OPT_EXPORT_NAME")
	if err := c.sendOption(optExportName, []byte(c.export)); err != nil {
		return err
	}
	var b [10]byte
	if err := c.readFull(b[:]); err != nil {
		return fmt.Errorf("NBD_OPT_EXPORT_NAME %q (the server closes the connection for an unknown export): %w", c.export, err)
	}
	if err := c.setExport(binary.BigEndian.Uint64(b[0:]), binary.BigEndian.Uint16(b[8:])); err != nil {
		return err
	}
	// Without NBD_FLAG_C_NO_ZEROES (the server did not offer it) 124 zero
	// bytes follow.
	if !c.noZeroes {
		if err := c.discard(124); err != nil {
			return fmt.Errorf("NBD_OPT_EXPORT_NAME padding: %w", err)
		}
	}
	return nil
}

func (c *Client) setExport(size uint64, flags uint16) error {
	if size > math.MaxInt64 {
		return protocolErr("export size %d exceeds 2^63-1", size)
	}
	if flags&FlagHasFlags == 0 {
		return protocolErr("transmission flags %#x lack NBD_FLAG_HAS_FLAGS", flags)
	}
	c.size, c.flags = int64(size), flags
	return nil
}

func (c *Client) setBlockSize(minimum, preferred, maximum uint32) error {
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	if !pow2(minimum) || minimum > 64<<10 || !pow2(preferred) || preferred < max(minimum, 512) ||
		maximum < preferred || maximum%minimum != 0 {
		return protocolErr("block size constraints min %d, preferred %d, max %d break the spec's rules", minimum, preferred, maximum)
	}
	c.blockMin, c.blockPref, c.blockMax = minimum, preferred, maximum
	return nil
}

// printable is a server's message made safe to print.
func printable(b []byte) string {
	if len(b) > maxStringLen {
		b = b[:maxStringLen]
	}
	s := []rune(string(b))
	for i, r := range s {
		if r == utf8.RuneError || (r < 0x20 && r != '\t') || r == 0x7f {
			s[i] = '?'
		}
	}
	return string(s)
}

// Export describes one export listed by NBD_OPT_LIST.
type Export struct {
	Name, Description string
}

// List asks the server at network/address for its exports (NBD_OPT_LIST),
// then ends the session with NBD_OPT_ABORT.
func List(ctx context.Context, network, address string, tlsConfig *tls.Config) ([]Export, error) {
	var out []Export
	err := negotiateOnly(ctx, network, address, tlsConfig, func(c *Client) error {
		if err := c.sendOption(optList, nil); err != nil {
			return err
		}
		for i := 0; ; i++ {
			t, d, err := c.readOptionReply(optList)
			if err != nil {
				return err
			}
			if t == repAck {
				return nil
			}
			if t != repServer {
				return protocolErr("reply to NBD_OPT_LIST is type %d", t)
			}
			if i >= MaxOptionReplies {
				return protocolErr("more than %d exports listed", MaxOptionReplies)
			}
			if len(d) < 4 || uint64(binary.BigEndian.Uint32(d)) > uint64(len(d)-4) {
				return protocolErr("NBD_REP_SERVER of %d bytes with a bad name length", len(d))
			}
			n := binary.BigEndian.Uint32(d)
			out = append(out, Export{Name: printable(d[4 : 4+n]), Description: printable(d[4+n:])})
		}
	})
	return out, err
}

// ListMetaContexts asks which metadata contexts export offers that match
// queries (all of them when there are none), with NBD_OPT_LIST_META_CONTEXT.
func ListMetaContexts(ctx context.Context, network, address string, tlsConfig *tls.Config, export string, queries ...string) ([]string, error) {
	var out []string
	err := negotiateOnly(ctx, network, address, tlsConfig, func(c *Client) error {
		if _, _, err := c.simpleOption(optStructuredReply, nil); err != nil {
			return fmt.Errorf("listing metadata contexts needs structured replies: %w", err)
		}
		data, err := metaContextData(export, queries)
		if err != nil {
			return err
		}
		if err := c.sendOption(optListMetaContext, data); err != nil {
			return err
		}
		return c.metaContextReplies(optListMetaContext, func(_ uint32, name string) error {
			out = append(out, name)
			return nil
		})
	})
	return out, err
}

// negotiateOnly connects, greets, runs fn in option haggling and aborts.
func negotiateOnly(ctx context.Context, network, address string, tlsConfig *tls.Config, fn func(*Client) error) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return fmt.Errorf("nbd dial %s %s: %w", network, address, err)
	}
	defer conn.Close()
	tlsConfig = serverName(tlsConfig, network, address)
	c := &Client{conn: conn, raw: conn, br: bufio.NewReaderSize(conn, 64<<10), bw: bufio.NewWriterSize(conn, 4<<10)}
	done := c.arm(ctx)
	err = c.greet()
	if err == nil && tlsConfig != nil {
		err = c.startTLS(tlsConfig)
	}
	if err == nil {
		err = fn(c)
	}
	if err == nil {
		// A soft disconnect; the server may or may not acknowledge it.
		if err = c.sendOption(optAbort, nil); err == nil {
			c.readOptionReply(optAbort)
		}
	}
	if cerr := done(); err != nil && cerr != nil {
		err = fmt.Errorf("%w (%v)", cerr, err)
	}
	if err != nil {
		return fmt.Errorf("nbd %s %s: %w", network, address, err)
	}
	return nil
}
