package nbd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// testPKI is a CA with a server certificate for 127.0.0.1, a client
// certificate it signed, and a second CA's client certificate (untrusted).
type testPKI struct {
	ca, other      *nbdtest.PKI
	server         tls.Certificate
	client         tls.Certificate
	untrusted      tls.Certificate
	serverNoMutual *tls.Config // server config without client certificates
	serverMutual   *tls.Config // server config that requires one signed by ca
}

var pkiOnce = sync.OnceValues(func() (*testPKI, error) {
	var p testPKI
	var err error
	if p.ca, err = nbdtest.NewPKI("repd test CA"); err != nil {
		return nil, err
	}
	if p.other, err = nbdtest.NewPKI("someone else's CA"); err != nil {
		return nil, err
	}
	if p.server, err = p.ca.KeyPair("nbd server", true, "127.0.0.1", "localhost"); err != nil {
		return nil, err
	}
	if p.client, err = p.ca.KeyPair("nbd client", false); err != nil {
		return nil, err
	}
	if p.untrusted, err = p.other.KeyPair("intruder", false); err != nil {
		return nil, err
	}
	p.serverNoMutual = nbd.TLSConfig(p.server, nil)
	p.serverMutual = nbd.TLSConfig(p.server, p.ca.Pool())
	return &p, nil
})

func getPKI(t testing.TB) *testPKI {
	t.Helper()
	p, err := pkiOnce()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// clientTLS trusts the test CA and presents cert (none if nil).
func (p *testPKI) clientTLS(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "127.0.0.1"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

func optErrType(t *testing.T, err error) uint32 {
	t.Helper()
	var oe *nbdtest.OptionError
	if !errors.As(err, &oe) {
		t.Fatalf("want an option error reply, got %v", err)
	}
	return oe.Type
}

// goTLS negotiates TLS, enters transmission and checks that a write reads
// back.
func goTLS(t *testing.T, n *nbdtest.Negotiation, cfg *tls.Config) {
	t.Helper()
	if err := n.StartTLS(cfg); err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	if _, ok := n.Conn.(*tls.Conn); !ok {
		t.Fatal("connection is not TLS after STARTTLS")
	}
	c, err := n.Go("", nbd.InfoBlockSize)
	if err != nil {
		t.Fatalf("GO inside TLS: %v", err)
	}
	defer c.Close()
	p := pattern(256<<10, 3) // a big reply too: written from the request's buffer
	if err := c.Write(p, 4096, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := c.Read(got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("data read over TLS differs from what was written")
	}
	if err := c.Disc(); err != nil {
		t.Fatal(err)
	}
}

// Without TLS configured, STARTTLS is refused by policy (the spec's NOTLS
// mode) and the session goes on in plain text.
func TestTLSOffRefusesStartTLS(t *testing.T) {
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Device: newMem(testSize)}}})
	n := negotiate(t, addr, fixedNoZeroes)
	err := n.StartTLS(getPKI(t).clientTLS(nil))
	if got := optErrType(t, err); got != nbd.RepErrPolicy {
		t.Fatalf("STARTTLS without TLS configured: reply %#x, want NBD_REP_ERR_POLICY", got)
	}
	c, err := n.Go("")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestTLSAllow(t *testing.T) {
	p := getPKI(t)
	addr := serve(t, &nbd.Server{TLS: p.serverNoMutual, TLSMode: nbd.TLSAllow,
		Exports: []nbd.Export{{Name: "d", Device: newMem(testSize)}}})

	t.Run("plain", func(t *testing.T) {
		c := dial(t, addr, "d")
		if err := c.Write(pattern(4096, 1), 0, false); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("tls", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		// Options before STARTTLS are answered in allow mode.
		if _, err := n.Option(nbd.OptList, nil); err != nil {
			t.Fatal(err)
		}
		goTLS(t, n, p.clientTLS(nil))
	})
	t.Run("starttls twice", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		if err := n.StartTLS(p.clientTLS(nil)); err != nil {
			t.Fatal(err)
		}
		_, err := n.Option(nbd.OptStartTLS, nil)
		if got := optErrType(t, err); got != nbd.RepErrInvalid {
			t.Fatalf("second STARTTLS: %#x, want NBD_REP_ERR_INVALID", got)
		}
		// Still usable.
		if _, err := n.Option(nbd.OptList, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("starttls with data", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		_, err := n.Option(nbd.OptStartTLS, []byte("x"))
		if got := optErrType(t, err); got != nbd.RepErrInvalid {
			t.Fatalf("STARTTLS with data: %#x, want NBD_REP_ERR_INVALID", got)
		}
		goTLS(t, n, p.clientTLS(nil))
	})
}

func TestTLSRequire(t *testing.T) {
	p := getPKI(t)
	addr := serve(t, &nbd.Server{TLS: p.serverNoMutual, TLSMode: nbd.TLSRequire,
		Exports: []nbd.Export{{Name: "d", Device: newMem(testSize)}}})

	t.Run("options before STARTTLS", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		for _, o := range []struct {
			opt  uint32
			data []byte
		}{
			{nbd.OptList, nil},
			{nbd.OptInfo, nbdtest.InfoData("d")},
			{nbd.OptGo, nbdtest.InfoData("d")},
			{nbd.OptStructuredReply, nil},
			{0xdead, []byte("junk")},
		} {
			_, err := n.Option(o.opt, o.data)
			if got := optErrType(t, err); got != nbd.RepErrTLSReqd {
				t.Fatalf("option %d before TLS: %#x, want NBD_REP_ERR_TLS_REQD", o.opt, got)
			}
			if !strings.Contains(err.Error(), "TLS is required") {
				t.Fatalf("refusal does not say why: %v", err)
			}
		}
		// The client may still upgrade.
		goTLS(t, n, p.clientTLS(nil))
	})
	t.Run("abort", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		if _, err := n.Option(nbd.OptAbort, nil); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, n.Conn, nil)
	})
	t.Run("export name ends the session", func(t *testing.T) {
		for _, flags := range []uint32{fixedNoZeroes, 0} { // also a client without fixed newstyle
			n := negotiate(t, addr, flags)
			if err := n.SendOption(nbd.OptExportName, []byte("d")); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, n.Conn, nil)
		}
	})
	t.Run("tls", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		goTLS(t, n, p.clientTLS(nil))
	})
	t.Run("export name inside TLS", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		if err := n.StartTLS(p.clientTLS(nil)); err != nil {
			t.Fatal(err)
		}
		// No TLS_REQD once TLS runs.
		if _, err := n.Option(nbd.OptList, nil); err != nil {
			t.Fatal(err)
		}
		c, err := n.ExportName("d", true)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("client does not trust the server", func(t *testing.T) {
		n := negotiate(t, addr, fixedNoZeroes)
		cfg := &tls.Config{RootCAs: p.other.Pool(), ServerName: "127.0.0.1"}
		if err := n.StartTLS(cfg); err == nil {
			t.Fatal("TLS handshake with an unknown server certificate succeeded")
		}
	})
}

