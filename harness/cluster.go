// Package harness runs a repd resource as real processes on this machine:
// the one process-level cluster of e2e's tests, chaos's scenarios and soak,
// and the benchmark.
//
// New writes the resource file from Options and picks the addresses: node i
// listens on 127.0.0.(HostBase+i) (NBD on TCP or a unix socket, peers,
// metrics) and on an admin socket in the cluster's directory. With
// Options.Proxies a faultnet proxy sits on every link: the lower node id
// dials the higher, so each node gets its own resource file in which the
// peers it dials are listed at their proxy's address (the proxy listens on
// the dialer's loopback address). Up starts every node and makes node 0 an
// UpToDate Primary; Launch does both and retries when a port picked free
// was taken meanwhile.
//
// Nodes start (Start waits until the admin API answers), stop (SIGTERM),
// are killed (SIGKILL) and restart on the same files and addresses. Status
// is api.Status from the admin API; the Wait methods poll it. Ctl runs
// repctl. A node's output goes to NAME.log in the cluster's directory
// (LogTail, LogTails).
//
// The package does not depend on testing: every method returns an error
// and the caller decides what a failure means (e2e wraps them in t.Fatal
// helpers; chaos records violations; bench writes them into its report).
// Constructors start no goroutines but the proxies' (Close stops them);
// each running repd has one goroutine waiting for it.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
	"github.com/repd/repd/internal/ctxtime"
)

// Options shape a cluster. The zero value is two nodes of 64 MiB under
// protocol C named alpha and beta on 127.0.0.2 and 127.0.0.3.
type Options struct {
	Nodes    int      // default len(Names), or 2
	Names    []string // node names; default alpha, beta, gamma, delta, ...
	Resource string   // resource and NBD export name; default "r0"
	Size     int64    // bytes; default 64 MiB
	Protocol string   // "C" (default) or "A"
	// Timeout and ConnectInterval are written as timeout and
	// connect-interval when set (repd's defaults otherwise).
	Timeout         time.Duration
	ConnectInterval time.Duration
	Extra           string // more [resource] lines, verbatim
	// Insecure runs a cluster of several nodes without peer
	// authentication (insecure = true). Otherwise the harness writes a
	// fresh secret (mode 0600) and names it as secret-file, unless Extra
	// sets secret-file, TLS or insecure itself.
	Insecure bool
	// HostBase is the last byte of node 0's loopback address: node i is
	// on 127.0.0.(HostBase+i). Default 2.
	HostBase int
	NBDUnix  bool // NBD on a unix socket NAME.nbd.sock instead of TCP
	Metrics  bool // a metrics and health listener per node
	// Proxies puts a faultnet proxy on every link (Cluster.Proxy).
	// ProxySetup, if set, configures each before it starts (shaping,
	// MaxInFlight); its seed is Seed + 10*i + j for the link i–j.
	Proxies    bool
	ProxySetup func(i, j int, p *faultnet.Proxy)
	Seed       int64
	// DiskDir is the directory of node i's backing file (default: the
	// cluster's). Prealloc creates the backing files with fallocate before
	// the start instead of letting repd create them sparse.
	DiskDir  func(i int) string
	Prealloc bool
	// PeerAddr, if set, replaces node i's peer address (listened on by
	// node i, dialed by the others) after New chose one.
	PeerAddr func(i int, n *Node) string
	// Witnesses are the indices of the nodes that are witnesses: disk =
	// "none", a state file NAME.state as meta, no NBD. They vote and store
	// nothing; Up, the Wait methods and Shutdown treat them as such.
	Witnesses []int
	// Priorities[i], if given, is node i's priority (automatic failover
	// prefers the higher).
	Priorities []int
	// CPUMasks[i], if given and not "", is node i's cpu-mask (hexadecimal,
	// DRBD's notation): its threads run only on those CPUs.
	CPUMasks []string
	// Args are more repd arguments (e.g. --log-level debug).
	Args []string
	// StopTimeout is how long Stop and Kill wait for a node to exit before
	// SIGKILL; default 30 s.
	StopTimeout time.Duration
	// Logf reports what Up had to retry; nil is quiet.
	Logf func(format string, args ...any)
}

var defaultNames = []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}

