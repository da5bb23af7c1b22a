package chaos

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
	"github.com/repd/repd/nbd/nbdtest"
)

// Bins are the binaries a run uses.
type Bins struct {
	Dir, Repd, Repctl string
}

// Build builds repd and repctl into a new temporary directory; the caller
// removes b.Dir. race adds -race.
func Build(root string, race bool) (*Bins, error) {
	dir, err := os.MkdirTemp("", "repd-chaos-bin")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755) // an unprivileged repctl runs from here too
	args := []string{"build", "-o", dir + "/"}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/repd", "./cmd/repctl")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return &Bins{Dir: dir, Repd: filepath.Join(dir, "repd"), Repctl: filepath.Join(dir, "repctl")}, nil
}

// Options shape a cluster.
type Options struct {
	Nodes    int    // default 2
	Size     int64  // default 32 MiB
	Protocol string // "C" (default) or "A"
	Timeout  time.Duration
	Extra    string // extra [resource] lines
	DiskDir  func(i int) string
	// HostBase is the last byte of node 0's loopback address (node i is on
	// 127.0.0.(HostBase+i)); 0 means 20.
	HostBase int
}

// Cluster is a resource of processes on 127.0.0.x with a proxy on every
// peer link.
type Cluster struct {
	Dir     string
	Bins    *Bins
	Opt     Options
	Nodes   []*Node
	Proxies map[[2]int]*faultnet.Proxy // [dialer, listener]
	Seed    int64
}

// Node is one repd process.
type Node struct {
	c                                     *Cluster
	I                                     int
	Name, Host, NBD, Peer, Admin, Metrics string
	Disk, Meta, Conf, LogPath             string
	cmd                                   *exec.Cmd
	done                                  chan struct{}
	exitErr                               error
	admin                                 *admin.Client
}

