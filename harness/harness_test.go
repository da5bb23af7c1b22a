package harness

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
	"github.com/repd/repd/faultnet"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBinaries()
	os.Exit(code)
}

// parse reads a resource file New wrote with repd's own parser.
func parse(t *testing.T, path string) *config.File {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.Parse(b)
	if err != nil {
		t.Fatalf("repd refuses the resource file %s: %v\n%s", path, err, b)
	}
	return f
}

// With proxies, each node has its own resource file that repd accepts, in
// which the peers it dials (the higher ids) are at their proxy's address
// and everyone else at its own; the options all reach the file.
func TestResourceFilesWithProxies(t *testing.T) {
	dir := t.TempDir()
	var setup [][2]int
	c, err := New(&Bins{}, dir, Options{
		Nodes: 3, Resource: "bench", Size: 32 << 20, Protocol: "A", Timeout: time.Second, ConnectInterval: 100 * time.Millisecond,
		Extra: "on-congestion = \"block\"\njournal-size = 8388608\n", HostBase: 60, NBDUnix: true, Metrics: true,
		Proxies: true, Seed: 100, ProxySetup: func(i, j int, p *faultnet.Proxy) {
			setup = append(setup, [2]int{i, j})
			p.MaxInFlight = 1 << 20
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Conf != "" || len(c.Proxies) != 3 || len(setup) != 3 {
		t.Fatalf("shared conf %q, %d proxies, setup called for %v", c.Conf, len(c.Proxies), setup)
	}
	if s := c.Proxy(2, 1).Seed(); s != 112 {
		t.Errorf("proxy 1–2 seed %d, want Seed+10*1+2 = 112", s)
	}
	for i, n := range c.Nodes {
		if n.Host != "127.0.0.6"+string(rune('0'+i)) || !strings.HasPrefix(n.Peer, n.Host+":") || !strings.HasPrefix(n.Metrics, n.Host+":") {
			t.Errorf("node %d on %s: peer %s metrics %s", i, n.Host, n.Peer, n.Metrics)
		}
		if network, addr := n.NBDAddr(); network != "unix" || addr != filepath.Join(dir, n.Name+".nbd.sock") {
			t.Errorf("%s NBD %s %s", n.Name, network, addr)
		}
		if want := "nbd+unix:///bench?socket=" + filepath.Join(dir, n.Name+".nbd.sock"); n.URI() != want {
			t.Errorf("URI %s, want %s", n.URI(), want)
		}
		f := parse(t, n.Conf)
		if f.Resource.Name != "bench" || len(f.Nodes) != 3 {
			t.Fatalf("%s: resource %q with %d nodes", n.Conf, f.Resource.Name, len(f.Nodes))
		}
		for j, e := range f.Nodes {
			want := c.Nodes[j].Peer
			if i < j {
				want = c.Proxy(i, j).Addr()
			}
			if e.Name != c.Nodes[j].Name || e.Peer != want || e.NBD != c.Nodes[j].NBD || e.Metrics != c.Nodes[j].Metrics || e.ID == nil || *e.ID != j {
				t.Errorf("%s's entry for %s: %+v, want peer %s", n.Name, c.Nodes[j].Name, e, want)
			}
		}
		b, _ := os.ReadFile(n.Conf)
		for _, s := range []string{`protocol = "A"`, `timeout = "1s"`, `connect-interval = "100ms"`, `on-congestion = "block"`, "size = 33554432"} {
			if !strings.Contains(string(b), s) {
				t.Errorf("%s lacks %q", n.Conf, s)
			}
		}
	}
	// The proxy listens on the dialer's address and leads to the other's
	// peer address.
	if px := c.Proxy(0, 2); !strings.HasPrefix(px.Addr(), "127.0.0.60:") || px.Target() != c.Nodes[2].Peer {
		t.Errorf("proxy 0–2: %s → %s", px.Addr(), px.Target())
	}
}

// Without proxies every node runs with one shared file; the defaults are
// two nodes alpha and beta, 64 MiB, protocol C, TCP on 127.0.0.2 and .3.
func TestResourceFileShared(t *testing.T) {
	dir := t.TempDir()
	c, err := New(&Bins{}, dir, Options{Prealloc: true, PeerAddr: func(i int, n *Node) string {
		return n.Host + ":7" + string(rune('0'+i)) + "89"
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Conf != filepath.Join(dir, "r0.toml") || c.Nodes[1].Conf != c.Conf || len(c.Proxies) != 0 {
		t.Fatalf("conf %q / %q, %d proxies", c.Conf, c.Nodes[1].Conf, len(c.Proxies))
	}
	f := parse(t, c.Conf)
	if len(f.Nodes) != 2 || f.Nodes[0].Name != "alpha" || f.Nodes[1].Name != "beta" || f.Nodes[1].Peer != "127.0.0.3:7189" || f.Nodes[0].Metrics != "" {
		t.Errorf("nodes %+v", f.Nodes)
	}
	if u := c.Nodes[0].URI(); !strings.HasPrefix(u, "nbd://127.0.0.2:") || !strings.HasSuffix(u, "/r0") {
		t.Errorf("URI %s", u)
	}
	for _, n := range c.Nodes {
		fi, err := os.Stat(n.Disk)
		if err != nil || fi.Size() != 64<<20 {
			t.Errorf("preallocated disk %s: %v %v", n.Disk, fi, err)
		}
	}
	// Peer links are authenticated: a secret only its owner reads, which
	// repd's loader accepts.
	if f.Resource.SecretFile != c.Secret || c.Secret == "" || f.Resource.Insecure {
		t.Errorf("secret-file %q, harness secret %q, insecure %v", f.Resource.SecretFile, c.Secret, f.Resource.Insecure)
	}
	if fi, err := os.Stat(c.Secret); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret %s: %v %v", c.Secret, fi, err)
	}
	if lf, err := config.Load(c.Conf); err != nil {
		t.Errorf("repd's loader: %v", err)
	} else if sec, err := lf.Secret(); err != nil || len(sec) < 32 {
		t.Errorf("secret: %d bytes, %v", len(sec), err)
	}
}

// Insecure asks for unauthenticated peer links, and says so in the file;
// a secret or TLS in Extra is left to the caller.
func TestResourceFileInsecure(t *testing.T) {
	c, err := New(&Bins{}, t.TempDir(), Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if f := parse(t, c.Conf); !f.Resource.Insecure || f.Resource.SecretFile != "" || c.Secret != "" {
		t.Errorf("insecure %v, secret-file %q, harness secret %q", f.Resource.Insecure, f.Resource.SecretFile, c.Secret)
	}
	own := filepath.Join(t.TempDir(), "own.secret")
	c2, err := New(&Bins{}, t.TempDir(), Options{Extra: "secret-file = " + strconv.Quote(own)})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if f := parse(t, c2.Conf); f.Resource.SecretFile != own || c2.Secret != "" {
		t.Errorf("the caller's secret-file: %q, harness secret %q", f.Resource.SecretFile, c2.Secret)
	}
}

// Names alone set the number of nodes.
func TestOptionsNames(t *testing.T) {
	for _, names := range [][]string{{"alpha"}, {"alpha", "bravo", "charlie"}} {
		c, err := New(&Bins{}, t.TempDir(), Options{Names: names})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if len(c.Nodes) != len(names) || c.Nodes[len(names)-1].Name != names[len(names)-1] {
			t.Errorf("names %q: %d nodes", names, len(c.Nodes))
		}
	}
}

// Options that cannot make a cluster are refused with what to change.
func TestOptionsRefused(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	for _, c := range []struct {
		o    Options
		dir  string
		want string
	}{
		{Options{Nodes: 9}, "", "name every node"},
		{Options{Names: []string{"a", "a"}}, "", "given twice"},
		{Options{Size: 1000}, "", "multiple of 4 KiB"},
		{Options{HostBase: 250, Nodes: 6, Names: []string{"a", "b", "c", "d", "e", "f"}}, "", "127.0.0.1..254"},
		{Options{}, long, "use a shorter directory"},
	} {
		if c.dir == "" {
			c.dir = t.TempDir()
		}
		_, err := New(&Bins{}, c.dir, c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error saying %q", c.o, err, c.want)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader("# HELP go_goroutines x\n# TYPE go_goroutines gauge\ngo_goroutines 42\n" +
		"process_resident_memory_bytes 1.2e+07\nnbd_requests_total{cmd=\"read\"} 7\nbroken\n\nnan_line x\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m["go_goroutines"] != 42 || m["process_resident_memory_bytes"] != 12e6 || m[`nbd_requests_total{cmd="read"}`] != 7 || len(m) != 3 {
		t.Errorf("parsed %v", m)
	}
}

func bins(t *testing.T) *Bins {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs repd")
	}
	b, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A repd that refuses its resource file: Start says so at once, with the
// daemon's own words.
func TestStartReportsRefusal(t *testing.T) {
	b := bins(t)
	c, err := New(b, t.TempDir(), Options{Nodes: 1, HostBase: 70, Extra: "bogus-key = 1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	err = c.Nodes[0].Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "exited at start") || !strings.Contains(err.Error(), "bogus-key") {
		t.Fatalf("start on a bad resource file: %v", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("took %s to notice", d)
	}
	if c.Nodes[0].Running() || c.Nodes[0].Pid() != 0 {
		t.Error("a refused node counts as running")
	}
}

// The life of a cluster: up through proxies, a partition, SIGKILL and
// restart of the secondary, resync, the devices equal through NBD and on
// disk after a clean shutdown.
func TestClusterLifecycle(t *testing.T) {
	b := bins(t)
	ctx := t.Context()
	c, err := Launch(ctx, b, t.TempDir(), Options{
		Size: 16 << 20, Timeout: time.Second, ConnectInterval: 100 * time.Millisecond,
		HostBase: 72, Metrics: true, Proxies: true, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer func() {
		if t.Failed() {
			t.Log(c.LogTails(3000))
		}
	}()
	p, s := c.Nodes[0], c.Nodes[1]
	st, err := p.Status(ctx)
	if err != nil || st.Role != api.Primary || st.Disk != "UpToDate" {
		t.Fatalf("after Up: %v %v", st, err)
	}
	write := func(b byte, off int64) {
		t.Helper()
		cl, err := p.DialNBD()
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = b
		}
		if err := cl.Write(buf, off, true); err != nil {
			t.Fatal(err)
		}
	}
	write(1, 0)
	c.Proxy(0, 1).Partition(true)
	c.Proxy(0, 1).CutAll()
	if err := p.WaitPeers(ctx, 10*time.Second, func(ps api.PeerStatus) bool { return !Connected(ps) }); err != nil {
		t.Fatal(err)
	}
	write(2, 4<<20)
	c.Proxy(0, 1).Partition(false)
	if err := c.WaitInSync(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	s.Kill()
	if s.Running() || s.Pid() != 0 {
		t.Fatal("killed node still counts as running")
	}
	write(3, 8<<20)
	// The restart goes through a wrapper that execs repd (as a test that
	// runs it in another namespace does).
	wrapper := filepath.Join(t.TempDir(), "wrap")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\necho wrapped\nexec \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wrapper, s.Command().Args...)
	cmd.Env = QuickExitEnv()
	if err := s.StartCommand(ctx, cmd); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.LogTail(100000), "wrapped") {
		t.Error("the wrapper's output is not in the node's log")
	}
	if err := s.Start(ctx); err == nil || !strings.Contains(err.Error(), "runs already") {
		t.Errorf("second start of a running node: %v", err)
	}
	if err := c.WaitInSync(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	a, err := p.ReadDevice()
	if err != nil {
		t.Fatal(err)
	}
	bb, err := s.ReadDevice()
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(bb) || a[8<<20] != 3 || a[4<<20] != 2 || a[0] != 1 {
		t.Fatal("the devices differ after resync, or lack the writes")
	}

	m, err := s.Scrape(ctx)
	if err != nil || m["go_goroutines"] <= 0 {
		t.Errorf("scrape: %v (%d samples)", err, len(m))
	}
	out, err := p.Ctl(ctx, "frobnicate")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(err.Error(), "frobnicate on alpha") || out == "" {
		t.Errorf("repctl frobnicate: %q, %v", out, err)
	}
	if err := c.ShutdownAndCompare(ctx); err != nil {
		t.Fatal(err)
	}
	if p.Running() || s.Running() {
		t.Error("nodes run after the shutdown")
	}
	if !strings.Contains(c.LogTails(100000), "stopped cleanly") {
		t.Errorf("no clean stop in the logs:\n%s", c.LogTails(2000))
	}
	if err := WaitFor(context.Background(), "never", 100*time.Millisecond, func() bool { return false }); err == nil || !strings.Contains(err.Error(), "waiting for never") {
		t.Errorf("WaitFor timeout: %v", err)
	}
}

func TestPeerPredicates(t *testing.T) {
	ok := api.PeerStatus{Connection: api.Connected, Replication: api.Established, Disk: "UpToDate"}
	for _, c := range []struct {
		p        api.PeerStatus
		conn, in bool
	}{
		{ok, true, true},
		{api.PeerStatus{Connection: api.Connected, Replication: api.Established, Disk: "UpToDate", OutOfSyncKiB: 8}, true, false},
		{api.PeerStatus{Connection: api.Connected, Replication: api.SyncSource, Disk: "Inconsistent"}, true, false},
		{api.PeerStatus{Connection: api.Connected, Replication: api.Established, Disk: "Inconsistent"}, true, false},
		{api.PeerStatus{Connection: api.Connecting}, false, false},
		{api.PeerStatus{Connection: api.Connected, Replication: api.Established, Disk: "Diskless", Witness: true}, true, true},
		{api.PeerStatus{Connection: api.Connecting, Witness: true}, false, false},
	} {
		if Connected(c.p) != c.conn || InSync(c.p) != c.in {
			t.Errorf("%+v: Connected %v InSync %v, want %v %v", c.p, Connected(c.p), InSync(c.p), c.conn, c.in)
		}
	}
}

// A witness gets disk = "none", a state file and no NBD; priorities reach
// the file; repd's parser accepts it. Bad witness options are refused.
func TestWitnessResourceFile(t *testing.T) {
	c, err := New(&Bins{}, t.TempDir(), Options{Names: []string{"alpha", "beta", "tie"}, Witnesses: []int{2}, Priorities: []int{0, 5},
		Extra: "auto-promote = true\n", Prealloc: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tie := c.Nodes[2]
	if !tie.Witness || tie.NBD != "" || tie.Disk != "none" || !strings.HasSuffix(tie.Meta, "tie.state") || c.Nodes[1].Witness {
		t.Fatalf("witness node %+v", tie)
	}
	f := parse(t, c.Conf)
	if !f.Nodes[2].Witness() || f.Nodes[2].NBD != "" || f.Nodes[1].Priority != 5 || f.Nodes[0].Priority != 0 || !f.Resource.AutoPromote {
		t.Errorf("parsed %+v", f.Nodes)
	}
	for _, o := range []struct {
		o    Options
		want string
	}{
		{Options{Nodes: 3, Witnesses: []int{0}}, "node 0"},
		{Options{Nodes: 3, Witnesses: []int{3}}, "out of range"},
		{Options{Nodes: 2, Witnesses: []int{1, 1}}, "no data node"},
		{Options{Nodes: 2, Priorities: []int{1, 2, 3}}, "3 priorities for 2 nodes"},
	} {
		if _, err := New(&Bins{}, t.TempDir(), o.o); err == nil || !strings.Contains(err.Error(), o.want) {
			t.Errorf("%+v: %v, want an error saying %q", o.o, err, o.want)
		}
	}
}

// Two data nodes and a witness with auto-promote come up with node 0
// Primary and in sync, and shut down with the witness last.
func TestWitnessCluster(t *testing.T) {
	b := bins(t)
	ctx := t.Context()
	c, err := Launch(ctx, b, t.TempDir(), Options{
		Names: []string{"alpha", "beta", "tie"}, Witnesses: []int{2}, Size: 8 << 20, Timeout: time.Second,
		ConnectInterval: 100 * time.Millisecond, HostBase: 76, Extra: "auto-promote = true\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Nodes[0].Status(ctx)
	if err != nil || st.Role != api.Primary || !st.Quorum || st.Votes != 3 || !st.AutoPromote {
		t.Fatalf("alpha after Up: %+v %v", st, err)
	}
	wst, err := c.Nodes[2].Status(ctx)
	if err != nil || !wst.Witness || wst.Role != api.Secondary {
		t.Fatalf("tie after Up: %+v %v", wst, err)
	}
	if err := c.ShutdownAndCompare(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.Nodes[0].LogTail(100000), "stopped cleanly") {
		t.Errorf("alpha did not stop cleanly (it should keep its quorum until it stops):\n%s", c.Nodes[0].LogTail(2000))
	}
}

// FreePort never hands out a port twice for a host, though the kernel may
// offer the same free port to two listens in a row.
func TestFreePortUnique(t *testing.T) {
	seen := map[int]bool{}
	for range 300 {
		p, err := FreePort("127.0.0.9")
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
