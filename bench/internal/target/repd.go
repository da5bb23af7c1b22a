package target

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/proc"
	"github.com/repd/repd/faultnet"
	"github.com/repd/repd/harness"
)

// RepdConfig describes a repd target: one resource whose nodes all run on
// this machine, each as its own repd process (a harness.Cluster). Nodes[0]
// is the node fio drives; it is promoted to Primary after start.
//
// Replicated variants (two or three nodes, protocol A or C, a shaped link
// between them) are further RepdConfigs in All: list more Nodes, and set
// Link for a faultnet proxy on every peer link.
type RepdConfig struct {
	Name     string
	Desc     string
	Nodes    []string
	Protocol string            // "A" or "C"
	Extra    map[string]string // more [resource] keys, values as TOML
	// Insecure runs the peer links without a shared secret (no frame
	// MACs): what authentication costs shows next to the default, which
	// has one (harness.Options.Insecure).
	Insecure bool
	// Link shapes every peer link (a proxy per link, seeded with Seed, so
	// that the jitter repeats run to run); nil is plain loopback.
	Link *link.Profile
	Seed int64
	// Proxies puts an unshaped proxy on every peer link (when Link is
	// nil), for a drill that partitions links.
	Proxies bool
	// Witnesses are the indices of the nodes that are witnesses (disk =
	// "none": they vote and store nothing).
	Witnesses []int
	// Timeout is the resource's timeout; 0 leaves repd's default.
	Timeout time.Duration
	// CPUMasks[i] is node i's cpu-mask (harness.Options.CPUMasks).
	CPUMasks []string
}

// Cluster is a started repd target: the nodes, and what starting them
// took (for the report).
type Cluster struct {
	*harness.Cluster
	Notes []string
}

func repdTarget(rc RepdConfig) Target {
	return Target{
		Name: rc.Name,
		Desc: rc.Desc,
		Start: func(ctx context.Context, env Env) (*Endpoint, error) {
			c, err := StartCluster(ctx, env, rc)
			if err != nil {
				return nil, err
			}
			return c.Endpoint(), nil
		},
	}
}

// Options are the harness options of rc in env: the resource "bench",
// NBD over env's transport, and rc's link on every peer link.
func (rc RepdConfig) Options(env Env) harness.Options {
	var extra strings.Builder
	for _, k := range slices.Sorted(maps.Keys(rc.Extra)) {
		fmt.Fprintf(&extra, "%s = %s\n", k, rc.Extra[k])
	}
	o := harness.Options{
		Names: rc.Nodes, Resource: "bench", Size: env.Size, Protocol: rc.Protocol, Extra: extra.String(), Insecure: rc.Insecure,
		NBDUnix: env.Transport == "unix", Prealloc: env.Prealloc, StopTimeout: 5 * time.Second, Logf: env.Logf,
		Proxies: rc.Proxies, Seed: rc.Seed, Witnesses: rc.Witnesses, Timeout: rc.Timeout, CPUMasks: rc.CPUMasks,
	}
	if l := rc.Link; l != nil {
		o.Proxies, o.Seed = true, rc.Seed
		o.ProxySetup = func(i, j int, p *faultnet.Proxy) {
			p.MaxInFlight = l.Window()
			p.SetLink(l.Link(), l.Link())
			env.Logf("link %s: %s -> %s (seed %d)", l.Name, p.Addr(), p.Target(), p.Seed())
		}
	}
	return o
}

// StartCluster starts rc's nodes in env.Dir and makes node 0 an UpToDate
// Primary: alone with `primary --force`; with peers by waiting for them to
// connect, skipping the initial sync of the empty disks
// (`new-current-uuid --clear-bitmap`) and promoting, then waiting until
// every peer is Established and UpToDate (harness.Cluster.Up).
func StartCluster(ctx context.Context, env Env, rc RepdConfig) (*Cluster, error) {
	bins, err := harness.Binaries()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSkip, err)
	}
	o := rc.Options(env)
	c := &Cluster{Notes: []string{fmt.Sprintf("nodes %s, protocol %s, fio on %s", strings.Join(rc.Nodes, ","), rc.Protocol, rc.Nodes[0])}}
	if len(rc.Nodes) > 1 {
		if c.Cluster, err = harness.Launch(ctx, bins, env.Dir, o); err != nil {
			return nil, err
		}
		c.Notes = append(c.Notes, c.Cluster.Notes...)
		c.Notes = append(c.Notes, "new-current-uuid --clear-bitmap, primary; peers Established/UpToDate")
		return c, nil
	}
	if c.Cluster, err = harness.New(bins, env.Dir, o); err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		c.Close()
		return nil, err
	}
	c.Notes = append(c.Notes, promote(ctx, c.Nodes[0]))
	return c, nil
}

// promote makes a lone node Primary with `repctl primary --force` (a fresh
// resource has no UpToDate data yet). It returns a note for the report;
// failure is not fatal here: the write probe reports it.
func promote(ctx context.Context, n *harness.Node) string {
	out, err := n.Ctl(ctx, "primary", "--force")
	out = strings.TrimSpace(out)
	switch {
	case err == nil:
		return "promoted: repctl primary --force"
	case strings.Contains(strings.ToLower(out), "already"):
		return "already Primary: " + out
	}
	return fmt.Sprintf("promote failed (repctl primary --force: %v): %s", err, out)
}

// Stop stops every node (SIGTERM, SIGKILL after 5 s), then the proxies.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Stop()
	}
	c.Close()
}

// Endpoint is the cluster as a bench target: fio drives node 0.
func (c *Cluster) Endpoint() *Endpoint {
	uri := c.Nodes[0].URI()
	ep := &Endpoint{FioArgs: FioArgs(uri), URI: uri, Notes: c.Notes, Stop: c.Stop}
	for _, n := range c.Nodes {
		ep.Servers = append(ep.Servers, node{n})
	}
	return ep
}

// node is a repd process as a Server.
type node struct{ n *harness.Node }

func (s node) PID() int { return s.n.Pid() }

func (s node) Gone() error {
	if exited, err := s.n.Exited(0); exited {
		return fmt.Errorf("repd %s exited (%v)%s", s.n.Name, err, proc.Tail(s.n.LogTail(4096)))
	}
	return nil
}
