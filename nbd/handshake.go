package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

var errAbort = errors.New("nbd: client aborted negotiation")

// negotiate runs the fixed newstyle handshake and option haggling. ok is true
// when the client entered transmission on exp. It returns !ok with a nil
// error after NBD_OPT_ABORT or an EOF before the first option.
func (c *conn) negotiate() (exp Export, ok bool, err error) {
	if d := c.srv.handshakeTimeout(); d > 0 {
		c.setReadDeadline(time.Now().Add(d))
		c.sock.SetWriteDeadline(time.Now().Add(d))
	}

	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:], MagicInit)
	binary.BigEndian.PutUint64(greet[8:], MagicOption)
	binary.BigEndian.PutUint16(greet[16:], FlagFixedNewstyle|FlagNoZeroes)
	c.bw.Write(greet[:])
	if err := c.bw.Flush(); err != nil {
		return exp, false, fmt.Errorf("send greeting: %w", err)
	}

	var b [16]byte
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return exp, false, fmt.Errorf("read client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if unknown := cflags &^ (FlagCFixedNewstyle | FlagCNoZeroes); unknown != 0 {
		return exp, false, fmt.Errorf("unknown client flags %#x", unknown)
	}
	fixed := cflags&FlagCFixedNewstyle != 0
	noZeroes := cflags&FlagCNoZeroes != 0
	toldTLS := false

	for {
		if _, err := io.ReadFull(c.br, b[:16]); err != nil {
			if errors.Is(err, io.EOF) {
				return exp, false, nil
			}
			return exp, false, fmt.Errorf("read option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(b[0:]); m != MagicOption {
			return exp, false, fmt.Errorf("bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(b[8:])
		n := binary.BigEndian.Uint32(b[12:])
		if n > maxOptionLength {
			return exp, false, fmt.Errorf("option %d: length %d too large", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return exp, false, fmt.Errorf("read option %d: %w", opt, err)
		}
		if !fixed && opt != OptExportName {
			// A non-fixed newstyle client knows no option replies.
			return exp, false, fmt.Errorf("option %d from a client without fixed newstyle", opt)
		}
		if c.srv.TLSMode == TLSRequire && !c.tls {
			// FORCEDTLS: only STARTTLS and ABORT before TLS.
			switch opt {
			case OptStartTLS, OptAbort:
			case OptExportName:
				// It cannot be refused: the spec has the session end.
				return exp, false, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS", ErrTLSRequired)
			default:
				if !toldTLS {
					toldTLS = true
					c.log.Info("nbd: plain client refused: TLS required", "option", opt)
				}
				c.optError(opt, RepErrTLSReqd, "TLS is required on this server: connect with TLS (nbds:// URI, tls-creds, or -certfile/-cacertfile)")
				if err := c.bw.Flush(); err != nil {
					return exp, false, fmt.Errorf("send option reply: %w", err)
				}
				continue
			}
		}

		switch opt {
		case OptExportName:
			e, found := c.srv.enter(c, string(data))
			if !found {
				return exp, false, fmt.Errorf("unknown export %s", quoteName(string(data)))
			}
			var r [10 + 124]byte
			binary.BigEndian.PutUint64(r[0:], uint64(e.Device.Size()))
			binary.BigEndian.PutUint16(r[8:], c.transmissionFlags(e))
			if noZeroes {
				c.bw.Write(r[:10])
			} else {
				c.bw.Write(r[:])
			}
			if err := c.endNegotiation(); err != nil {
				return exp, false, err
			}
			c.keepContexts(string(data))
			return e, true, nil

		case OptAbort:
			c.optReply(opt, RepAck, nil)
			c.bw.Flush()
			return exp, false, nil

		case OptList:
			if n != 0 {
				c.optError(opt, RepErrInvalid, "NBD_OPT_LIST takes no data")
				break
			}
			for _, e := range c.srv.exports() {
				r := make([]byte, 4, 4+len(e.Name)+len(e.Description))
				binary.BigEndian.PutUint32(r, uint32(len(e.Name)))
				r = append(r, e.Name...)
				r = append(r, e.Description...)
				c.optReply(opt, RepServer, r)
			}
			c.optReply(opt, RepAck, nil)

		case OptInfo, OptGo:
			e, name, found, done := c.info(opt, data)
			if done && opt == OptGo && found {
				if err := c.endNegotiation(); err != nil {
					return exp, false, err
				}
				c.keepContexts(name)
				return e, true, nil
			}

		case OptStartTLS:
			switch {
			case n != 0:
				c.optError(opt, RepErrInvalid, "NBD_OPT_STARTTLS takes no data")
			case c.tls:
				c.optError(opt, RepErrInvalid, "TLS is already running on this connection")
			case c.srv.TLSMode == TLSOff:
				c.optError(opt, RepErrPolicy, "TLS is not enabled on this server")
			default:
				c.optReply(opt, RepAck, nil)
				if err := c.startTLS(); err != nil {
					return exp, false, err
				}
				// Nothing negotiated before TLS carries over (the spec:
				// a man in the middle may have chosen it).
				c.structured, c.metas, c.metaExport = false, nil, ""
				continue
			}

		case OptStructuredReply:
			if n != 0 {
				c.optError(opt, RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
				break
			}
			c.structured = true
			c.optReply(opt, RepAck, nil)

		case OptListMetaContext, OptSetMetaContext:
			c.metaOption(opt, data)

		case OptExtendedHeaders:
			c.optError(opt, RepErrUnsup, "extended headers are not supported: requests and replies keep 32-bit lengths")

		default:
			c.optError(opt, RepErrUnsup, fmt.Sprintf("option %d is not supported", opt))
		}
		if err := c.bw.Flush(); err != nil {
			return exp, false, fmt.Errorf("send option reply: %w", err)
		}
	}
}

// endNegotiation flushes the last negotiation bytes and lifts its deadlines.
func (c *conn) endNegotiation() error {
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("enter transmission: %w", err)
	}
	c.setReadDeadline(time.Time{})
	c.sock.SetWriteDeadline(time.Time{})
	return nil
}

// keepContexts drops the selected metadata contexts unless they were
// selected for the export name the client entered transmission with (the
// spec: the same name, as sent).
func (c *conn) keepContexts(name string) {
	if c.metaExport != name {
		c.metas = nil
	}
}

// info answers NBD_OPT_INFO and NBD_OPT_GO. done is true when it answered
// with NBD_REP_ACK; found tells whether the export exists; name is the
// export name as sent.
func (c *conn) info(opt uint32, data []byte) (e Export, name string, found, done bool) {
	if len(data) < 6 {
		c.optError(opt, RepErrInvalid, "option data too short")
		return e, "", false, false
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		c.optError(opt, RepErrInvalid, "export name length exceeds option data")
		return e, "", false, false
	}
	name = string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		c.optError(opt, RepErrInvalid, "information request count does not match option length")
		return e, name, false, false
	}
	if opt == OptGo {
		e, found = c.srv.enter(c, name)
	} else {
		e, found = c.srv.lookup(name)
	}
	if !found {
		c.optError(opt, RepErrUnknown, "unknown export "+quoteName(name))
		return e, name, false, false
	}

	var r [12]byte
	binary.BigEndian.PutUint16(r[0:], InfoExport)
	binary.BigEndian.PutUint64(r[2:], uint64(e.Device.Size()))
	binary.BigEndian.PutUint16(r[10:], c.transmissionFlags(e))
	c.optReply(opt, RepInfo, r[:12])

	var sentName, sentDesc bool
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case InfoName:
			if !sentName {
				sentName = true
				c.optReply(opt, RepInfo, append([]byte{0, byte(InfoName)}, e.Name...))
			}
		case InfoDescription:
			if !sentDesc && e.Description != "" {
				sentDesc = true
				c.optReply(opt, RepInfo, append([]byte{0, byte(InfoDescription)}, e.Description...))
			}
		}
	}

	// Always sent: minimum 1, preferred 4096, maximum MaxPayload.
	var bs [14]byte
	binary.BigEndian.PutUint16(bs[0:], InfoBlockSize)
	binary.BigEndian.PutUint32(bs[2:], 1)
	binary.BigEndian.PutUint32(bs[6:], 4096)
	binary.BigEndian.PutUint32(bs[10:], uint32(c.srv.maxPayload()))
	c.optReply(opt, RepInfo, bs[:])
	c.optReply(opt, RepAck, nil)
	return e, name, true, true
}

// optReply queues one option reply.
func (c *conn) optReply(opt, typ uint32, data []byte) {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], MagicOptionReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.bw.Write(h[:])
	c.bw.Write(data)
}

// optError queues an error reply with a human-readable message, made a
// string the spec allows (wireString).
func (c *conn) optError(opt, typ uint32, msg string) {
	c.optReply(opt, typ, []byte(wireString(msg)))
}

// transmissionFlags are the flags advertised for e (see Server).
func (c *conn) transmissionFlags(e Export) uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagCanMultiConn | FlagSendCache
	if c.structured {
		f |= FlagSendDF
	}
	if e.ReadOnly {
		return f | FlagReadOnly
	}
	f |= FlagSendWriteZeroes | FlagSendFastZero
	if _, ok := e.Device.(Trimmer); ok {
		f |= FlagSendTrim
	}
	return f
}
