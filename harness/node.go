package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/ctxtime"
	"github.com/repd/repd/nbd/nbdtest"
)

// Node is one node of a cluster: its files and addresses, and its repd
// process while one runs.
type Node struct {
	c       *Cluster
	I       int // index in Cluster.Nodes, and node id
	Name    string
	Host    string // its loopback address
	Witness bool   // disk = "none": votes, stores nothing, no NBD
	NBD     string // as in the resource file: host:port or unix:PATH; "" on a witness
	Peer    string // replication address, host:port
	Admin   string // admin socket
	Metrics string // host:port of /metrics and /health; "" without
	Disk    string
	Meta    string
	Conf    string // the resource file it runs with
	LogPath string // its stdout and stderr, over every start
	admin   *admin.Client

	mu   sync.Mutex
	proc *process // the last process started; nil after Stop or Kill
}

// process is one run of repd.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid once done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (n *Node) current() *process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// Command is `repd --config CONF --node NAME` with Options.Args, not
// started.
func (n *Node) Command() *exec.Cmd {
	cmd := exec.Command(n.c.Bins.Repd, append([]string{"--config", n.Conf, "--node", n.Name}, n.c.Opt.Args...)...)
	cmd.Env = QuickExitEnv()
	return cmd
}

// Spawn starts repd without waiting for it. A node whose last process
// exited by itself may be spawned again.
func (n *Node) Spawn() error { return n.SpawnCommand(n.Command()) }

// SpawnCommand starts cmd as the node's process: Command, or a wrapper
// that runs it (in another namespace, say). Its output goes to the node's
// log; it runs in its own process group (Stop and Kill signal the group)
// with a parent-death signal.
func (n *Node) SpawnCommand(cmd *exec.Cmd) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.proc; p != nil && !p.exited() {
		return fmt.Errorf("repd %s runs already (pid %d)", n.Name, p.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start repd %s: %w", n.Name, err)
	}
	defer logf.Close() // the child has its own copy
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a Ctrl-C on a terminal reaches the
	// caller alone, which stops the nodes in order; and a parent-death
	// signal, so that no repd outlives a caller that was killed.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pgid = true, 0
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start repd %s: %w", n.Name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	n.proc = p
	return nil
}

// Start starts repd and waits until its admin API answers (it listens on
// its NBD address before that).
func (n *Node) Start(ctx context.Context) error { return n.StartCommand(ctx, n.Command()) }

