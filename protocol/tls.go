package protocol

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLS on the peer link is optional and runs under the frames: the
// connection is a TLS 1.3 session with certificates on both sides, signed by
// the resource's CA, and the Hello/Auth handshake (HMAC with the shared
// secret) still runs inside it. A node's certificate names the node (a DNS
// SAN equal to its node name): the dialer checks the listener's, the
// listener checks that the dialer's matches the name in its Hello.

// NewTLSConfig returns the TLS configuration of a peer link: TLS 1.3 only,
// this node's certificate, and ca as the only roots for both directions
// (client certificates required). Callers Clone it and set ServerName to
// the peer's node name when dialing.
func NewTLSConfig(cert tls.Certificate, ca *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      ca,
		ClientCAs:    ca,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// LoadTLSConfig reads a PEM certificate, its key and the CA bundle and
// returns NewTLSConfig of them.
func LoadTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s / key %s: %w", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tls ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls ca %s: no PEM certificate in it", caFile)
	}
	return NewTLSConfig(cert, pool), nil
}

// CheckPeerName verifies that the verified client certificate of a TLS
// connection names node name (DNS SAN, or the common name of a certificate
// without SANs).
func CheckPeerName(st tls.ConnectionState, name string) error {
	if len(st.PeerCertificates) == 0 {
		return errors.New("peer presented no TLS certificate")
	}
	c := st.PeerCertificates[0]
	if err := c.VerifyHostname(name); err == nil {
		return nil
	}
	if len(c.DNSNames) == 0 && c.Subject.CommonName == name {
		return nil
	}
	return fmt.Errorf("peer's TLS certificate (subject %q, names %v) is not for node %s", c.Subject.CommonName, c.DNSNames, name)
}