func (o Options) withDefaults() (Options, error) {
	if o.Nodes == 0 {
		o.Nodes = len(o.Names)
		if o.Names == nil {
			o.Nodes = 2
		}
	}
	if o.Names == nil {
		o.Names = defaultNames
	}
	if o.Nodes < 1 || o.Nodes > len(o.Names) {
		return o, fmt.Errorf("harness: %d nodes but %d names: name every node (Options.Names)", o.Nodes, len(o.Names))
	}
	o.Names = o.Names[:o.Nodes]
	for _, w := range o.Witnesses {
		if w < 0 || w >= o.Nodes {
			return o, fmt.Errorf("harness: witness index %d out of range 0..%d", w, o.Nodes-1)
		}
		if len(o.Witnesses) >= o.Nodes {
			return o, fmt.Errorf("harness: witnesses %v leave no data node among %d nodes", o.Witnesses, o.Nodes)
		}
	}
	if slices.Contains(o.Witnesses, 0) {
		return o, errors.New("harness: node 0 is the one Up makes Primary: it cannot be a witness (list a later index in Options.Witnesses)")
	}
	if len(o.Priorities) > o.Nodes {
		return o, fmt.Errorf("harness: %d priorities for %d nodes", len(o.Priorities), o.Nodes)
	}
	for i, n := range o.Names {
		if n == "" || slices.Contains(o.Names[:i], n) {
			return o, fmt.Errorf("harness: node name %q empty or given twice in %q", n, o.Names)
		}
	}
	if o.Resource == "" {
		o.Resource = "r0"
	}
	if o.Size == 0 {
		o.Size = 64 << 20
	}
	if o.Size < 0 || o.Size%4096 != 0 {
		return o, fmt.Errorf("harness: size %d: want a positive multiple of 4 KiB", o.Size)
	}
	if o.Protocol == "" {
		o.Protocol = "C"
	}
	if o.HostBase == 0 {
		o.HostBase = 2
	}
	if o.HostBase < 1 || o.HostBase+o.Nodes > 255 {
		return o, fmt.Errorf("harness: host base %d with %d nodes leaves 127.0.0.1..254", o.HostBase, o.Nodes)
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 30 * time.Second
	}
	return o, nil
}

// Cluster is one resource whose nodes run as repd processes here.
type Cluster struct {
	Dir   string
	Bins  *Bins
	Opt   Options // with the defaults filled in
	Nodes []*Node
	// Conf is the resource file every node runs with; "" with proxies,
	// where each node has its own (Node.Conf).
	Conf    string
	Proxies map[[2]int]*faultnet.Proxy // [dialer, listener]
	// Secret is the secret file the harness wrote ("" if none).
	Secret string
	// Notes say what Up had to do beyond the plan (a repeated command, a
	// reconnect), for a report.
	Notes []string
}

// FreePort returns a TCP port free on host right now, below Linux's
// ephemeral range (32768-60999 by default), and never one it returned
// before for that host in this process. A port from listening on port 0
// may be given to an outgoing connection before repd binds it, and two
// such listens in a row may get the same port (a node's NBD and peer
// addresses once were: bind: address already in use, e2e
// TestBackupFromSecondary). Another process may still take it before
// repd binds it: Launch retries then.
func FreePort(host string) (int, error) {
	for range 1000 {
		p := 20000 + mrand.IntN(12000)
		key := net.JoinHostPort(host, fmt.Sprint(p))
		if _, dup := handedOut.Load(key); dup {
			continue
		}
		l, err := net.Listen("tcp", key)
		if err != nil {
			continue
		}
		l.Close()
		if _, dup := handedOut.LoadOrStore(key, true); !dup {
			return p, nil
		}
	}
	return 0, fmt.Errorf("find a free port on %s: none of 1000 tried between 20000 and 32000 was free and not handed out already", host)
}

// handedOut holds the host:port pairs FreePort returned.
var handedOut sync.Map

// sunPathMax is the longest unix socket path (sockaddr_un's sun_path, with
// its terminating NUL).
const sunPathMax = 107