var nodeNames = []string{"alpha", "beta", "gamma", "delta"}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewCluster writes the resource files and starts the proxies; no daemon
// runs yet.
func NewCluster(bins *Bins, dir string, o Options, seed int64) (*Cluster, error) {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Size == 0 {
		o.Size = 32 << 20
	}
	if o.Protocol == "" {
		o.Protocol = "C"
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	if o.HostBase == 0 {
		o.HostBase = 20
	}
	c := &Cluster{Dir: dir, Bins: bins, Opt: o, Proxies: map[[2]int]*faultnet.Proxy{}, Seed: seed}
	for i := range o.Nodes {
		host := fmt.Sprintf("127.0.0.%d", o.HostBase+i)
		n := &Node{c: c, I: i, Name: nodeNames[i], Host: host}
		var ports [3]int
		for k := range ports {
			p, err := freePort(host)
			if err != nil {
				c.Close()
				return nil, err
			}
			ports[k] = p
		}
		n.NBD = fmt.Sprintf("%s:%d", host, ports[0])
		n.Peer = fmt.Sprintf("%s:%d", host, ports[1])
		n.Metrics = fmt.Sprintf("%s:%d", host, ports[2])
		n.Admin = filepath.Join(dir, n.Name+".sock")
		dd := dir
		if o.DiskDir != nil {
			dd = o.DiskDir(i)
		}
		n.Disk = filepath.Join(dd, n.Name+".img")
		n.Meta = filepath.Join(dir, n.Name+".meta")
		n.Conf = filepath.Join(dir, n.Name+".toml")
		n.LogPath = filepath.Join(dir, n.Name+".log")
		n.admin = admin.NewClient(n.Admin)
		c.Nodes = append(c.Nodes, n)
	}
	for i := range c.Nodes {
		for j := i + 1; j < len(c.Nodes); j++ {
			// The proxy listens on the dialer's host, so its address is
			// distinct from every node's own listeners.
			px, err := faultnet.NewProxy(c.Nodes[i].Host+":0", c.Nodes[j].Peer, seed+int64(10*i+j))
			if err == nil {
				err = px.Start()
			}
			if err != nil {
				c.Close()
				return nil, err
			}
			c.Proxies[[2]int{i, j}] = px
		}
	}
	for i, n := range c.Nodes {
		var b strings.Builder
		fmt.Fprintf(&b, "[resource]\nname = \"r0\"\nsize = \"%d\"\nprotocol = %q\ntimeout = %q\nconnect-interval = \"100ms\"\n%s\n",
			o.Size, o.Protocol, o.Timeout.String(), o.Extra)
		for j, m := range c.Nodes {
			peer := m.Peer
			if i < j {
				peer = c.Proxies[[2]int{i, j}].Addr() // i dials j through the proxy
			}
			fmt.Fprintf(&b, "\n[[node]]\nname = %q\nid = %d\ndisk = %q\nmeta = %q\nnbd = %q\npeer = %q\nadmin = %q\nmetrics = %q\n",
				m.Name, j, m.Disk, m.Meta, m.NBD, peer, m.Admin, m.Metrics)
		}
		if err := os.WriteFile(n.Conf, []byte(b.String()), 0o644); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Proxy is the link between nodes i and j (either order).
func (c *Cluster) Proxy(i, j int) *faultnet.Proxy {
	if i > j {
		i, j = j, i
	}
	return c.Proxies[[2]int{i, j}]
}

// Close kills every daemon and stops the proxies.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Kill()
	}
	for _, p := range c.Proxies {
		p.Close()
	}
}

// Running reports whether the daemon runs.
func (n *Node) Running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Spawn starts the daemon without waiting for it.
func (n *Node) Spawn() error {
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(n.c.Bins.Repd, "--config", n.Conf, "--node", n.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	n.cmd = cmd
	done := make(chan struct{})
	n.done = done
	go func() { n.exitErr = cmd.Wait(); close(done) }()
	return nil
}

// Start starts the daemon and waits until its admin socket answers.
func (n *Node) Start() error {
	if err := n.Spawn(); err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := n.Status(); err == nil {
			return nil
		}
		select {
		case <-n.done:
			return fmt.Errorf("repd %s exited at start: %v: %s", n.Name, n.exitErr, n.LogTail(2000))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("repd %s did not come up in 20s", n.Name)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// Exited waits up to d for the daemon to exit and returns its error.
func (n *Node) Exited(d time.Duration) (bool, error) {
	select {
	case <-n.done:
		return true, n.exitErr
	case <-time.After(d):
		return false, nil
	}
}

// Kill sends SIGKILL and waits.
func (n *Node) Kill() { n.signal(syscall.SIGKILL) }

// Stop sends SIGTERM and waits for a clean exit.
func (n *Node) Stop() error { return n.signal(syscall.SIGTERM) }

func (n *Node) signal(sig syscall.Signal) error {
	if n.cmd == nil {
		return nil
	}
	defer func() { n.cmd = nil }()
	select {
	case <-n.done:
		return n.exitErr
	default:
	}
	n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
		return n.exitErr
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		return fmt.Errorf("%s did not exit within 30s of %v", n.Name, sig)
	}
}

// Pid is the daemon's process id, 0 if not running.
func (n *Node) Pid() int {
	if !n.Running() {
		return 0
	}
	return n.cmd.Process.Pid
}

// LogTail is the end of the node's log.
func (n *Node) LogTail(k int) string {
	b, _ := os.ReadFile(n.LogPath)
	if len(b) > k {
		b = b[len(b)-k:]
	}
	return string(b)
}

// Status asks the daemon over its admin socket.
func (n *Node) Status() (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.admin.Status(ctx)
}

// Ctl runs repctl against the node.
func (n *Node) Ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.c.Bins.Repctl, append([]string{"--admin", n.Admin}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("repctl %s on %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Scrape reads go_goroutines and process_resident_memory_bytes from the
// node's /metrics.
func (n *Node) Scrape() (goroutines, rss float64, err error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + n.Metrics + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "go_goroutines":
			goroutines, _ = strconv.ParseFloat(f[1], 64)
		case "process_resident_memory_bytes":
			rss, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return goroutines, rss, sc.Err()
}

// WaitFor polls cond every 50ms until it holds or d passes.
func WaitFor(what string, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// Up starts every node, waits until they are connected, declares the
// empty disks in sync and makes node 0 Primary.
func (c *Cluster) Up() error {
	for _, n := range c.Nodes {
		if err := n.Start(); err != nil {
			return err
		}
	}
	if err := WaitFor("all peers Connected", 30*time.Second, func() bool { return c.allConnected() }); err != nil {
		return err
	}
	p := c.Nodes[0]
	if _, err := p.Ctl("new-current-uuid", "--clear-bitmap"); err != nil {
		return err
	}
	if _, err := p.Ctl("primary"); err != nil {
		return err
	}
	return c.WaitInSync(30 * time.Second)
}

func (c *Cluster) allConnected() bool {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		s, err := n.Status()
		if err != nil {
			return false
		}
		for _, ps := range s.Peers {
			if c.byName(ps.Name).Running() && ps.Connection != api.Connected {
				return false
			}
		}
	}
	return true
}

func (c *Cluster) byName(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// WaitInSync waits until every running node is UpToDate and sees every
// running peer Established with nothing out of sync.
func (c *Cluster) WaitInSync(d time.Duration) error {
	var last string
	err := WaitFor("running nodes in sync", d, func() bool {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			s, err := n.Status()
			if err != nil {
				last = err.Error()
				return false
			}
			if s.Disk != "UpToDate" {
				last = n.Name + " disk " + s.Disk
				return false
			}
			for _, ps := range s.Peers {
				if !c.byName(ps.Name).Running() {
					continue
				}
				if ps.Connection != api.Connected || ps.Replication != api.Established || ps.OutOfSyncKiB != 0 {
					last = fmt.Sprintf("%s→%s %s/%s oos %dKiB %s", n.Name, ps.Name, ps.Connection, ps.Replication, ps.OutOfSyncKiB, ps.LastError)
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

// ReadDevice reads the whole device through the node's NBD export.
func (n *Node) ReadDevice() ([]byte, error) {
	cl, err := nbdtest.Dial("tcp", n.NBD, "r0")
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	img := make([]byte, n.c.Opt.Size)
	const chunk = 1 << 20
	for off := int64(0); off < int64(len(img)); off += chunk {
		if err := cl.Read(img[off:off+chunk], off); err != nil {
			return nil, fmt.Errorf("read %s at %d: %w", n.Name, off, err)
		}
	}
	return img, nil
}

// HashDisk hashes the node's backing file (stop the node first).
func (n *Node) HashDisk() (string, error) {
	f, err := os.Open(n.Disk)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, n.c.Opt.Size)); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)[:8]), nil
}

// StopAndHash stops every running node cleanly (recording which were
// UpToDate first) and compares the backing files of the UpToDate ones.
func (c *Cluster) StopAndHash() error {
	var upToDate []*Node
	for _, n := range c.Nodes {
		if s, err := n.Status(); err == nil && s.Disk == "UpToDate" && n.Running() {
			upToDate = append(upToDate, n)
		}
	}
	// Under protocol A a write completes before the peer has it: wait until
	// the primaries' journals are empty, then stop the secondaries first,
	// so that the last writes are not cut off by the primary's shutdown.
	var order []*Node
	for _, n := range c.Nodes {
		s, err := n.Status()
		if err == nil && s.Role == api.Primary {
			WaitFor("journal drained", 10*time.Second, func() bool {
				s, err := n.Status()
				return err != nil || s.JournalBytes == 0
			})
			order = append(order, n)
		} else {
			order = append([]*Node{n}, order...)
		}
	}
	for _, n := range order {
		if err := n.Stop(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return err
			}
			return fmt.Errorf("%s: unclean exit on SIGTERM: %v: %s", n.Name, err, n.LogTail(1500))
		}
	}
	var first, firstName string
	for _, n := range upToDate {
		h, err := n.HashDisk()
		if err != nil {
			return err
		}
		if first == "" {
			first, firstName = h, n.Name
		} else if h != first {
			return fmt.Errorf("UpToDate disks differ after resync: %s %s, %s %s", firstName, first, n.Name, h)
		}
	}
	if len(upToDate) < 2 {
		return fmt.Errorf("only %d UpToDate node(s) to compare", len(upToDate))
	}
	return nil
}
