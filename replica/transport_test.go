package replica

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// Transport stories: compression and dedup ratios, a reference the
// receiver cannot resolve, TLS, and the authentication rate limit.

// csvRecords is n bytes of a customer table, as text-like data compresses.
func csvRecords(r *mrand.Rand, n int) []byte {
	first := []string{"Anna", "Bernd", "Chloé", "David", "Emma", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Karin", "Lukas", "Mia", "Noah", "Olga", "Paul"}
	last := []string{"Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann", "Koch", "Richter"}
	city := []string{"Berlin", "Hamburg", "München", "Köln", "Frankfurt", "Stuttgart", "Düsseldorf", "Leipzig", "Dortmund", "Essen"}
	var b bytes.Buffer
	b.WriteString("id,first_name,last_name,email,city,zip,balance,created\n")
	for id := 1; b.Len() < n; id++ {
		f, l, c := first[r.IntN(len(first))], last[r.IntN(len(last))], city[r.IntN(len(city))]
		fmt.Fprintf(&b, "%d,%s,%s,%s.%s%d@example.com,%s,%05d,%d.%02d,2024-%02d-%02dT%02d:%02d:%02dZ\n",
			id, f, l, strings.ToLower(f), strings.ToLower(l), r.IntN(100), c, r.IntN(99999),
			r.IntN(100000), r.IntN(100), 1+r.IntN(12), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60))
	}
	return b.Bytes()[:n]
}

// vmImage is n bytes that look like a disk image: zero runs, repeated
// blocks (a file system's identical metadata, sparse files), text and
// random (compressed) data.
func vmImage(r *mrand.Rand, n int) []byte {
	img := make([]byte, n)
	common := randBlock(r, 4096)
	text := csvRecords(r, n)
	for off := 0; off < n; off += 4096 {
		switch k := r.IntN(10); {
		case k < 3: // zero
		case k < 5:
			copy(img[off:], common)
		case k < 7:
			copy(img[off:off+4096], text[off:])
		default:
			copy(img[off:], randBlock(r, 4096))
		}
	}
	return img
}

type ratio struct{ logical, wire int64 }

func (r ratio) String() string {
	return fmt.Sprintf("logical %d, wire %d bytes: %.3f of logical", r.logical, r.wire, float64(r.wire)/float64(r.logical))
}