// New chooses the nodes' addresses and files in dir, starts the proxies
// (with Options.Proxies) and writes the resource files. No repd runs yet.
func New(bins *Bins, dir string, o Options) (*Cluster, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Bins: bins, Opt: o, Proxies: map[[2]int]*faultnet.Proxy{}}
	fail := func(err error) (*Cluster, error) {
		c.Close()
		return nil, err
	}
	for i, name := range o.Names {
		host := fmt.Sprintf("127.0.0.%d", o.HostBase+i)
		n := &Node{c: c, I: i, Name: name, Host: host, Witness: slices.Contains(o.Witnesses, i)}
		addr := func() (string, error) {
			p, err := FreePort(host)
			return fmt.Sprintf("%s:%d", host, p), err
		}
		switch {
		case n.Witness: // no NBD
		case o.NBDUnix:
			n.NBD = "unix:" + filepath.Join(dir, name+".nbd.sock")
		default:
			n.NBD, err = addr()
		}
		if err != nil {
			return fail(err)
		}
		if n.Peer, err = addr(); err != nil {
			return fail(err)
		}
		if o.Metrics {
			if n.Metrics, err = addr(); err != nil {
				return fail(err)
			}
		}
		n.Admin = filepath.Join(dir, name+".sock")
		for _, sock := range []string{n.Admin, strings.TrimPrefix(n.NBD, "unix:")} {
			if len(sock) > sunPathMax {
				return fail(fmt.Errorf("harness: socket path %s is longer than %d bytes: use a shorter directory", sock, sunPathMax))
			}
		}
		dd := dir
		if o.DiskDir != nil {
			dd = o.DiskDir(i)
		}
		n.Disk = filepath.Join(dd, name+".img")
		n.Meta = filepath.Join(dir, name+".meta")
		if n.Witness {
			n.Disk, n.Meta = "none", filepath.Join(dir, name+".state")
		}
		n.LogPath = filepath.Join(dir, name+".log")
		n.admin = admin.NewClient(n.Admin)
		if o.PeerAddr != nil {
			n.Peer = o.PeerAddr(i, n)
		}
		c.Nodes = append(c.Nodes, n)
	}
	if err := c.writeSecret(); err != nil {
		return fail(err)
	}
	if o.Prealloc {
		for _, n := range c.Nodes {
			if n.Witness {
				continue
			}
			if err := fallocate(n.Disk, o.Size); err != nil {
				return fail(err)
			}
		}
	}
	if o.Proxies {
		for i := range c.Nodes {
			for j := i + 1; j < len(c.Nodes); j++ {
				px, err := faultnet.NewProxy(c.Nodes[i].Host+":0", c.Nodes[j].Peer, o.Seed+int64(10*i+j))
				if err != nil {
					return fail(fmt.Errorf("proxy %s→%s: %w", c.Nodes[i].Name, c.Nodes[j].Name, err))
				}
				c.Proxies[[2]int{i, j}] = px
				if o.ProxySetup != nil {
					o.ProxySetup(i, j, px)
				}
				if err := px.Start(); err != nil {
					return fail(fmt.Errorf("proxy %s→%s: %w", c.Nodes[i].Name, c.Nodes[j].Name, err))
				}
			}
		}
		for i, n := range c.Nodes {
			n.Conf = filepath.Join(dir, n.Name+".toml")
			if err := os.WriteFile(n.Conf, []byte(c.resourceFile(i)), 0o644); err != nil {
				return fail(err)
			}
		}
		return c, nil
	}
	c.Conf = filepath.Join(dir, o.Resource+".toml")
	if err := os.WriteFile(c.Conf, []byte(c.resourceFile(-1)), 0o644); err != nil {
		return fail(err)
	}
	for _, n := range c.Nodes {
		n.Conf = c.Conf
	}
	return c, nil
}

// resourceFile is node self's resource file: the peers it dials (those
// after it) at their proxy's address; self < 0 is the file without
// proxies, the same for every node.
func (c *Cluster) resourceFile(self int) string {
	o := c.Opt
	var b strings.Builder
	fmt.Fprintf(&b, "# written by the repd test harness (harness.New)\n[resource]\nname = %q\nsize = %d\nprotocol = %q\n", o.Resource, o.Size, o.Protocol)
	if o.Timeout > 0 {
		fmt.Fprintf(&b, "timeout = %q\n", o.Timeout.String())
	}
	if o.ConnectInterval > 0 {
		fmt.Fprintf(&b, "connect-interval = %q\n", o.ConnectInterval.String())
	}
	if c.Secret != "" {
		fmt.Fprintf(&b, "secret-file = %q\n", c.Secret)
	}
	if o.Insecure {
		b.WriteString("insecure = true # the harness was asked for unauthenticated peer links\n")
	}
	if x := strings.TrimSpace(o.Extra); x != "" {
		b.WriteString(x + "\n")
	}
	for j, m := range c.Nodes {
		peer := m.Peer
		if self >= 0 && self < j {
			peer = c.Proxy(self, j).Addr()
		}
		fmt.Fprintf(&b, "\n[[node]]\nname = %q\nid = %d\ndisk = %q\nmeta = %q\n", m.Name, j, m.Disk, m.Meta)
		if m.NBD != "" {
			fmt.Fprintf(&b, "nbd = %q\n", m.NBD)
		}
		fmt.Fprintf(&b, "peer = %q\nadmin = %q\n", peer, m.Admin)
		if j < len(o.Priorities) && o.Priorities[j] != 0 {
			fmt.Fprintf(&b, "priority = %d\n", o.Priorities[j])
		}
		if j < len(o.CPUMasks) && o.CPUMasks[j] != "" {
			fmt.Fprintf(&b, "cpu-mask = %q\n", o.CPUMasks[j])
		}
		if m.Metrics != "" {
			fmt.Fprintf(&b, "metrics = %q\n", m.Metrics)
		}
	}
	return b.String()
}

