package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// Attack tests: what a hostile NBD client can do to a real repd, and what
// the daemon does about it (issue 17).

// singleWith starts a one-node resource with extra [resource] lines and
// makes it Primary.
func singleWith(t *testing.T, size, extra string) *node {
	t.Helper()
	c := newCluster(t, clusterOpts{nodes: 1, size: size, extra: extra})
	n := c.nodes[0]
	n.start()
	n.mustCtl("primary", "--force")
	waitFor(t, "alpha Primary/UpToDate", 10*time.Second, func() bool {
		s := n.status()
		return s.Role == api.Primary && s.Disk == "UpToDate"
	})
	return n
}

// rssKiB is the daemon's resident set size (VmRSS in /proc/PID/status).
func (n *node) rssKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return v
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

func (n *node) log(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// goRaw dials the node's NBD address and enters transmission, returning
// the raw connection for requests the test writes itself.
func goRaw(t *testing.T, addr string) (net.Conn, *nbdtest.Negotiation) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	neg, err := nbdtest.Negotiate(nc, nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := neg.Info(nbd.OptGo, ""); err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Time{})
	return nc, neg
}

func readRequest(cookie, off uint64, n uint32) []byte {
	var h [nbd.RequestSize]byte
	binary.BigEndian.PutUint32(h[0:], nbd.MagicRequest)
	binary.BigEndian.PutUint16(h[6:], nbd.CmdRead)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint64(h[16:], off)
	binary.BigEndian.PutUint32(h[24:], n)
	return h[:]
}

