package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// defaultDedupIndexSize is the memory of each peer's dedup index when
// resource.dedup-index-size is left out: off. Dedup pays on slow links with
// repetitive data, and costs the shipper a few index operations per 4 KiB
// block (about a fifth of a primary's CPU on loopback sequential writes),
// so it is opt-in, like compression. About 128 bytes per 4 KiB block
// remembered: "64MiB" remembers 2 GiB of recent writes.
const defaultDedupIndexSize = 0

// validateTransport checks the peer-link keys of [resource]: the TLS files
// come all three or not at all; dedup-index-size defaults, "0" disables
// deduplication.
func (r *Resource) validateTransport() error {
	set := 0
	for _, v := range []string{r.TLSCert, r.TLSKey, r.TLSCA} {
		if v != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		return errors.New("resource.tls-cert, tls-key and tls-ca: set all three (TLS on the peer link) or none")
	}
	if r.DedupIndexSize == nil {
		d := Bytes(defaultDedupIndexSize)
		r.DedupIndexSize = &d
	}
	if *r.DedupIndexSize < 0 {
		return fmt.Errorf("resource.dedup-index-size %d: must not be negative (0 disables dedup)", *r.DedupIndexSize)
	}
	return nil
}

// DedupIndexBytes is resource.dedup-index-size in bytes (0: dedup off).
func (f *File) DedupIndexBytes() int64 {
	if f.Resource.DedupIndexSize == nil {
		return defaultDedupIndexSize
	}
	return int64(*f.Resource.DedupIndexSize)
}

// rel resolves a path of the resource file relative to its directory.
func (f *File) rel(p string) string {
	if p != "" && !filepath.IsAbs(p) && f.path != "" {
		return filepath.Join(filepath.Dir(f.path), p)
	}
	return p
}

// TLSFiles are the resolved paths of resource.tls-cert, tls-key and tls-ca
// (relative paths are relative to the resource file); ok is false when TLS
// is not configured.
func (f *File) TLSFiles() (cert, key, ca string, ok bool) {
	r := &f.Resource
	if r.TLSCert == "" {
		return "", "", "", false
	}
	return f.rel(r.TLSCert), f.rel(r.TLSKey), f.rel(r.TLSCA), true
}

// checkTLSFiles refuses TLS files that cannot be read, a certificate that
// does not match its key, and a CA file without a certificate.
func (f *File) checkTLSFiles() error {
	cert, key, ca, ok := f.TLSFiles()
	if !ok {
		return nil
	}
	if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
		return fmt.Errorf("resource.tls-cert %s / tls-key %s: %w", cert, key, err)
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return fmt.Errorf("resource.tls-ca: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		return fmt.Errorf("resource.tls-ca %s: no PEM certificate in it", ca)
	}
	return nil
}