// writeSecret gives a cluster of several nodes a shared secret, as repd
// requires, unless the options choose otherwise (Options.Insecure).
func (c *Cluster) writeSecret() error {
	o := c.Opt
	if o.Nodes < 2 || o.Insecure {
		return nil
	}
	for _, key := range []string{"secret-file", "tls-cert", "insecure"} {
		if strings.Contains(o.Extra, key) {
			return nil
		}
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	c.Secret = filepath.Join(c.Dir, o.Resource+".secret")
	if err := os.WriteFile(c.Secret, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		return fmt.Errorf("harness: write the secret: %w", err)
	}
	return nil
}

func fallocate(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return fmt.Errorf("fallocate %s: %w", path, err)
	}
	return nil
}

// Launch makes a cluster in dir and brings it up (Up). The ports are
// picked free but handed to repd later, so another process (an outgoing
// connection's ephemeral port, another test) may take one in between: a
// daemon that then cannot bind is a harness race, not a finding, and the
// cluster is made again on other ports (up to three times).
func Launch(ctx context.Context, bins *Bins, dir string, o Options) (*Cluster, error) {
	for try := 1; ; try++ {
		c, err := New(bins, dir, o)
		if err != nil {
			return nil, err
		}
		err = c.Up(ctx)
		if err == nil {
			return c, nil
		}
		c.Close()
		// A port picked free was taken meanwhile: by another process, or by
		// one of this cluster's proxies (then the resource file names it
		// twice).
		msg := err.Error()
		if try == 3 || !strings.Contains(msg, "address already in use") && !strings.Contains(msg, "duplicate address") {
			return nil, fmt.Errorf("cluster up: %w", err)
		}
		for _, n := range c.Nodes {
			os.Remove(n.Disk)
			os.Remove(n.Meta)
		}
	}
}

// Proxy is the link between nodes i and j (either order); nil without
// proxies.
func (c *Cluster) Proxy(i, j int) *faultnet.Proxy {
	if i > j {
		i, j = j, i
	}
	return c.Proxies[[2]int{i, j}]
}

// Node is the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Close kills every node and stops the proxies. Safe to call again.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Kill()
	}
	for _, p := range c.Proxies {
		p.Close()
	}
}

func (c *Cluster) logf(format string, args ...any) {
	if c.Opt.Logf != nil {
		c.Opt.Logf(format, args...)
	}
}

