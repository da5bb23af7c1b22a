package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writePEM writes a self-signed certificate and its key into dir and
// returns their file names.
func writePEM(t *testing.T, dir, name string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = name+".crt", name+".key"
	os.WriteFile(filepath.Join(dir, cert), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, key), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
	return cert, key
}

func TestTransportKeys(t *testing.T) {
	dir := t.TempDir()
	cert, key := writePEM(t, dir, "alpha")
	other, _ := writePEM(t, dir, "beta")
	load := func(extra string) (*File, error) {
		p := filepath.Join(dir, "r0.toml")
		os.WriteFile(p, []byte(strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\n"+extra, 1)), 0o644)
		return Load(p)
	}
	f, err := load("")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := f.TLSFiles(); ok || f.DedupIndexBytes() != defaultDedupIndexSize {
		t.Fatalf("defaults: tls %v, dedup %d", ok, f.DedupIndexBytes())
	}
	f, err = load(`tls-cert = "` + cert + `"` + "\n" + `tls-key = "` + key + `"` + "\n" + `tls-ca = "` + cert + `"` + "\ndedup-index-size = 0")
	if err != nil {
		t.Fatal(err)
	}
	c, k, ca, ok := f.TLSFiles()
	if !ok || c != filepath.Join(dir, cert) || k != filepath.Join(dir, key) || ca != filepath.Join(dir, cert) || f.DedupIndexBytes() != 0 {
		t.Fatalf("tls %s %s %s %v, dedup %d", c, k, ca, ok, f.DedupIndexBytes())
	}
	for _, tc := range []struct{ extra, want string }{
		{`tls-cert = "` + cert + `"`, "set all three"},
		{`tls-cert = "` + cert + `"` + "\ntls-key = \"nope.key\"\ntls-ca = \"" + cert + `"`, "nope.key: no such file"},
		{`tls-cert = "` + other + `"` + "\ntls-key = \"" + key + "\"\ntls-ca = \"" + cert + `"`, "private key does not match"},
		{`tls-cert = "` + cert + `"` + "\ntls-key = \"" + key + "\"\ntls-ca = \"" + key + `"`, "no PEM certificate"},
		{`dedup-index-size = -1`, "dedup-index-size"},
	} {
		if _, err := load(tc.extra); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.extra, err, tc.want)
		}
	}
}