// StartCommand is SpawnCommand, then waits as Start does.
func (n *Node) StartCommand(ctx context.Context, cmd *exec.Cmd) error {
	if err := n.SpawnCommand(cmd); err != nil {
		return err
	}
	const limit = 30 * time.Second
	deadline := time.Now().Add(limit)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := n.admin.Status(sctx)
		cancel()
		if err == nil {
			return nil
		}
		if exited, exitErr := n.Exited(0); exited {
			return fmt.Errorf("repd %s exited at start (%v): %s", n.Name, exitErr, n.LogTail(2000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("repd %s did not answer on %s within %s (%v): %s", n.Name, n.Admin, limit, err, n.LogTail(2000))
		}
		if err := ctxtime.Sleep(ctx, 30*time.Millisecond); err != nil {
			return err
		}
	}
}

// Running reports whether a repd started here runs.
func (n *Node) Running() bool {
	p := n.current()
	return p != nil && !p.exited()
}

// Exited waits up to d for repd to exit and returns its exit error; d <= 0
// only looks. A node without a process counts as exited.
func (n *Node) Exited(d time.Duration) (bool, error) {
	p := n.current()
	if p == nil {
		return true, nil
	}
	if p.exited() {
		return true, p.err
	}
	if d <= 0 {
		return false, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true, p.err
	case <-t.C:
		return false, nil
	}
}

// Pid is repd's process id, 0 when it does not run.
func (n *Node) Pid() int {
	p := n.current()
	if p == nil || p.exited() {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to repd and waits until it exited (SIGKILL after
// Options.StopTimeout), and returns its exit error: nil for a clean exit.
// Without a process it returns nil.
func (n *Node) Signal(sig syscall.Signal) error {
	p := n.current()
	if p == nil {
		return nil
	}
	defer func() {
		n.mu.Lock()
		if n.proc == p {
			n.proc = nil
		}
		n.mu.Unlock()
	}()
	if p.exited() {
		return p.err
	}
	pid := p.cmd.Process.Pid
	syscall.Kill(-pid, sig)
	t := time.NewTimer(n.c.Opt.StopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-t.C:
		syscall.Kill(-pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("repd %s did not exit within %s of %v: killed", n.Name, n.c.Opt.StopTimeout, sig)
	}
}

// Stop sends SIGTERM and waits; an unclean exit is an *exec.ExitError.
func (n *Node) Stop() error { return n.Signal(syscall.SIGTERM) }

// Kill sends SIGKILL and waits until repd is gone.
func (n *Node) Kill() {
	n.Signal(syscall.SIGKILL)
}

// LogTail is the last k bytes of the node's log.
func (n *Node) LogTail(k int) string {
	b, _ := os.ReadFile(n.LogPath)
	if len(b) > k {
		b = b[len(b)-k:]
	}
	return string(b)
}

// Status asks repd over its admin socket (what `repctl status --json`
// prints).
func (n *Node) Status(ctx context.Context) (api.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := n.admin.Status(ctx)
	if err != nil {
		return st, fmt.Errorf("status of %s: %w", n.Name, err)
	}
	return st, nil
}

// CtlCmd is `repctl --admin SOCKET args...` against the node, not started.
func (n *Node) CtlCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(n.c.Bins.Repctl, append([]string{"--admin", n.Admin}, args...)...)
	cmd.Env = QuickExitEnv()
	return cmd
}

// Ctl runs repctl against the node (for at most a minute) and returns its
// output, stdout and stderr; a failure wraps the *exec.ExitError (the exit
// code says what kind).
func (n *Node) Ctl(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.c.Bins.Repctl, append([]string{"--admin", n.Admin}, args...)...)
	cmd.Env = QuickExitEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("repctl %s on %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// NBDAddr is where to dial the node's NBD export: ("tcp", host:port) or
// ("unix", path).
func (n *Node) NBDAddr() (network, addr string) {
	if p, ok := strings.CutPrefix(n.NBD, "unix:"); ok {
		return "unix", p
	}
	return "tcp", n.NBD
}

// URI is the node's NBD URI for libnbd tools, qemu and fio.
func (n *Node) URI() string {
	export := url.PathEscape(n.c.Opt.Resource)
	if network, addr := n.NBDAddr(); network == "unix" {
		return "nbd+unix:///" + export + "?socket=" + addr
	}
	return "nbd://" + n.NBD + "/" + export
}

// DialNBD connects to the node's export with the test client.
func (n *Node) DialNBD() (*nbdtest.Client, error) {
	network, addr := n.NBDAddr()
	cl, err := nbdtest.Dial(network, addr, n.c.Opt.Resource)
	if err != nil {
		return nil, fmt.Errorf("nbd %s of %s: %w", n.NBD, n.Name, err)
	}
	return cl, nil
}

// ReadDevice reads the whole device through the node's NBD export.
func (n *Node) ReadDevice() ([]byte, error) {
	cl, err := n.DialNBD()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	img := make([]byte, n.c.Opt.Size)
	const chunk = 1 << 20
	for off := int64(0); off < int64(len(img)); off += chunk {
		end := min(off+chunk, int64(len(img)))
		if err := cl.Read(img[off:end], off); err != nil {
			return nil, fmt.Errorf("read %s at %d: %w", n.Name, off, err)
		}
	}
	return img, nil
}

// HashDisk hashes the device's bytes in the node's backing file (stop the
// node first: repd writes through the page cache, so a running node's file
// is current, but not settled).
func (n *Node) HashDisk() (string, error) { return HashFile(n.Disk, n.c.Opt.Size) }

// HashFile is the BLAKE3 (hex) of the first size bytes of path; a shorter
// file is an error.
func HashFile(path string, size int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := blake3.New()
	k, err := io.Copy(h, io.LimitReader(f, size))
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	if k < size {
		return "", fmt.Errorf("hash %s: %d bytes, want %d", path, k, size)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// Scrape reads the node's /metrics: every sample by its name as written
// (labels included: `nbd_requests_total{cmd="read"}`).
func (n *Node) Scrape(ctx context.Context) (map[string]float64, error) {
	if n.Metrics == "" {
		return nil, fmt.Errorf("%s has no metrics listener (Options.Metrics)", n.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Metrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", n.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics of %s: %s", n.Name, resp.Status)
	}
	m, err := ParseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", n.Name, err)
	}
	return m, nil
}

// ParseMetrics reads Prometheus' text format: each sample by its name and
// labels as written; comments and malformed lines are skipped.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[strings.TrimSpace(line[:i])] = v
	}
	return m, sc.Err()
}
