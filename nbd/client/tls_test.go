package client_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/nbd/client"
)

// writeTLSDir writes a CA and a server certificate for localhost and
// 127.0.0.1 as QEMU's x509 credentials expect them (ca-cert.pem,
// server-cert.pem, server-key.pem) and returns a pool holding the CA.
func writeTLSDir(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "repd test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	write("server-cert.pem", "CERTIFICATE", srvDER)
	write("server-key.pem", "PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool
}

func TestTLS(t *testing.T) {
	img, want := testImage(t)
	creds := t.TempDir()
	pool := writeTLSDir(t, creds)
	port := freeTCP(t)
	addr := "127.0.0.1:" + port
	serve(t, "tcp", addr, "qemu-nbd", "-r", "-t", "-e", "8", "-f", "qcow2", "-x", "r0@s1", "-b", "127.0.0.1", "-p", port, "-B", "s0",
		"--object", "tls-creds-x509,id=tls0,dir="+creds+",endpoint=server,verify-peer=off", "--tls-creds", "tls0", img)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.DialURI(ctx, "nbds://"+addr+"/r0@s1", client.Options{
		TLS: &tls.Config{RootCAs: pool}, MetaContexts: []string{client.DirtyBitmapContext("s0")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, testSize)
	if err := c.Read(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read over TLS differs")
	}
	if _, err := c.BlockStatus(ctx, 0, testSize); err != nil {
		t.Fatal(err)
	}
	exports, err := client.List(ctx, "tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil || len(exports) != 1 {
		t.Fatalf("List over TLS: %v %v", exports, err)
	}

	// Without TLS the server refuses: the client says why.
	_, err = client.DialURI(ctx, "nbd://"+addr+"/r0@s1", client.Options{})
	if err == nil || !strings.Contains(err.Error(), "requires TLS") {
		t.Fatalf("plain client to a TLS server: %v", err)
	}
	// A certificate from a CA the client does not trust is refused.
	_, err = client.DialURI(ctx, "nbds://"+addr+"/r0@s1", client.Options{TLS: &tls.Config{RootCAs: x509.NewCertPool()}})
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("untrusted certificate: %v", err)
	}
	// nbds:// without a TLS configuration, or TLS for nbd://: a usage error.
	if _, err := client.DialURI(ctx, "nbds://"+addr+"/r0@s1", client.Options{}); err == nil {
		t.Fatal("nbds:// without TLS configuration accepted")
	}
	if _, err := client.DialURI(ctx, "nbd://"+addr+"/r0@s1", client.Options{TLS: &tls.Config{RootCAs: pool}}); err == nil {
		t.Fatal("TLS configuration with nbd:// accepted")
	}
}