// Start starts every node that does not run and waits for each.
func (c *Cluster) Start(ctx context.Context) error {
	for _, n := range c.Nodes {
		if n.Running() {
			continue
		}
		if err := n.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Up starts every node and makes node 0 an UpToDate Primary. A lone node is
// promoted with `primary --force` (a fresh resource has no UpToDate data).
// With peers it waits until they are connected, skips the initial sync of
// the empty disks (`new-current-uuid --clear-bitmap`), promotes node 0 and
// waits until every node is in sync.
func (c *Cluster) Up(ctx context.Context) error {
	if err := c.Start(ctx); err != nil {
		return err
	}
	p := c.Nodes[0]
	if len(c.Nodes) == 1 {
		if _, err := p.Ctl(ctx, "primary", "--force"); err != nil {
			return err
		}
		return WaitFor(ctx, p.Name+" Primary and UpToDate", 10*time.Second, func() bool {
			st, err := p.Status(ctx)
			return err == nil && st.Role == api.Primary && st.Disk == "UpToDate"
		})
	}
	if err := c.WaitConnected(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("peers never connected: %w", err)
	}
	// The peers must take the new generation as UpToDate. A peer whose
	// handshake state crosses the new UUID on a slow link can stay
	// Inconsistent; the command is repeated then (and a note says so).
	for try := 1; ; try++ {
		if _, err := p.Ctl(ctx, "new-current-uuid", "--clear-bitmap"); err != nil {
			return err
		}
		// Ask each peer itself: the first node marks them UpToDate at
		// once, before they have heard of the new generation.
		err := waitDisk(ctx, 5*time.Second, "UpToDate", c.dataNodes()[1:])
		if err == nil {
			if try > 1 {
				c.Notes = append(c.Notes, fmt.Sprintf("new-current-uuid --clear-bitmap needed %d tries (a peer stayed Inconsistent)", try))
			}
			break
		}
		if try == 3 || ctx.Err() != nil {
			return fmt.Errorf("peers not UpToDate after new-current-uuid --clear-bitmap (%d tries): %w", try, err)
		}
		c.logf("%s: peers not UpToDate after new-current-uuid --clear-bitmap (%v); again", c.Dir, err)
	}
	if err := c.promoteFirst(ctx); err != nil {
		return err
	}
	if err := p.WaitPeers(ctx, 10*time.Second, InSync); err != nil && waitDisk(ctx, 0, "UpToDate", c.dataNodes()[1:]) == nil {
		// Every peer says it is UpToDate but the primary still sees one as
		// Inconsistent: a stale view of the peer (seen under protocol A
		// over a 30 ms link). A reconnect exchanges the states afresh.
		c.logf("%s: %v, while every peer says UpToDate; reconnecting", c.Dir, err)
		c.Notes = append(c.Notes, "the primary kept seeing a peer Inconsistent that said UpToDate: repctl disconnect + connect")
		for _, n := range c.dataNodes()[1:] {
			if _, err := p.Ctl(ctx, "disconnect", n.Name); err != nil {
				return err
			}
			if _, err := p.Ctl(ctx, "connect", n.Name); err != nil {
				return err
			}
		}
	}
	if err := p.WaitPeers(ctx, 60*time.Second, InSync); err != nil {
		var own []string
		for _, n := range c.Nodes[1:] {
			if st, e := n.Status(ctx); e == nil {
				own = append(own, fmt.Sprintf("%s says: %s %s", n.Name, st.Role, st.Disk))
			}
		}
		return fmt.Errorf("peers never in sync: %w (%s)", err, strings.Join(own, ", "))
	}
	return c.WaitInSync(ctx, 30*time.Second)
}

// promoteFirst makes node 0 Primary with `repctl primary`. With
// auto-promote an election may promote it meanwhile (the command is then
// refused while that promotion runs): it is asked again until node 0 says
// it is Primary.
func (c *Cluster) promoteFirst(ctx context.Context) error {
	p := c.Nodes[0]
	var err error
	for try := 0; try < 50; try++ {
		if _, err = p.Ctl(ctx, "primary"); err == nil {
			return nil
		}
		if st, serr := p.Status(ctx); serr == nil && st.Role == api.Primary {
			return nil
		}
		if !strings.Contains(err.Error(), "in progress") {
			return err
		}
		if serr := ctxtime.Sleep(ctx, 100*time.Millisecond); serr != nil {
			return serr
		}
	}
	return err
}

// dataNodes are the nodes that are not witnesses.
func (c *Cluster) dataNodes() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if !n.Witness {
			out = append(out, n)
		}
	}
	return out
}

// WaitConnected waits until every running node sees every running peer
// Connected.
func (c *Cluster) WaitConnected(ctx context.Context, d time.Duration) error {
	return c.waitRunning(ctx, "all peers Connected", d, func(n *Node, s api.Status) string {
		for _, ps := range c.runningPeers(s) {
			if ps.Connection != api.Connected {
				return fmt.Sprintf("%s→%s %s %s", n.Name, ps.Name, ps.Connection, ps.LastError)
			}
		}
		return ""
	})
}