// Under mutual TLS a client needs a certificate signed by the configured CA.
func TestTLSMutual(t *testing.T) {
	p := getPKI(t)
	addr := serve(t, &nbd.Server{TLS: p.serverMutual, TLSMode: nbd.TLSRequire,
		Exports: []nbd.Export{{Device: newMem(testSize)}}})
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"no certificate", nil},
		{"untrusted certificate", &p.untrusted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := negotiate(t, addr, fixedNoZeroes)
			err := n.StartTLS(p.clientTLS(tc.cert))
			if err == nil {
				// TLS 1.3: the client finishes before the server checks
				// its certificate; the refusal comes with the next read.
				_, err = n.Option(nbd.OptList, nil)
			}
			if err == nil {
				t.Fatal("server accepted the client")
			}
		})
	}
	t.Run("trusted certificate", func(t *testing.T) {
		goTLS(t, negotiate(t, addr, fixedNoZeroes), p.clientTLS(&p.client))
	})
}

// Plain-text bytes sent behind NBD_OPT_STARTTLS (before the handshake:
// a man in the middle's injection) must not be taken as options inside
// TLS, nor swallow the client's handshake: the server closes the session.
func TestStartTLSInjection(t *testing.T) {
	p := getPKI(t)
	addr := serve(t, &nbd.Server{TLS: p.serverNoMutual, TLSMode: nbd.TLSRequire,
		Exports: []nbd.Export{{Device: newMem(testSize)}}})
	n := negotiate(t, addr, fixedNoZeroes)
	b := session(nil).option(nbd.OptStartTLS, nil).option(nbd.OptList, nil)
	if _, err := n.Conn.Write(b); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n.Conn.SetDeadline(time.Now().Add(10 * time.Second))
	// The server may acknowledge STARTTLS before it sees the rest; then
	// the client's TLS handshake, or the first option inside TLS, fails.
	r, err := n.ReadOptionReply()
	if err == nil && r.Type == nbd.RepAck {
		tc := tls.Client(n.Conn, p.clientTLS(nil))
		if err = tc.Handshake(); err == nil {
			n.Conn = tc
			var rs []nbdtest.OptionReply
			rs, err = nbdtest.NewNegotiation(tc).Option(nbd.OptList, nil)
			if err == nil {
				t.Fatalf("session went on inside TLS after an injected option (%d replies)", len(rs))
			}
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("server took %v to end the session", d)
	}
}

func TestTLSModeNeedsConfig(t *testing.T) {
	srv := &nbd.Server{TLSMode: nbd.TLSRequire, Exports: []nbd.Export{{Device: newMem(testSize)}}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), l); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Serve with TLSRequire and no TLS config: %v", err)
	}
	srv.TLSMode = nbd.TLSMode(7)
	srv.TLS = getPKI(t).serverNoMutual
	a, b := net.Pipe()
	defer b.Close()
	if err := srv.ServeConn(context.Background(), a); err == nil {
		t.Fatal("ServeConn with an unknown TLS mode")
	}
}