// measure writes data at off in chunks through prim and returns what it cost
// on the wire toward peer.
func measure(t *testing.T, prim *Node, peer string, data []byte, off int64, chunk int) ratio {
	t.Helper()
	before := peerState(prim, peer)
	for done := 0; done < len(data); done += chunk {
		c := min(chunk, len(data)-done)
		if err := prim.WriteAt(context.Background(), data[done:done+c], off+int64(done), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := prim.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := peerState(prim, peer)
	return ratio{logical: after.LogicalBytes - before.LogicalBytes, wire: after.BytesSent - before.BytesSent}
}

// The numbers of the transport issue, at test sizes; BenchmarkTransport
// and TestTransportRatios -v print them.
func TestTransportRatios(t *testing.T) {
	level, _ := strconv.Atoi(os.Getenv("REPD_ZSTD_LEVEL")) // default 0: zstd's fastest
	c := newCluster(t, 2, func(i int, cfg *Config) {
		cfg.Compression = protocol.CodecZstd
		cfg.CompressionLevel = level
		cfg.DedupIndexBytes = 8 << 20
	})
	alpha := c.bootstrap()
	r := mrand.New(mrand.NewPCG(c.seed, 5))

	csv := measure(t, alpha, "beta", csvRecords(r, 4<<20), 0, 64<<10)
	t.Logf("CSV customer records, zstd, 64 KiB writes: %s", csv)
	if csv.wire*3 > csv.logical {
		t.Errorf("CSV: wire bytes above 1/3 of logical: %s", csv)
	}

	pattern := randBlock(r, 4096)
	var rep []byte
	for range 1024 {
		rep = append(rep, pattern...)
	}
	same := measure(t, alpha, "beta", rep, 4<<20, 4096)
	t.Logf("one random 4 KiB block written to 1024 offsets: %s", same)
	if same.wire*10 > same.logical {
		t.Errorf("repeated block: wire bytes above 10%% of logical: %s", same)
	}

	img := vmImage(r, 2<<20)
	first := measure(t, alpha, "beta", img, 8<<20, 1<<20)
	second := measure(t, alpha, "beta", img, 10<<20, 1<<20)
	t.Logf("VM-like image, first copy (1 MiB writes): %s; second copy: %s", first, second)
	if second.wire*10 > second.logical {
		t.Errorf("image copied twice: second copy's wire bytes above 10%% of logical: %s", second)
	}

	random := measure(t, alpha, "beta", randBlock(r, 4<<20), 12<<20, 64<<10)
	t.Logf("random data, zstd, 64 KiB writes: %s", random)
	if float64(random.wire) > 1.01*float64(random.logical) {
		t.Errorf("random: wire bytes above 1.01 × logical: %s", random)
	}
	ps := peerState(alpha, "beta")
	t.Logf("alpha→beta: %d dedup blocks (%d bytes saved), %d zero blocks, %d misses, compression ratio %.2f",
		ps.DedupBlocks, ps.DedupBytesSaved, ps.ZeroBlocks, ps.DedupMisses, ps.CompressionRatio)
	if ps.DedupBlocks == 0 || ps.ZeroBlocks == 0 || ps.DedupBytesSaved != ps.DedupBlocks*4096 {
		t.Errorf("dedup counters: %+v", ps)
	}
	c.waitSynced(10 * time.Second)
	c.assertEqualStores()
}

// A reference the receiver cannot resolve (its disk changed behind the
// sender's back) is never written: the receiver asks for the data, holds
// the writes and barriers behind it, and the stream goes on.
func TestDedupMissResends(t *testing.T) {
	c := newCluster(t, 2, func(i int, cfg *Config) { cfg.DedupIndexBytes = 1 << 20 })
	alpha := c.bootstrap()
	ctx := context.Background()
	r := mrand.New(mrand.NewPCG(c.seed, 9))
	h := randBlock(r, 4096)
	if err := alpha.WriteAt(ctx, h, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := alpha.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Change beta's copy of block 0 behind everyone's back.
	f, err := os.OpenFile(c.nodes[1].path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Block h again, elsewhere: a reference to block 0, which fails on beta.
	if err := alpha.WriteAt(ctx, h, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	later := randBlock(r, 64<<10)
	if err := alpha.WriteAt(ctx, later, 2<<20, true); err != nil {
		t.Fatal(err)
	}
	if err := alpha.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ps := peerState(alpha, "beta")
	if ps.DedupMisses == 0 {
		t.Fatalf("no dedup miss: %+v", ps)
	}
	if !bytes.Equal(readFileAt(t, c.nodes[1].path, 1<<20, 4096), h) {
		t.Fatal("the unresolved reference's data did not reach beta")
	}
	if !bytes.Equal(readFileAt(t, c.nodes[1].path, 2<<20, len(later)), later) {
		t.Fatal("the write after it did not reach beta")
	}
	if ps.Connects != 1 || ps.Connection != api.Connected {
		t.Fatalf("the connection did not survive the miss: %+v", ps)
	}
	// The index proved stale and was cleared: h goes as data again, then
	// dedups against its new place.
	for i := range 4 {
		if err := alpha.WriteAt(ctx, h, int64(3+i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := alpha.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := peerState(alpha, "beta"); got.DedupMisses != ps.DedupMisses || got.DedupBlocks <= ps.DedupBlocks {
		t.Fatalf("after the miss: %+v", got)
	}
	for i := range 4 {
		if !bytes.Equal(readFileAt(t, c.nodes[1].path, int64(3+i)<<20, 4096), h) {
			t.Fatalf("copy %d differs on beta", i)
		}
	}
}

// testPKI makes a CA and certificates for node names, as PEM-free tls
// values.
type testPKI struct {
	ca    *x509.Certificate
	key   *ecdsa.PrivateKey
	pool  *x509.CertPool
	would int64
}

func newTestPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{ca: ca, key: key, pool: pool}
}

// config returns node's TLS configuration: a certificate for node signed by
// this CA, trusting this CA.
func (k *testPKI) config(t testing.TB, node string) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k.would++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1 + k.would), Subject: pkix.Name{CommonName: node}, DNSNames: []string{node},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.ca, &key.PublicKey, k.key)
	if err != nil {
		t.Fatal(err)
	}
	return protocol.NewTLSConfig(tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, k.pool)
}

// Two nodes replicate over TLS; a node whose certificate comes from another
// CA, or names another node, is refused with a clear reason.
func TestTLS(t *testing.T) {
	pki := newTestPKI(t, "r0 CA")
	c := newCluster(t, 2, func(i int, cfg *Config) {
		cfg.TLS = pki.config(t, cfg.Self.Name)
		cfg.Compression = protocol.CodecS2
		cfg.DedupIndexBytes = 1 << 20
	})
	alpha := c.bootstrap()
	r := mrand.New(mrand.NewPCG(c.seed, 3))
	for i := range 64 {
		if err := alpha.WriteAt(context.Background(), randBlock(r, 16<<10), int64(i)*(64<<10), i%8 == 0); err != nil {
			t.Fatal(err)
		}
	}
	c.waitSynced(10 * time.Second)
	c.assertEqualStores()
	hb := fileHash(t, c.nodes[1].path)

	// Signed by another CA, trusting ours.
	untrusted := newTestPKI(t, "evil CA").config(t, "alpha")
	untrusted.RootCAs = pki.pool
	for _, tc := range []struct {
		name string
		tls  *tls.Config
		want string
	}{
		{"certificate from an untrusted CA", untrusted, "certificate"},
		{"untrusting", newTestPKI(t, "other CA").config(t, "alpha"), "certificate signed by unknown authority"},
		{"certificate of another node", pki.config(t, "gamma"), "not for node alpha"},
		{"no TLS", nil, "handshake with beta"},
	} {
		before := peerState(c.nodes[1].n, "alpha").AuthFailures
		m := intruderNode(t, c, func(cfg *Config) { cfg.TLS = tc.tls })
		waitFor(t, 10*time.Second, tc.name+" refused", func() bool {
			return strings.Contains(peerState(m, "beta").LastError, tc.want)
		})
		t.Logf("%s: intruder sees %q; beta's last error about alpha: %q", tc.name, peerState(m, "beta").LastError, peerState(c.nodes[1].n, "alpha").LastError)
		if tc.tls != nil {
			// The intruder may see its refusal before beta has counted it.
			waitFor(t, 5*time.Second, tc.name+": beta counts an authentication failure", func() bool {
				return peerState(c.nodes[1].n, "alpha").AuthFailures > before
			})
		}
		m.Close()
	}
	if fileHash(t, c.nodes[1].path) != hb {
		t.Fatal("beta's data changed")
	}
	if ps := peerState(c.nodes[1].n, "alpha"); ps.Connection != api.Connected {
		t.Fatalf("beta lost alpha: %+v", ps)
	}
}

// intruderNode runs a node claiming to be alpha (id 1) that dials beta
// directly.
func intruderNode(t *testing.T, c *cluster, mod func(*Config)) *Node {
	t.Helper()
	cfg := Config{Resource: "r0", Size: testSize, Self: PeerConfig{ID: 1, Name: "alpha", Addr: freeAddr(t)},
		Peers:    []PeerConfig{{ID: 2, Name: "beta", Addr: c.nodes[1].cfg.Self.Addr}},
		MetaPath: t.TempDir() + "/m.meta", Secret: []byte("s3cret"), Timeout: time.Second, ConnectInterval: 50 * time.Millisecond}
	mod(&cfg)
	st, err := OpenFileStore(t.TempDir()+"/m.img", cfg.Size)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	t.Cleanup(func() { n.Close(); cancel(); <-done })
	return n
}

// A peer without the secret or with a wrong one is refused before any
// state is exchanged; repeated failures from an address are answered ever
// later, and counted.
func TestAuthFailuresRateLimited(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.bootstrap()
	beta := c.nodes[1]
	try := func(secret string) (time.Duration, error, []protocol.Type) {
		nc, err := net.Dial("tcp", beta.cfg.Self.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		conn := protocol.NewConn(nc)
		start := time.Now()
		_, err = protocol.Dial(conn, &protocol.Hello{Features: protocol.Features, Size: testSize, Granularity: 4096,
			NodeID: 1, Resource: "r0", Name: "alpha"}, []byte(secret), 2, nil)
		took := time.Since(start)
		var after []protocol.Type
		for {
			f, err := conn.R.ReadFrame()
			if err != nil {
				break
			}
			after = append(after, f.Type)
		}
		return took, err, after
	}
	var took []time.Duration
	for i, secret := range []string{"", "guess", "guess2", "guess3", "guess4"} {
		d, err, after := try(secret)
		if err == nil || !isAuthErr(err) {
			t.Fatalf("attempt %d with secret %q: %v", i, secret, err)
		}
		for _, ty := range after {
			if ty != protocol.TypeRefuse {
				t.Fatalf("attempt %d: beta sent a %s frame after a failed authentication", i, ty)
			}
		}
		took = append(took, d)
	}
	t.Logf("handshake times: %v", took)
	// 0, 100ms, 200ms, 400ms, then capped at half the timeout (500ms).
	if took[3] < 300*time.Millisecond || took[4] < 400*time.Millisecond {
		t.Errorf("failures not rate limited: %v", took)
	}
	ps := peerState(beta.n, "alpha")
	if ps.AuthFailures != 5 {
		t.Errorf("beta counted %d authentication failures from alpha's address, want 5", ps.AuthFailures)
	}
	if ps.Connection != api.Connected || !strings.Contains(ps.LastError, "authentication failed") {
		t.Errorf("beta toward alpha: %+v", ps)
	}
	// While one penalized handshake runs, another from the same address is
	// closed at once.
	done := make(chan struct{})
	go func() { try("guess5"); close(done) }()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	_, err, _ := try("guess6")
	if time.Since(start) > 200*time.Millisecond || err == nil {
		t.Errorf("concurrent penalized handshake: %v after %v", err, time.Since(start))
	}
	<-done
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("concurrent handshake timed out instead of being closed")
	}
}

// repeatWriter writes a few recurring 4 KiB blocks (and zero blocks) all
// over the device until stop closes, so dedup references and zero markers
// keep crossing the link.
func repeatWriter(t *testing.T, n *Node, seed uint64, stop <-chan struct{}) {
	r := mrand.New(mrand.NewPCG(seed, 11))
	blocks := [][]byte{make([]byte, 4096), randBlock(r, 4096), randBlock(r, 4096), randBlock(r, 4096)}
	for {
		select {
		case <-stop:
			return
		default:
		}
		k := 1 + r.IntN(8)
		data := make([]byte, 0, k*4096)
		for range k {
			data = append(data, blocks[r.IntN(len(blocks))]...)
		}
		off := r.Int64N(testSize/4096-int64(k)) * 4096
		if err := n.WriteAt(context.Background(), data, off, false); err != nil {
			t.Errorf("write %d+%d: %v", off, len(data), err)
			return
		}
	}
}