// The review's probe: 20,000 pipelined READs of 64 KiB whose replies are
// never read took a Primary from 15 MiB to 1.5 GiB. Now the daemon's RSS
// stays within 64 MiB of where it was, the client is disconnected after
// nbd-write-timeout, and the daemon goes on serving others.
func TestNBDUnreadRepliesBounded(t *testing.T) {
	const writeTimeout = 3 * time.Second
	n := singleWith(t, "64MiB", `nbd-write-timeout = "3s"`)
	// Warm up with the attack's shape read by a well-behaved client
	// (batches of 64 pipelined 64 KiB reads), so that the baseline holds
	// what serving such a client costs anyway: pools, batch buffers, heap.
	good, err := nbdtest.Dial("tcp", n.nbd, "r0")
	if err != nil {
		t.Fatal(err)
	}
	for round := range 8 {
		var batch []nbdtest.Request
		for i := range 64 {
			batch = append(batch, nbdtest.Request{Type: nbd.CmdRead, Offset: uint64((round*64+i)%1024) << 16, Length: 64 << 10})
		}
		calls, err := good.StartBatch(batch)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range calls {
			if r, err := c.Wait(); err != nil || r.Error != 0 {
				t.Fatalf("warm-up read: %v %d", err, r.Error)
			}
		}
	}
	base := n.rssKiB(t)

	nc, _ := goRaw(t, n.nbd)
	const reqs, size = 20000, 64 << 10
	var b []byte
	for i := range reqs {
		b = append(b, readRequest(uint64(i), uint64(i%1024)*size, size)...)
	}
	start := time.Now()
	sendErr := make(chan error, 1)
	go func() {
		nc.SetWriteDeadline(time.Now().Add(60 * time.Second))
		_, err := nc.Write(b) // blocks once the daemon stops reading: backpressure
		sendErr <- err
	}()

	// Sample the RSS until the daemon logs the disconnect.
	peak := base
	var cut time.Duration
	for deadline := time.Now().Add(30 * time.Second); ; {
		peak = max(peak, n.rssKiB(t))
		if strings.Contains(n.log(t), "does not read its replies") {
			cut = time.Since(start)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no disconnect 30s after a client stopped reading (nbd-write-timeout %v); RSS %d -> %d KiB", writeTimeout, base, peak)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("RSS %d KiB before, peak %d KiB (+%d KiB); disconnected %v after the first request", base, peak, peak-base, cut)
	if peak-base > 64<<10 {
		t.Fatalf("RSS grew by %d KiB (from %d to %d) under a client that reads no replies, want under 64 MiB", peak-base, base, peak)
	}
	// The clock starts when the socket's buffers are full, a moment (up to
	// seconds under the race detector) after the first request.
	if cut < writeTimeout*7/8 || cut > writeTimeout+15*time.Second {
		t.Fatalf("disconnected %v after the first request, want nbd-write-timeout (%v) after the buffers filled", cut, writeTimeout)
	}
	// The client really is cut off: its pending writes fail and what it
	// can still read is a small part of what it asked for, then the end.
	select {
	case <-sendErr:
	case <-time.After(10 * time.Second):
		t.Fatal("the attacker's send still blocks after the disconnect")
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.Copy(io.Discard, nc)
	if got >= reqs*size/2 {
		t.Fatalf("the disconnected client still read %d bytes", got)
	}
	// Others are served throughout.
	if err := good.Write(bytes.Repeat([]byte{7}, 4096), 0, true); err != nil {
		t.Fatalf("a well-behaved client after the attack: %v", err)
	}
	good.Close()
}

// More connections than nbd-max-connections are closed at once (logged),
// while a client already connected goes on being served; once the flood
// ends new clients get in.
func TestNBDConnectionFlood(t *testing.T) {
	nbdinfo := testtool.Require(t, "nbdinfo")
	const limit = 8
	n := singleWith(t, "16MiB", fmt.Sprintf("nbd-max-connections = %d", limit))
	good, err := nbdtest.Dial("tcp", n.nbd, "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()

	const flood = 200
	var (
		mu      sync.Mutex
		held    []net.Conn
		greeted int
		refused int
		wg      sync.WaitGroup
	)
	for range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", n.nbd, 5*time.Second)
			if err != nil {
				return
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var g [18]byte
			_, err = io.ReadFull(c, g[:])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refused++
				c.Close()
				return
			}
			greeted++
			held = append(held, c) // kept open, idle in the handshake
		}()
	}
	wg.Wait()
	t.Logf("flood of %d: %d greeted, %d closed at once", flood, greeted, refused)
	if greeted > limit-1 {
		t.Fatalf("%d flood connections greeted beside the served client, limit %d", greeted, limit)
	}
	if refused < flood-limit {
		t.Fatalf("only %d of %d flood connections refused", refused, flood)
	}
	// The served client is unaffected.
	p := bytes.Repeat([]byte{0x3c}, 64<<10)
	if err := good.Write(p, 1<<20, true); err != nil {
		t.Fatalf("served client during the flood: %v", err)
	}
	got := make([]byte, len(p))
	if err := good.Read(got, 1<<20); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("served client during the flood: read %v", err)
	}
	if lines := strings.Count(n.log(t), "nbd: connection refused"); lines < 1 || lines > 20 {
		t.Fatalf("%d log lines for %d refusals: want at least one and rate-limited", lines, refused)
	}
	// The flood ends; a new client gets in.
	for _, c := range held {
		c.Close()
	}
	waitFor(t, "nbdinfo after the flood", 15*time.Second, func() bool {
		return exec.Command(nbdinfo, n.uri()).Run() == nil
	})
}

// tlsFiles writes a CA, the node's server certificate (IP SAN = host) and
// key into dir, and a GnuTLS client directory for each case.
type tlsFiles struct {
	good, untrusted, dir string
}

func writeTLSFiles(t *testing.T, dir, host string) tlsFiles {
	t.Helper()
	ca, err := nbdtest.NewPKI("r0 NBD clients")
	if err != nil {
		t.Fatal(err)
	}
	other, err := nbdtest.NewPKI("not ours")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue("alpha", true, host)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"nbd.crt": cert, "nbd.key": key, "nbd-ca.crt": ca.CAPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := tlsFiles{good: filepath.Join(dir, "client-good"), untrusted: filepath.Join(dir, "client-untrusted"), dir: dir}
	if err := ca.WriteClientDir(f.good, ca.CAPEM, "app server"); err != nil {
		t.Fatal(err)
	}
	if err := other.WriteClientDir(f.untrusted, ca.CAPEM, "intruder"); err != nil {
		t.Fatal(err)
	}
	return f
}

// nbd-tls = "require" with nbd-tls-ca: a plain client is refused with the
// reason, a client with a certificate from another CA is refused, a client
// with a certificate from the configured CA reads and writes.
func TestNBDTLSRequire(t *testing.T) {
	nbdinfo := testtool.Require(t, "nbdinfo")
	nbdcopy := testtool.Require(t, "nbdcopy")
	c := newCluster(t, clusterOpts{nodes: 1, size: "16MiB",
		// Relative paths: next to the resource file.
		extra: "nbd-tls = \"require\"\nnbd-tls-cert = \"nbd.crt\"\nnbd-tls-key = \"nbd.key\"\nnbd-tls-ca = \"nbd-ca.crt\""})
	n := c.nodes[0]
	files := writeTLSFiles(t, c.dir, n.host)
	n.start()
	n.mustCtl("primary", "--force")
	tlsURI := func(dir string) string { return "nbds://" + n.nbd + "/r0?tls-certificates=" + dir }

	cmd := exec.Command(nbdinfo, n.uri())
	cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("TLS is required on this server")) {
		t.Fatalf("plain nbdinfo against nbd-tls = require: err %v\n%s", err, out)
	}
	if !strings.Contains(n.log(t), "plain client refused: TLS required") {
		t.Fatal("the refusal of a plain client is not logged")
	}
	if out, err := exec.Command(nbdinfo, tlsURI(files.untrusted)).CombinedOutput(); err == nil {
		t.Fatalf("a client certificate from another CA was accepted:\n%s", out)
	}

	src := filepath.Join(t.TempDir(), "src")
	data := bytes.Repeat([]byte("repd over TLS "), (4<<20)/14+1)[:4<<20]
	os.WriteFile(src, append(data, make([]byte, 12<<20)...), 0o600)
	run(t, time.Minute, nbdcopy, src, tlsURI(files.good))
	back := filepath.Join(t.TempDir(), "back")
	run(t, time.Minute, nbdcopy, tlsURI(files.good), back)
	got, _ := os.ReadFile(back)
	if !bytes.Equal(got[:4<<20], data) {
		t.Fatal("data copied over TLS does not read back")
	}
	if !strings.Contains(n.log(t), `client_cert="CN=app server"`) {
		t.Fatal("the TLS client's certificate is not logged")
	}
}

