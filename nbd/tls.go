package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ErrTLSRequired ends a session that tried to enter transmission without
// TLS under TLSRequire (NBD_OPT_EXPORT_NAME cannot be refused otherwise).
var ErrTLSRequired = errors.New("nbd: TLS required")

// TLSConfig is a server TLS configuration for Server.TLS: TLS 1.3 at least,
// cert as the server's certificate and, with clientCAs, mutual TLS: a
// client must present a certificate that one of clientCAs signed.
//
// TLS 1.3 only: libnbd, QEMU and nbd-client (all GnuTLS) negotiate it. The
// NBD spec asks servers to support TLS 1.2 as well; a client that cannot do
// 1.3 fails the handshake with a protocol version alert.
func TLSConfig(cert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
	}
	if clientCAs != nil {
		cfg.ClientCAs = clientCAs
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg
}

// startTLS runs the server side of the TLS handshake after the
// NBD_REP_ACK to NBD_OPT_STARTTLS has been queued, and moves the
// connection onto TLS. The handshake deadline set by negotiate still
// applies. Option haggling then goes on inside TLS.
func (c *conn) startTLS() error {
	if c.br.Buffered() > 0 {
		// The client must wait for the ACK before its TLS handshake: bytes
		// sent behind the option in plain text would be taken for
		// options inside TLS (the STARTTLS command-injection attack).
		return errors.New("client sent data after NBD_OPT_STARTTLS before the TLS handshake")
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send STARTTLS reply: %w", err)
	}
	tc := tls.Server(c.sock, c.srv.TLS)
	if err := tc.HandshakeContext(c.ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc = tc
	c.tls = true
	c.bw.Reset(tc)
	c.br.Reset(sockReader{c})
	st := tc.ConnectionState()
	args := []any{"version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite)}
	if len(st.PeerCertificates) > 0 {
		args = append(args, "client_cert", st.PeerCertificates[0].Subject.String())
	}
	c.log.Info("nbd: TLS established", args...)
	return nil
}
