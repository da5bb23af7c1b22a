package main

import (
	"bytes"
	"context"
	"encoding/json"

	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Cluster is one repd resource whose nodes all run on this machine, each as
// its own repd process: a bench target, or the subject of a drill, which
// kills, restarts and promotes its nodes.
type Cluster struct {
	env      Env
	rc       RepdConfig
	Data     *RepdData
	ConfPath string
	repd     string
	repctl   string
	Procs    []*Proc // by node index; replaced when a node restarts
	Notes    []string
	stops    []func() // helpers (proxies), stopped after the nodes
	starts   []int    // how often each node was started, for log names
}

// startCluster writes the resource file, starts every node and makes node 0
// an UpToDate Primary: alone with `primary --force`; with peers by waiting
// for them to connect, skipping the initial sync of the empty disks
// (`new-current-uuid --clear-bitmap`) and promoting, then waiting until
// every peer is Established and UpToDate.
func startCluster(ctx context.Context, env Env, rc RepdConfig) (_ *Cluster, err error) {
	repd, err := goBuild(ctx, env, "repd")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errSkip, err)
	}
	repctl, err := goBuild(ctx, env, "repctl")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errSkip, err)
	}
	c := &Cluster{env: env, rc: rc, repd: repd, repctl: repctl}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	d := &RepdData{Resource: "bench", Size: env.Size, Protocol: rc.Protocol, Dir: env.Dir, Extra: rc.Extra}
	for _, name := range rc.Nodes {
		n := RepdNode{
			Name:  name,
			Disk:  filepath.Join(env.Dir, name+".img"),
			Meta:  filepath.Join(env.Dir, name+".meta"),
			Admin: filepath.Join(env.Dir, name+".admin.sock"),
		}
		if err := makeBacking(n.Disk, env.Size, env.Prealloc); err != nil {
			return nil, err
		}
		if n.addr, err = newNBDAddr(env.Transport, env.Dir, name+".nbd"); err != nil {
			return nil, err
		}
		n.NBD = n.addr.Addr
		if n.addr.Network == "unix" {
			n.NBD = "unix:" + n.addr.Addr
		}
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		n.Peer = fmt.Sprintf("127.0.0.1:%d", port)
		d.Nodes = append(d.Nodes, n)
	}
	c.Data = d
	if rc.PreStart != nil {
		stop, err := rc.PreStart(ctx, env, d)
		if err != nil {
			return nil, err
		}
		if stop != nil {
			c.stops = append(c.stops, stop)
		}
	}
	text := rc.Template
	if text == "" {
		text = repdTemplate
	}
	conf, err := renderRepdConfig(text, d)
	if err != nil {
		return nil, err
	}
	c.ConfPath = filepath.Join(env.Dir, "repd.toml")
	if err := os.WriteFile(c.ConfPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	c.Procs = make([]*Proc, len(d.Nodes))
	c.starts = make([]int, len(d.Nodes))
	for i := range d.Nodes {
		if err := c.startProc(i); err != nil {
			return nil, err
		}
	}
	for i := range d.Nodes {
		if err := c.WaitUp(ctx, i); err != nil {
			return nil, err
		}
	}
	c.Notes = append(c.Notes, fmt.Sprintf("nodes %s, protocol %s, fio on %s", strings.Join(rc.Nodes, ","), rc.Protocol, d.Nodes[0].Name))
	if len(d.Nodes) == 1 {
		c.Notes = append(c.Notes, promote(ctx, c, 0))
		return c, nil
	}
	if err := c.WaitPeers(ctx, 0, 60*time.Second, connected); err != nil {
		return nil, fmt.Errorf("peers never connected: %w", err)
	}
	// The peers must take the new generation as UpToDate. A peer whose
	// handshake state crosses the new UUID on a slow link can stay
	// Inconsistent; the command is repeated then (and the note says so).
	for try := 1; ; try++ {
		if out, err := c.Repctl(ctx, 0, "new-current-uuid", "--clear-bitmap"); err != nil {
			return nil, fmt.Errorf("repctl new-current-uuid --clear-bitmap: %v: %s", err, out)
		}
		// Ask each peer itself: the first node marks them UpToDate at once,
		// before they have heard of the new generation.
		err := c.waitOwnDisk(ctx, 5*time.Second, "UpToDate")
		if err == nil {
			if try > 1 {
				c.Notes = append(c.Notes, fmt.Sprintf("new-current-uuid --clear-bitmap needed %d tries (a peer stayed Inconsistent)", try))
			}
			break
		}
		if try == 3 || ctx.Err() != nil {
			return nil, fmt.Errorf("peers not UpToDate after new-current-uuid --clear-bitmap (%d tries): %w", try, err)
		}
		env.Logf("%s: peers not UpToDate after new-current-uuid --clear-bitmap (%v); again", rc.Name, err)
	}
	if out, err := c.Repctl(ctx, 0, "primary"); err != nil {
		return nil, fmt.Errorf("repctl primary: %v: %s", err, out)
	}
	if err := c.WaitPeers(ctx, 0, 10*time.Second, inSync); err != nil && c.waitOwnDisk(ctx, 0, "UpToDate") == nil {
		// Every peer says it is UpToDate but the primary still sees one as
		// Inconsistent: a stale view of the peer (seen under protocol A
		// over the 30 ms link). A reconnect exchanges the states afresh.
		env.Logf("%s: %v, while every peer says UpToDate; reconnecting", rc.Name, err)
		c.Notes = append(c.Notes, "the primary kept seeing a peer Inconsistent that said UpToDate: repctl disconnect + connect")
		for _, n := range d.Nodes[1:] {
			if out, err := c.Repctl(ctx, 0, "disconnect", n.Name); err != nil {
				return nil, fmt.Errorf("repctl disconnect %s: %v: %s", n.Name, err, out)
			}
			if out, err := c.Repctl(ctx, 0, "connect", n.Name); err != nil {
				return nil, fmt.Errorf("repctl connect %s: %v: %s", n.Name, err, out)
			}
		}
	}
	if err := c.WaitPeers(ctx, 0, 60*time.Second, inSync); err != nil {
		var own []string
		for i := 1; i < len(d.Nodes); i++ {
			if st, e := c.Status(ctx, i); e == nil {
				own = append(own, fmt.Sprintf("%s says: %s %s", d.Nodes[i].Name, st.Role, st.Disk))
			}
		}
		return nil, fmt.Errorf("peers never in sync: %w (%s)", err, strings.Join(own, ", "))
	}
	c.Notes = append(c.Notes, "new-current-uuid --clear-bitmap, primary; peers Established/UpToDate")
	return c, nil
}

