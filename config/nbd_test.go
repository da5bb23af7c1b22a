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

// writeLeaf writes a self-signed certificate valid from notBefore to
// notAfter with the given extended key usages, and its key.
func writeLeaf(t *testing.T, dir, name string, notBefore, notAfter time.Time, eku ...x509.ExtKeyUsage) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter, ExtKeyUsage: eku}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = name+".crt", name+".key"
	os.WriteFile(filepath.Join(dir, cert), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, key), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
	return cert, key
}

func TestNBDKeys(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	cert, key := writeLeaf(t, dir, "node", now.Add(-time.Hour), now.Add(time.Hour), x509.ExtKeyUsageServerAuth)
	ca, _ := writePEM(t, dir, "clients-ca")
	other, _ := writeLeaf(t, dir, "other", now.Add(-time.Hour), now.Add(time.Hour))
	expired, expiredKey := writeLeaf(t, dir, "expired", now.Add(-2*time.Hour), now.Add(-time.Hour))
	future, futureKey := writeLeaf(t, dir, "future", now.Add(time.Hour), now.Add(2*time.Hour))
	clientOnly, clientOnlyKey := writeLeaf(t, dir, "client", now.Add(-time.Hour), now.Add(time.Hour), x509.ExtKeyUsageClientAuth)
	load := func(extra string) (*File, error) {
		p := filepath.Join(dir, "r0.toml")
		os.WriteFile(p, []byte(strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\n"+extra, 1)), 0o644)
		return Load(p)
	}
	kv := func(k, v string) string { return k + ` = "` + v + `"` + "\n" }

	f, err := load("")
	if err != nil {
		t.Fatal(err)
	}
	x := f.Resource.NBDExposure
	if x.NBDTLS != NBDTLSOff || x.NBDMaxConnections != defaultNBDMaxConnections || time.Duration(x.NBDWriteTimeout) != defaultNBDWriteTimeout {
		t.Fatalf("defaults: %+v", x)
	}
	if _, _, _, ok := f.NBDTLSFiles(); ok {
		t.Fatal("NBD TLS files without nbd-tls")
	}

	f, err = load(kv("nbd-tls", "require") + kv("nbd-tls-cert", cert) + kv("nbd-tls-key", key) + kv("nbd-tls-ca", ca) +
		"nbd-max-connections = 8\n" + kv("nbd-write-timeout", "2s"))
	if err != nil {
		t.Fatal(err)
	}
	c, k, a, ok := f.NBDTLSFiles()
	if !ok || c != filepath.Join(dir, cert) || k != filepath.Join(dir, key) || a != filepath.Join(dir, ca) {
		t.Fatalf("NBD TLS files: %s %s %s %v", c, k, a, ok)
	}
	if f.Resource.NBDMaxConnections != 8 || time.Duration(f.Resource.NBDWriteTimeout) != 2*time.Second {
		t.Fatalf("limits: %+v", f.Resource.NBDExposure)
	}
	if f.Resource.NBDTLS != NBDTLSRequire {
		t.Fatalf("nbd-tls = %v", f.Resource.NBDTLS)
	}
	tc, pool, err := f.LoadNBDTLS()
	if err != nil || len(tc.Certificate) != 1 || pool == nil {
		t.Fatalf("LoadNBDTLS: %v", err)
	}
	f, err = load(kv("nbd-tls", "allow") + kv("nbd-tls-cert", cert) + kv("nbd-tls-key", key))
	if err != nil {
		t.Fatal(err)
	}
	if _, pool, err := f.LoadNBDTLS(); err != nil || pool != nil {
		t.Fatalf("without nbd-tls-ca: pool %v, %v", pool, err)
	}

	for _, tc := range []struct{ name, extra, want string }{
		{"bad mode", kv("nbd-tls", "on"), `"on": must be "off", "allow" or "require"`},
		{"require without cert", kv("nbd-tls", "require"), "resource.nbd-tls = \"require\" needs nbd-tls-cert and nbd-tls-key"},
		{"allow without key", kv("nbd-tls", "allow") + kv("nbd-tls-cert", cert), "needs nbd-tls-cert and nbd-tls-key"},
		{"cert without tls", kv("nbd-tls-cert", cert) + kv("nbd-tls-key", key), "resource.nbd-tls-cert is set but nbd-tls is \"off\""},
		{"ca without tls", kv("nbd-tls-ca", ca), "resource.nbd-tls-ca is set but nbd-tls is \"off\""},
		{"missing key file", kv("nbd-tls", "require") + kv("nbd-tls-cert", cert) + kv("nbd-tls-key", "nope.key"), "nbd-tls-key " + filepath.Join(dir, "nope.key")},
		{"key of another cert", kv("nbd-tls", "require") + kv("nbd-tls-cert", other) + kv("nbd-tls-key", key), "private key does not match"},
		{"expired", kv("nbd-tls", "require") + kv("nbd-tls-cert", expired) + kv("nbd-tls-key", expiredKey), "resource.nbd-tls-cert " + filepath.Join(dir, expired) + ": certificate expired on"},
		{"not yet valid", kv("nbd-tls", "require") + kv("nbd-tls-cert", future) + kv("nbd-tls-key", futureKey), "certificate not valid before"},
		{"client certificate", kv("nbd-tls", "require") + kv("nbd-tls-cert", clientOnly) + kv("nbd-tls-key", clientOnlyKey), "not for TLS servers"},
		{"ca not PEM", kv("nbd-tls", "require") + kv("nbd-tls-cert", cert) + kv("nbd-tls-key", key) + kv("nbd-tls-ca", key), "resource.nbd-tls-ca " + filepath.Join(dir, key) + ": no PEM certificate"},
		{"ca missing", kv("nbd-tls", "require") + kv("nbd-tls-cert", cert) + kv("nbd-tls-key", key) + kv("nbd-tls-ca", "nope.crt"), "resource.nbd-tls-ca: open"},
		{"max connections", "nbd-max-connections = -1\n", "resource.nbd-max-connections -1: must be 1..65536"},
		{"write timeout", kv("nbd-write-timeout", "1ms"), "resource.nbd-write-timeout 1ms: must be at least 100ms"},
		{"unknown nbd key", kv("nbd-tls-psk", "x"), "unknown key resource.nbd-tls-psk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := load(tc.extra); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