// WaitInSync waits until every running node is UpToDate and sees every
// running peer Established with nothing out of sync. A witness, which holds
// no data, and a witness peer need only be Connected.
func (c *Cluster) WaitInSync(ctx context.Context, d time.Duration) error {
	return c.waitRunning(ctx, "running nodes in sync", d, func(n *Node, s api.Status) string {
		if s.Disk != "UpToDate" && !n.Witness {
			return n.Name + " disk " + s.Disk
		}
		for _, ps := range c.runningPeers(s) {
			if (n.Witness || ps.Witness) && ps.Connection == api.Connected {
				continue
			}
			if ps.Connection != api.Connected || ps.Replication != api.Established || ps.OutOfSyncKiB != 0 {
				return fmt.Sprintf("%s→%s %s/%s oos %dKiB %s", n.Name, ps.Name, ps.Connection, ps.Replication, ps.OutOfSyncKiB, ps.LastError)
			}
		}
		return ""
	})
}

// waitRunning polls every running node's status until missing returns ""
// for each; otherwise it says what is missing, for the timeout's error.
func (c *Cluster) waitRunning(ctx context.Context, what string, d time.Duration, missing func(n *Node, s api.Status) string) error {
	var last string
	err := WaitFor(ctx, what, d, func() bool {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			s, err := n.Status(ctx)
			if err != nil {
				last = err.Error()
				return false
			}
			if last = missing(n, s); last != "" {
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

// runningPeers are the peers in s whose node runs here.
func (c *Cluster) runningPeers(s api.Status) []api.PeerStatus {
	var out []api.PeerStatus
	for _, ps := range s.Peers {
		if m := c.Node(ps.Name); m != nil && m.Running() {
			out = append(out, ps)
		}
	}
	return out
}

// waitDisk waits until each of nodes reports disk state want in its own
// status; d = 0 asks once.
func waitDisk(ctx context.Context, d time.Duration, want string, nodes []*Node) error {
	deadline := time.Now().Add(d)
	for {
		var bad []string
		for _, n := range nodes {
			st, err := n.Status(ctx)
			switch {
			case err != nil:
				bad = append(bad, n.Name+": "+err.Error())
			case st.Disk != want:
				bad = append(bad, n.Name+" "+st.Disk)
			}
		}
		if len(bad) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("after %s: %s", d, strings.Join(bad, ", "))
		}
		if err := ctxtime.Sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// Shutdown stops every running node with SIGTERM: the Secondaries first,
// then each Primary once its journal is empty (under protocol A a write
// completes before the peer has it; stopping a Primary first would cut its
// last writes off), then the witnesses (so that the Primary keeps its
// quorum to the end). An unclean exit is an error naming the node.
func (c *Cluster) Shutdown(ctx context.Context) error {
	var order, witnesses []*Node
	for _, n := range c.Nodes {
		if n.Witness {
			witnesses = append(witnesses, n)
			continue
		}
		s, err := n.Status(ctx)
		if err == nil && s.Role == api.Primary {
			WaitFor(ctx, "journal drained", 10*time.Second, func() bool {
				s, err := n.Status(ctx)
				return err != nil || s.JournalBytes == 0
			})
			order = append(order, n)
		} else {
			order = append([]*Node{n}, order...)
		}
	}
	order = append(order, witnesses...)
	for _, n := range order {
		if err := n.Stop(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return fmt.Errorf("%s: unclean exit on SIGTERM: %w: %s", n.Name, err, n.LogTail(1500))
			}
			return err
		}
	}
	return nil
}

// ShutdownAndCompare notes which running nodes are UpToDate, shuts the
// cluster down (Shutdown) and requires the backing files of those nodes,
// at least two, to hold the same data.
func (c *Cluster) ShutdownAndCompare(ctx context.Context) error {
	var upToDate []*Node
	for _, n := range c.Nodes {
		if s, err := n.Status(ctx); err == nil && s.Disk == "UpToDate" && n.Running() {
			upToDate = append(upToDate, n)
		}
	}
	if err := c.Shutdown(ctx); err != nil {
		return err
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
			return fmt.Errorf("UpToDate disks differ after resync: %s %.16s, %s %.16s", firstName, first, n.Name, h)
		}
	}
	if len(upToDate) < 2 {
		return fmt.Errorf("only %d UpToDate node(s) to compare", len(upToDate))
	}
	return nil
}

// LogTails is the last k bytes of every node's log, for a failure report.
func (c *Cluster) LogTails(k int) string {
	var b strings.Builder
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "--- log of %s (tail) ---\n%s\n", n.Name, n.LogTail(k))
	}
	return b.String()
}