// startProc starts node i's repd; its log is repd-NAME.log, then
// repd-NAME-2.log after a restart.
func (c *Cluster) startProc(i int) error {
	n := c.Data.Nodes[i]
	c.starts[i]++
	log := "repd-" + n.Name + ".log"
	if c.starts[i] > 1 {
		log = fmt.Sprintf("repd-%s-%d.log", n.Name, c.starts[i])
	}
	p, err := StartProc("repd "+n.Name, filepath.Join(c.env.Dir, log), c.repd, "--config", c.ConfPath, "--node", n.Name)
	if err != nil {
		return err
	}
	c.Procs[i] = p
	return nil
}

// RestartNode starts node i again (after StopNode or KillNode) and waits
// for its listeners.
func (c *Cluster) RestartNode(ctx context.Context, i int) error {
	if p := c.Procs[i]; p != nil {
		if exited, _ := p.Exited(); !exited {
			return fmt.Errorf("node %s is still running", c.Data.Nodes[i].Name)
		}
	}
	if err := c.startProc(i); err != nil {
		return err
	}
	return c.WaitUp(ctx, i)
}

// WaitUp waits until node i's NBD and admin sockets accept connections.
func (c *Cluster) WaitUp(ctx context.Context, i int) error {
	n := c.Data.Nodes[i]
	if err := waitListen(ctx, c.Procs[i], n.addr.Network, n.addr.Addr, 30*time.Second); err != nil {
		return err
	}
	return waitListen(ctx, c.Procs[i], "unix", n.Admin, 10*time.Second)
}

// KillNode sends SIGKILL to node i and waits until it is gone.
func (c *Cluster) KillNode(i int) {
	p := c.Procs[i]
	_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
	<-p.done
}

// StopNode stops node i cleanly (SIGTERM).
func (c *Cluster) StopNode(i int) { c.Procs[i].Stop() }

// Stop stops every node, then the helpers.
func (c *Cluster) Stop() {
	for _, p := range c.Procs {
		if p != nil {
			p.Stop()
		}
	}
	for i := len(c.stops) - 1; i >= 0; i-- {
		c.stops[i]()
	}
	c.stops = nil
}

// NBD is node i's NBD address.
func (c *Cluster) NBD(i int) nbdAddr { return c.Data.Nodes[i].addr }

// Endpoint is the cluster as a bench target: fio drives node 0.
func (c *Cluster) Endpoint() *Endpoint {
	uri := c.NBD(0).URI(c.Data.Resource)
	return &Endpoint{
		FioArgs: nbdFioArgs(uri),
		URI:     uri,
		Procs:   append([]*Proc(nil), c.Procs...),
		Notes:   c.Notes,
		Stop:    c.Stop,
	}
}

