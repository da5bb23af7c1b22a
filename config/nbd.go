package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// NBDTLSMode is resource.nbd-tls: whether NBD clients cannot, may or must
// use TLS (NBD_OPT_STARTTLS).
type NBDTLSMode uint8

// NBD TLS modes.
const (
	// NBDTLSOff: no TLS; NBD_OPT_STARTTLS is refused (the default).
	NBDTLSOff NBDTLSMode = iota
	// NBDTLSAllow: a client may upgrade to TLS or stay plain.
	NBDTLSAllow
	// NBDTLSRequire: plain clients are refused.
	NBDTLSRequire
)

var nbdTLSNames = []string{"off", "allow", "require"}

func (m NBDTLSMode) String() string { return word(nbdTLSNames, uint8(m)) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *NBDTLSMode) UnmarshalText(b []byte) error {
	return parseWord(nbdTLSNames, b, (*uint8)(m))
}

// NBDExposure holds the [resource] keys that say who may use the NBD export
// and how much one client may hold. It is embedded in Resource: its keys
// sit in [resource] beside the others.
type NBDExposure struct {
	// NBDTLS: "off" (default), "allow" or "require".
	NBDTLS NBDTLSMode `toml:"nbd-tls"`
	// This node's certificate and key for NBD clients, PEM (relative to
	// the resource file); required unless nbd-tls is "off".
	NBDTLSCert string `toml:"nbd-tls-cert"`
	NBDTLSKey  string `toml:"nbd-tls-key"`
	// NBDTLSCA, if set, makes TLS mutual: clients must present a
	// certificate this CA signed.
	NBDTLSCA string `toml:"nbd-tls-ca"`
	// NBDMaxConnections bounds the NBD connections a node serves at once
	// (default 64); more are closed at once.
	NBDMaxConnections int `toml:"nbd-max-connections"`
	// NBDWriteTimeout disconnects an NBD client that takes no reply bytes
	// for this long (default 30s).
	NBDWriteTimeout Duration `toml:"nbd-write-timeout"`
}

// Defaults of the NBD exposure keys (nbd-tls: its zero value, off).
const (
	defaultNBDMaxConnections = 64
	defaultNBDWriteTimeout   = 30 * time.Second
)

// validateNBD checks the NBD exposure keys and applies their defaults.
func (r *Resource) validateNBD() error {
	x := &r.NBDExposure
	if x.NBDTLS == NBDTLSOff {
		for _, k := range []struct{ key, val string }{{"nbd-tls-cert", x.NBDTLSCert}, {"nbd-tls-key", x.NBDTLSKey}, {"nbd-tls-ca", x.NBDTLSCA}} {
			if k.val != "" {
				return fmt.Errorf("resource.%s is set but nbd-tls is \"off\": set nbd-tls = \"allow\" or \"require\" to use it, or remove %s", k.key, k.key)
			}
		}
	} else if x.NBDTLSCert == "" || x.NBDTLSKey == "" {
		return fmt.Errorf("resource.nbd-tls = %q needs nbd-tls-cert and nbd-tls-key: this node's certificate and key for NBD clients, PEM files", x.NBDTLS.String())
	}
	if x.NBDMaxConnections == 0 {
		x.NBDMaxConnections = defaultNBDMaxConnections
	}
	if x.NBDMaxConnections < 1 || x.NBDMaxConnections > 65536 {
		return fmt.Errorf("resource.nbd-max-connections %d: must be 1..65536", x.NBDMaxConnections)
	}
	if x.NBDWriteTimeout == 0 {
		x.NBDWriteTimeout = Duration(defaultNBDWriteTimeout)
	}
	if x.NBDWriteTimeout < Duration(100*time.Millisecond) {
		return fmt.Errorf("resource.nbd-write-timeout %v: must be at least 100ms", time.Duration(x.NBDWriteTimeout))
	}
	return nil
}

// NBDTLSFiles are the resolved paths of resource.nbd-tls-cert, nbd-tls-key
// and nbd-tls-ca (relative paths are relative to the resource file; ca is
// "" without mutual TLS); ok is false when nbd-tls is "off".
func (f *File) NBDTLSFiles() (cert, key, ca string, ok bool) {
	x := &f.Resource.NBDExposure
	if x.NBDTLSCert == "" {
		return "", "", "", false
	}
	return f.rel(x.NBDTLSCert), f.rel(x.NBDTLSKey), f.rel(x.NBDTLSCA), true
}

// LoadNBDTLS reads the NBD TLS files: this node's certificate and key, and
// the client CA pool (nil without nbd-tls-ca). It refuses files that cannot
// be read, a key that does not match the certificate, a certificate that
// is expired, not yet valid or not meant for a server, and a CA file
// without a certificate, naming the key.
func (f *File) LoadNBDTLS() (cert tls.Certificate, clientCAs *x509.CertPool, err error) {
	certFile, keyFile, caFile, ok := f.NBDTLSFiles()
	if !ok {
		return cert, nil, errors.New("resource.nbd-tls is \"off\"")
	}
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return cert, nil, fmt.Errorf("resource.nbd-tls-cert %s / nbd-tls-key %s: %w", certFile, keyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return cert, nil, fmt.Errorf("resource.nbd-tls-cert %s: %w", certFile, err)
		}
	}
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return cert, nil, fmt.Errorf("resource.nbd-tls-cert %s: certificate expired on %s: renew it", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return cert, nil, fmt.Errorf("resource.nbd-tls-cert %s: certificate not valid before %s (check the clock)", certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	case len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny):
		return cert, nil, fmt.Errorf("resource.nbd-tls-cert %s: certificate is not for TLS servers (extended key usage lacks serverAuth): clients will refuse it", certFile)
	}
	if caFile == "" {
		return cert, nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return cert, nil, fmt.Errorf("resource.nbd-tls-ca: %w", err)
	}
	clientCAs = x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM(pem) {
		return cert, nil, fmt.Errorf("resource.nbd-tls-ca %s: no PEM certificate in it", caFile)
	}
	return cert, clientCAs, nil
}

// checkNBDTLSFiles refuses at Load what LoadNBDTLS would refuse at start.
func (f *File) checkNBDTLSFiles() error {
	if _, _, _, ok := f.NBDTLSFiles(); !ok {
		return nil
	}
	_, _, err := f.LoadNBDTLS()
	return err
}