// Bad NBD TLS configurations stop repd at start with a message naming the
// key.
func TestNBDBadTLSConfigRefused(t *testing.T) {
	buildBinaries(t)
	dir := t.TempDir()
	writeTLSFiles(t, dir, "127.0.0.1") // nbd.crt, nbd.key, nbd-ca.crt
	base := "[resource]\nname=\"r\"\nsize=\"1MiB\"\n%s\n[[node]]\nname=\"a\"\ndisk=\"DIR/a\"\nmeta=\"DIR/m\"\nnbd=\"127.0.0.1:1\"\nadmin=\"DIR/s\"\n"
	for _, tc := range []struct{ name, extra, want string }{
		{"no certificate", `nbd-tls = "require"`, `resource.nbd-tls = "require" needs nbd-tls-cert and nbd-tls-key`},
		{"missing file", "nbd-tls = \"allow\"\nnbd-tls-cert = \"gone.crt\"\nnbd-tls-key = \"nbd.key\"", "resource.nbd-tls-cert " + filepath.Join(dir, "gone.crt")},
		{"key is not the CA", "nbd-tls = \"require\"\nnbd-tls-cert = \"nbd.crt\"\nnbd-tls-key = \"nbd.key\"\nnbd-tls-ca = \"nbd.key\"", "resource.nbd-tls-ca"},
		{"bad mode", `nbd-tls = "yes"`, `"resource.nbd-tls"): "yes": must be "off", "allow" or "require"`},
		{"cert without tls", `nbd-tls-cert = "nbd.crt"`, `resource.nbd-tls-cert is set but nbd-tls is "off"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "c.toml")
			os.WriteFile(p, []byte(strings.ReplaceAll(fmt.Sprintf(base, tc.extra), "DIR", dir)), 0o644)
			out, err := exec.Command(bins.repd, "--config", p, "--node", "a").CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("repd with %s: err=%v, output:\n%s\nwant it to mention %q", tc.name, err, out, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
				t.Fatal("repd created the disk before refusing the configuration")
			}
		})
	}
}

// The NBD unix socket path: a regular file there, or a socket another
// process listens on, stops repd at start and is left alone; a stale
// socket (a SIGKILLed daemon's) is replaced.
func TestNBDUnixSocketPath(t *testing.T) {
	nbdinfo := testtool.Require(t, "nbdinfo")
	c := newCluster(t, clusterOpts{nodes: 1, size: "16MiB"})
	n := c.nodes[0]
	sock := filepath.Join(c.dir, "alpha.nbd")
	conf, err := os.ReadFile(c.conf)
	if err != nil {
		t.Fatal(err)
	}
	conf = bytes.Replace(conf, []byte(fmt.Sprintf("nbd = %q", n.nbd)), []byte(fmt.Sprintf("nbd = %q", "unix:"+sock)), 1)
	if err := os.WriteFile(c.conf, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	uri := "nbd+unix:///r0?socket=" + sock
	startFails := func(want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bins.repd, "--config", c.conf, "--node", n.name)
		cmd.Env = quickExitEnv()
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), sock) {
			t.Fatalf("repd with %s: err=%v, output:\n%s\nwant it to name the path and mention %q", sock, err, out, want)
		}
	}

	// A regular file: refused, kept.
	os.WriteFile(sock, []byte("someone's data"), 0o644)
	startFails("is a regular file, not a socket")
	if b, _ := os.ReadFile(sock); string(b) != "someone's data" {
		t.Fatal("repd touched the regular file at its NBD socket path")
	}
	os.Remove(sock)

	// A live socket of another process: refused, still live.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	startFails("another process is listening on it")
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	lc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the other process's socket was taken over: %v", err)
	}
	lc.Close()
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // now stale, as after SIGKILL

	// A stale socket: replaced, and repd serves on it.
	n.start()
	n.mustCtl("primary", "--force")
	run(t, 30*time.Second, nbdinfo, uri)
	// SIGKILL leaves it stale again; a restart replaces it again.
	n.stop(syscall.SIGKILL)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no stale socket after SIGKILL: %v", err)
	}
	n.start()
	run(t, 30*time.Second, nbdinfo, uri)
	// A clean stop removes it.
	if err := n.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("NBD socket left after a clean stop: %v", err)
	}
}