// Repctl runs repctl against node i's admin socket.
func (c *Cluster) Repctl(ctx context.Context, i int, args ...string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.Command(c.repctl, append([]string{"--admin", c.Data.Nodes[i].Admin}, args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := runGroup(rctx, cmd)
	return strings.TrimSpace(out.String()), err
}

// nodeStatus is the part of the admin API's status object the bench reads
// (repctl status --json).
type nodeStatus struct {
	Role         string       `json:"role"`
	Disk         string       `json:"disk"`
	JournalBytes int64        `json:"journal_bytes"`
	JournalMax   int64        `json:"journal_max"`
	Writes       int64        `json:"writes"`
	Peers        []peerStatus `json:"peers"`
}

type peerStatus struct {
	Name          string `json:"name"`
	Connection    string `json:"connection"`
	Replication   string `json:"replication"`
	Role          string `json:"role"`
	Disk          string `json:"disk"`
	OutOfSyncKiB  int64  `json:"out_of_sync_kib"`
	BytesSent     int64  `json:"bytes_sent"`
	BytesReceived int64  `json:"bytes_received"`
	Resyncs       int64  `json:"resyncs"`
	ResyncedBytes int64  `json:"resynced_bytes"`
	// Counters is every other numeric field of the peer whose name speaks
	// of logical or wire bytes, compression or dedup (newer daemons).
	Counters map[string]float64 `json:"-"`
}

// parseStatus decodes a status object.
func parseStatus(b []byte) (nodeStatus, error) {
	var st nodeStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("status json: %w", err)
	}
	var raw struct {
		Peers []map[string]any `json:"peers"`
	}
	if json.Unmarshal(b, &raw) == nil && len(raw.Peers) == len(st.Peers) {
		for i, m := range raw.Peers {
			for k, v := range m {
				f, ok := v.(float64)
				if !ok {
					continue
				}
				for _, w := range []string{"logical", "wire", "dedup", "compress"} {
					if strings.Contains(k, w) {
						if st.Peers[i].Counters == nil {
							st.Peers[i].Counters = map[string]float64{}
						}
						st.Peers[i].Counters[k] = f
					}
				}
			}
		}
	}
	return st, nil
}

// Status asks node i's admin socket for its status (GET /v1/status; what
// repctl status --json prints), quickly enough to poll every few ms.
func (c *Cluster) Status(ctx context.Context, i int) (nodeStatus, error) {
	sock := c.Data.Nodes[i].Admin
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	defer tr.CloseIdleConnections()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, "http://repd/v1/status", nil)
	if err != nil {
		return nodeStatus{}, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nodeStatus{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nodeStatus{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return nodeStatus{}, fmt.Errorf("status: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return parseStatus(b)
}

// waitOwnDisk waits until every node but the first reports disk state
// want in its own status.
func (c *Cluster) waitOwnDisk(ctx context.Context, timeout time.Duration, want string) error {
	deadline := time.Now().Add(timeout)
	for {
		var bad []string
		for i := 1; i < len(c.Data.Nodes); i++ {
			st, err := c.Status(ctx, i)
			switch {
			case err != nil:
				bad = append(bad, c.Data.Nodes[i].Name+": "+err.Error())
			case st.Disk != want:
				bad = append(bad, c.Data.Nodes[i].Name+" "+st.Disk)
			}
		}
		if len(bad) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s", timeout, strings.Join(bad, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Peer conditions for WaitPeers.
func connected(p peerStatus) bool { return p.Connection == "Connected" }

func inSync(p peerStatus) bool {
	return p.Connection == "Connected" && p.Replication == "Established" && p.Disk == "UpToDate" && p.OutOfSyncKiB == 0
}

// WaitPeers polls node i's status until every peer satisfies ok.
func (c *Cluster) WaitPeers(ctx context.Context, i int, timeout time.Duration, ok func(peerStatus) bool) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		st, err := c.Status(ctx, i)
		if err == nil {
			all := len(st.Peers) > 0
			var parts []string
			for _, p := range st.Peers {
				all = all && ok(p)
				parts = append(parts, fmt.Sprintf("%s %s/%s/%s oos=%dKiB", p.Name, p.Connection, p.Replication, p.Disk, p.OutOfSyncKiB))
			}
			if all {
				return nil
			}
			last = strings.Join(parts, ", ")
		} else {
			last = err.Error()
		}
		if p := c.Procs[i]; p != nil {
			if exited, perr := p.Exited(); exited {
				return fmt.Errorf("%s exited (%v)%s", p.Name, perr, p.LogTail())
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// promote makes a lone node Primary with `repctl primary --force` (a fresh
// resource has no UpToDate data yet). It returns a note for the report;
// failure is not fatal here: the write probe reports it.
func promote(ctx context.Context, c *Cluster, i int) string {
	out, err := c.Repctl(ctx, i, "primary", "--force")
	switch {
	case err == nil:
		return "promoted: repctl primary --force"
	case strings.Contains(strings.ToLower(out), "already"):
		return "already Primary: " + out
	}
	return fmt.Sprintf("promote failed (repctl primary --force: %v): %s", err, out)
}
