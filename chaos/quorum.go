package chaos

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
	"github.com/repd/repd/harness"
)

// Quorum scenarios (issue 18): two data nodes and a witness, or three data
// nodes, with quorum and auto-promote = true. The workload is a Follower:
// it writes to whichever node is Primary now and follows a failover to the
// successor. On top of the data checks of every scenario (nothing
// acknowledged under protocol C lost, on every new Primary at its first
// write and on the last one after healing; under protocol A the prefix
// rule across each failover), a quorum scenario requires that at no
// instant two nodes acknowledge writes (CheckExclusive), that no node
// reports split brain (status and events), that no node becomes Primary
// with a disk that is not UpToDate, and that after healing every data node
// is in sync with equal contents.

// quorumSize is the quorum scenarios' device: 16 MiB, of which the
// follower writes the first half; small, so that reading it to check it
// at every failover stays quick.
const quorumSize = 16 << 20

// quorumNEIO is the NBD error value of EIO.
const quorumNEIO = 5

// qrun is a quorum scenario in progress.
type qrun struct {
	e          *Env
	f          *Follower
	cancel     context.CancelFunc
	done       chan error
	watch      *Watch
	blackholed map[[2]int]bool
}

// dataNodes are the cluster's nodes that hold data.
func (e *Env) dataNodes() []*harness.Node {
	var out []*harness.Node
	for _, n := range e.C.Nodes {
		if !n.Witness {
			out = append(out, n)
		}
	}
	return out
}

// follow starts the event watch and a Follower on the data nodes.
func (e *Env) follow() *qrun {
	q := &qrun{e: e, done: make(chan error, 1), blackholed: map[[2]int]bool{}}
	q.watch = WatchEvents(e.Ctx, e.H, e.C.Nodes, func(ev NodeEvent) {
		switch {
		case ev.Kind == "role", ev.Kind == "split-brain", ev.Kind == "election" && ev.New != "failed":
			e.Act(false, "event %s: %s %s→%s %s", ev.Node, ev.Kind, ev.Old, ev.New, ev.Message)
		}
	})
	ctx, cancel := context.WithCancel(e.Ctx)
	q.cancel = cancel
	q.f = &Follower{
		Nodes: e.dataNodes(), Export: e.C.Opt.Resource, Conns: 3, Depth: 3,
		Blocks: min(e.C.Opt.Size/BlockSize/2, 4096), MaxBlocks: 8, FlushEvery: 16,
		Seed: e.Rng.Uint64(), H: e.H, Stuck: e.C.Opt.Timeout, OnSwitch: q.onSwitch,
		Logf: func(format string, args ...any) { e.Act(false, format, args...) },
	}
	e.Act(false, "follower workload on the data nodes")
	go func() { q.done <- q.f.Run(ctx) }()
	return q
}

// onSwitch checks the new Primary's device before the first write to it:
// under protocol C every write acknowledged so far must be there; under A
// the device must be a prefix of the history, which becomes the new base.
func (q *qrun) onSwitch(from, to *harness.Node) error {
	e := q.e
	if from == nil {
		return nil
	}
	mode := AllAcked
	if e.proto() == "A" {
		mode = Prefix
	}
	// The part the follower writes: a check of the whole device waits for
	// nothing more, and the writers wait for it.
	img, err := e.checkFirst(to, mode, q.f.Blocks*BlockSize)
	if err != nil {
		e.Find("could not read the new Primary %s to check it: %v", to.Name, err)
		return err
	}
	if mode == Prefix {
		e.H.Rebase(img)
		e.Act(false, "rebase history on %s", to.Name)
	}
	return nil
}

// isolate partitions node i from every other node at the proxies (the TCP
// connections stay open, nothing flows).
func (q *qrun) isolate(i int) {
	for j := range q.e.C.Nodes {
		if j != i {
			q.e.C.Proxy(i, j).Partition(true)
		}
	}
}

// heal ends every link fault; a link that was blackholed (its held frames
// would arrive an hour late) has its connections reset.
func (q *qrun) heal() {
	for k, px := range q.e.C.Proxies {
		px.SetLink(faultnet.Link{}, faultnet.Link{})
		px.Partition(false)
		px.Stall(false)
		if q.blackholed[k] {
			px.CutAll()
			delete(q.blackholed, k)
		}
	}
}

// blackhole holds the frames of one direction of link i–j: from i to j
// when fromI, else from j to i.
func (q *qrun) blackhole(i, j int, fromI bool) {
	if i > j {
		i, j, fromI = j, i, !fromI
	}
	px := q.e.C.Proxy(i, j)
	if fromI { // up is the dialer's (lower id's) direction
		px.SetLink(blackhole, faultnet.Link{})
	} else {
		px.SetLink(faultnet.Link{}, blackhole)
	}
	q.blackholed[[2]int{i, j}] = true
}

// acked counts the writes n acknowledged after tick since.
func (h *History) acked(node string, since uint64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := 0
	for _, r := range h.recs {
		if r.Node == node && r.Acked > since {
			k++
		}
	}
	return k
}

// waitAck waits up to d for a write acknowledged by a node other than not
// (any node when not is nil) after tick since, and returns that node.
func (q *qrun) waitAck(not *harness.Node, since uint64, d time.Duration) *harness.Node {
	var got *harness.Node
	harness.WaitFor(q.e.Ctx, "a write acknowledged", d, func() bool {
		for _, n := range q.e.dataNodes() {
			if n != not && q.e.H.acked(n.Name, since) > 0 {
				got = n
				return true
			}
		}
		return false
	})
	return got
}

// failoverBound is how long the election of a successor may take after
// the Primary was lost: the voters' promise (9/8 of the timeout), a check
// every quarter timeout, an election round, with room for a loaded
// machine.
func (e *Env) failoverBound() time.Duration { return 5*e.C.Opt.Timeout + 5*time.Second }

// expectSuccessor waits for a node other than old to be Primary with its
// lease, then for it to acknowledge the follower's writes (after the
// follower checked its device), and records how long each took from t0.
func (q *qrun) expectSuccessor(old *harness.Node, since uint64, t0 time.Time) *harness.Node {
	e := q.e
	var s *harness.Node
	err := harness.WaitFor(e.Ctx, "a successor", e.failoverBound(), func() bool {
		for _, n := range e.dataNodes() {
			if n == old {
				continue
			}
			if st, err := n.Status(e.Ctx); err == nil && st.Role == api.Primary && st.Lease == "held" {
				s = n
				return true
			}
		}
		return false
	})
	if err != nil {
		e.Violate("no other node was Primary with its lease within %v of losing Primary %s", e.failoverBound(), old.Name)
		return nil
	}
	e.Act(false, "%s Primary with its lease %v after %s was lost", s.Name, time.Since(t0).Round(time.Millisecond), old.Name)
	if n := q.waitAck(old, since, time.Minute); n == nil {
		e.Violate("the follower had no write acknowledged by %s within a minute of its election", s.Name)
	} else {
		e.Act(false, "%s acknowledges writes %v after %s was lost", n.Name, time.Since(t0).Round(time.Millisecond), old.Name)
	}
	return s
}

// watchOld samples node n's status every 100 ms until stop is closed and
// reports the most I/O it had suspended and whether it ever held its lease
// again (as Primary).
func (q *qrun) watchOld(n *harness.Node, stop chan struct{}) (result func() (suspended int, roles []string)) {
	done := make(chan struct{})
	var maxSusp int
	var seen []string
	go func() {
		defer close(done)
		for {
			if st, err := n.Status(q.e.Ctx); err == nil {
				maxSusp = max(maxSusp, st.SuspendedIO)
				r := st.Role.String() + "/" + st.Lease
				if len(seen) == 0 || seen[len(seen)-1] != r {
					seen = append(seen, r)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() (int, []string) { <-done; return maxSusp, seen }
}

// finish heals every link, starts every node, lets the follower write on
// the healed cluster, stops it and checks: suspended writes ended, a
// Primary serves, the data nodes come in sync, the Primary's device holds
// every acknowledged write, no two nodes acknowledged at once, no split
// brain, and the disks hash equal after a clean shutdown.
func (q *qrun) finish() error {
	e := q.e
	q.heal()
	e.Act(false, "heal every link")
	for _, n := range e.C.Nodes {
		if !n.Running() {
			if err := n.Start(e.Ctx); err != nil {
				return err
			}
			e.Act(false, "start %s", n.Name)
		}
	}
	t0 := time.Now()
	since := e.H.tick()
	if n := q.waitAck(nil, since, e.failoverBound()); n == nil {
		e.Violate("no write acknowledged within %v after healing", e.failoverBound())
	} else {
		e.Act(false, "after healing %s acknowledges writes (%v)", n.Name, time.Since(t0).Round(time.Millisecond))
	}
	e.Sleep(300*time.Millisecond, time.Second)
	q.cancel()
	<-q.done
	grace := 5*e.C.Opt.Timeout + 5*time.Second
	if left := q.f.Close(grace); left > 0 {
		e.Violate("%d requests still had no reply %v after the links healed (suspended I/O must complete or fail once quorum is back)", left, grace)
	}
	e.Act(false, "follower stopped; errors by node and NBD error: %v", q.f.Errors())
	for _, err := range q.f.SwitchErrors() {
		e.Find("checking a new Primary: %v", err)
	}
	if err := e.C.WaitInSync(e.Ctx, 60*time.Second); err != nil {
		q.watch.Stop()
		return err
	}
	e.Act(false, "in sync")
	var prim []*harness.Node
	for _, n := range e.dataNodes() {
		st, err := n.Status(e.Ctx)
		if err != nil {
			q.watch.Stop()
			return err
		}
		if st.Role == api.Primary {
			prim = append(prim, n)
		}
	}
	for _, n := range e.C.Nodes {
		st, err := n.Status(e.Ctx)
		if err != nil {
			continue
		}
		for _, ps := range st.Peers {
			if ps.SplitBrain {
				e.Violate("%s reports split brain with %s: %s", n.Name, ps.Name, ps.LastError)
			}
		}
	}
	if len(prim) != 1 {
		e.Violate("after healing and resync %d Primaries: %v", len(prim), names(prim))
	} else if _, err := e.Check(prim[0], AllAcked); err != nil {
		q.watch.Stop()
		return err
	}
	x := CheckExclusive(e.H)
	for _, h := range x.Handovers {
		e.Act(false, "handover %s→%s: last ack at %d, first at %d, %v without acknowledgements", h.From, h.To, h.LastAck, h.FirstAck, h.Gap.Round(time.Millisecond))
	}
	e.Act(false, "acknowledged writes by node: %v", x.Acks)
	for _, v := range x.Violations {
		e.Violate("%s", v)
	}
	if x.NViolations > len(x.Violations) {
		e.Violate("... %d interleaved acknowledgements in all", x.NViolations)
	}
	q.watch.Stop()
	for _, v := range CheckEvents(q.watch.Events()) {
		e.Violate("%s", v)
	}
	if err := e.C.ShutdownAndCompare(e.Ctx); err != nil {
		e.Violate("%v", err)
		return nil
	}
	e.Act(false, "stopped; UpToDate disks hash equal")
	return nil
}

func names(ns []*harness.Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Name)
	}
	return out
}

// roleOf is n's role now ("" if it does not answer).
func (e *Env) roleOf(n *harness.Node) string {
	st, err := n.Status(e.Ctx)
	if err != nil {
		return ""
	}
	return st.Role.String()
}

// quorumIsolatePrimary (a): the Primary is cut off from every peer by a
// partition at the proxies; the others elect a successor, the old Primary
// stops acknowledging (suspends, or fails with EIO), and after healing it
// steps down and resyncs.
func quorumIsolatePrimary(e *Env) error {
	q := e.follow()
	p := e.C.Nodes[0]
	e.Sleep(500*time.Millisecond, 1500*time.Millisecond)
	e.Act(true, "isolate %s (Primary) from every peer at the proxies", p.Name)
	since := e.H.tick()
	t0 := time.Now()
	stop := make(chan struct{})
	old := q.watchOld(p, stop)
	q.isolate(0)
	s := q.expectSuccessor(p, since, t0)
	e.Sleep(time.Second, 2500*time.Millisecond)
	close(stop)
	susp, seen := old()
	errs := q.f.Errors()[p.Name]
	e.Act(false, "%s while cut off: role/lease %v, at most %d requests suspended, error replies %v", p.Name, seen, susp, errs)
	switch e.Res.OnNoQuorum {
	case "suspend-io":
		if susp == 0 {
			e.Violate("%s lost quorum with on-no-quorum suspend-io but never reported suspended I/O", p.Name)
		}
	case "io-error":
		if errs[quorumNEIO] == 0 {
			e.Violate("%s lost quorum with on-no-quorum io-error but failed no write with EIO", p.Name)
		}
	}
	if err := q.finish(); err != nil {
		return err
	}
	if s != nil {
		// finish stopped the nodes; their last roles are in the events.
		if r := lastRole(q.watch.Events(), p.Name); r != api.Secondary.String() {
			e.Violate("%s, replaced while cut off, ended as %q, not Secondary", p.Name, r)
		}
	}
	return nil
}

// lastRole is a node's last role in the events before the shutdown.
func lastRole(evs []NodeEvent, node string) string {
	r := ""
	for _, ev := range evs {
		if ev.Node != node {
			continue
		}
		if ev.Kind == "role" || ev.Kind == "exists" && ev.Message == "role" {
			r = ev.New
		}
	}
	return r
}

// quorumOneWay (b): the frames of one direction between the Primary and a
// Secondary are held (dropped, as far as either can tell) while the other
// direction flows.
func quorumOneWay(e *Env) error {
	q := e.follow()
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	e.Sleep(500*time.Millisecond, 1500*time.Millisecond)
	out := e.Rng.IntN(2) == 0
	if out {
		e.Act(true, "drop every frame %s→%s (%s→%s flows)", p.Name, s.Name, s.Name, p.Name)
	} else {
		e.Act(true, "drop every frame %s→%s (%s→%s flows)", s.Name, p.Name, p.Name, s.Name)
	}
	q.blackhole(0, 1, out)
	e.Sleep(2*e.C.Opt.Timeout+time.Second, 4*e.C.Opt.Timeout+time.Second)
	return q.finish()
}

// steady checks that p acknowledged writes all along a fault that leaves it
// its quorum: no failover, no failed write, no request slower than the
// timeout plus a margin.
func (q *qrun) steady(p *harness.Node, what string) {
	e := q.e
	bound := e.C.Opt.Timeout + 3*time.Second
	if l := q.f.MaxLatency(); l > bound {
		e.Violate("%s: a write took %v, more than timeout %v + 3s, although %s kept quorum", what, l.Round(time.Millisecond), e.C.Opt.Timeout, p.Name)
	} else {
		e.Act(false, "%s: max write latency %v", what, l.Round(time.Millisecond))
	}
	if cur := q.f.Current(); cur != nil && cur != p {
		e.Violate("%s: %s is Primary now, although %s kept quorum", what, cur.Name, p.Name)
	}
	if errs := q.f.Errors()[p.Name]; len(errs) > 0 {
		e.Violate("%s: %s failed writes %v although it kept quorum", what, p.Name, errs)
	}
}

// quorumIsolateSecondary (c): a Secondary is cut off from everyone; the
// Primary goes on with the remaining votes.
func quorumIsolateSecondary(e *Env) error {
	q := e.follow()
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	e.Sleep(500*time.Millisecond, 1500*time.Millisecond)
	q.f.ResetLatency()
	e.Act(true, "isolate %s (Secondary) from every peer at the proxies", s.Name)
	q.isolate(1)
	since := e.H.tick()
	e.Sleep(2*e.C.Opt.Timeout+time.Second, 4*e.C.Opt.Timeout)
	if k := e.H.acked(p.Name, since); k == 0 {
		e.Violate("%s acknowledged no write while %s was cut off", p.Name, s.Name)
	}
	q.steady(p, "Secondary cut off")
	return q.finish()
}

// quorumWitnessKill (d): the witness is killed (SIGKILL) and restarted; the
// Primary goes on with the Secondary's vote.
func quorumWitnessKill(e *Env) error {
	q := e.follow()
	p := e.C.Nodes[0]
	w := e.C.Nodes[len(e.C.Nodes)-1]
	e.Sleep(500*time.Millisecond, 1500*time.Millisecond)
	q.f.ResetLatency()
	e.Act(true, "SIGKILL %s (witness)", w.Name)
	w.Kill()
	since := e.H.tick()
	e.Sleep(e.C.Opt.Timeout, 3*e.C.Opt.Timeout)
	if err := w.Start(e.Ctx); err != nil {
		return err
	}
	e.Act(false, "restart %s", w.Name)
	e.Sleep(e.C.Opt.Timeout, 2*e.C.Opt.Timeout)
	if k := e.H.acked(p.Name, since); k == 0 {
		e.Violate("%s acknowledged no write while the witness was away", p.Name)
	}
	q.steady(p, "witness killed")
	return q.finish()
}

// quorumFlap (e): every 1–3 s the links change: a node cut off from
// everyone, one link partitioned, or everything healed; for 15 s (a minute
// in the soak).
func quorumFlap(e *Env) error {
	q := e.follow()
	d := 15 * time.Second
	if e.Long {
		d = time.Minute
	}
	e.Sleep(500*time.Millisecond, time.Second)
	end := time.Now().Add(d)
	nodes := e.C.Nodes
	for time.Now().Before(end) {
		q.heal()
		switch k := e.Rng.IntN(4); k {
		case 0:
			// The Primary the follower writes to, if it has one: a
			// failover when the cut outlasts the promise.
			i, what := e.Rng.IntN(len(nodes)), "no Primary found now"
			if cur := q.f.Current(); cur != nil {
				i, what = cur.I, "the Primary written to"
			}
			e.Act(true, "isolate %s (%s)", nodes[i].Name, what)
			q.isolate(i)
		case 1:
			i := e.Rng.IntN(len(nodes))
			e.Act(true, "isolate %s", nodes[i].Name)
			q.isolate(i)
		case 2:
			i := e.Rng.IntN(len(nodes))
			j := (i + 1 + e.Rng.IntN(len(nodes)-1)) % len(nodes)
			e.Act(true, "partition %s|%s", nodes[i].Name, nodes[j].Name)
			e.C.Proxy(i, j).Partition(true)
		default:
			e.Act(false, "heal")
		}
		e.Sleep(time.Second, 3*time.Second)
	}
	return q.finish()
}

// quorumKillPrimary (f): the Primary is killed (SIGKILL); the others elect
// a successor; the old Primary restarts and comes back as a Secondary.
func quorumKillPrimary(e *Env) error {
	q := e.follow()
	p := e.C.Nodes[0]
	e.Sleep(500*time.Millisecond, 1500*time.Millisecond)
	e.Act(true, "SIGKILL %s (Primary)", p.Name)
	since := e.H.tick()
	t0 := time.Now()
	p.Kill()
	s := q.expectSuccessor(p, since, t0)
	e.Sleep(500*time.Millisecond, 2*time.Second)
	if err := p.Start(e.Ctx); err != nil {
		return err
	}
	e.Act(false, "restart %s", p.Name)
	if s != nil {
		// It must come back as a Secondary and sync from the successor.
		err := harness.WaitFor(e.Ctx, p.Name+" in sync as Secondary", 30*time.Second, func() bool {
			st, err := p.Status(e.Ctx)
			return err == nil && st.Role == api.Secondary && st.Disk == "UpToDate"
		})
		if err != nil {
			e.Violate("%s after its restart: %v (role %q)", p.Name, err, e.roleOf(p))
		} else {
			e.Act(false, "%s is an UpToDate Secondary", p.Name)
		}
	}
	e.Sleep(300*time.Millisecond, time.Second)
	return q.finish()
}

// quorumResyncPartition (g): a Secondary far behind (killed while the
// Primary wrote) restarts and resyncs at a capped rate; while it is
// Inconsistent the links are cut: it must never be elected, and nothing
// acknowledged may be lost.
func quorumResyncPartition(e *Env) error {
	q := e.follow()
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	e.Sleep(300*time.Millisecond, 800*time.Millisecond)
	e.Act(true, "SIGKILL %s (Secondary)", s.Name)
	s.Kill()
	e.Sleep(1500*time.Millisecond, 2500*time.Millisecond)
	if err := s.Start(e.Ctx); err != nil {
		return err
	}
	e.Act(false, "restart %s: it resyncs (resync-rate capped)", s.Name)
	err := harness.WaitFor(e.Ctx, s.Name+" SyncTarget", 20*time.Second, func() bool {
		st, err := s.Status(e.Ctx)
		return err == nil && st.Disk == "Inconsistent" && slices.ContainsFunc(st.Peers, func(ps api.PeerStatus) bool { return ps.Replication == api.SyncTarget })
	})
	if err != nil {
		e.Find("%s: %v; the cut comes anyway", s.Name, err)
	}
	e.Sleep(0, 500*time.Millisecond)
	if st, err := s.Status(e.Ctx); err == nil {
		for _, ps := range st.Peers {
			if ps.Name == p.Name {
				e.Act(false, "%s: disk %s, %s from %s, %d KiB out of sync", s.Name, st.Disk, ps.Replication, p.Name, ps.OutOfSyncKiB)
			}
		}
	}
	switch e.Rng.IntN(3) {
	case 0:
		e.Act(true, "isolate %s (Primary) while %s resyncs: nobody has quorum", p.Name, s.Name)
		q.isolate(0)
	case 1:
		e.Act(true, "partition %s|%s while %s resyncs", p.Name, s.Name, s.Name)
		e.C.Proxy(0, 1).Partition(true)
	default:
		e.Act(true, "isolate %s while it resyncs", s.Name)
		q.isolate(1)
	}
	stop := make(chan struct{})
	seen := q.watchOld(s, stop)
	e.Sleep(2*e.C.Opt.Timeout+time.Second, 4*e.C.Opt.Timeout)
	close(stop)
	_, roles := seen()
	e.Act(false, "%s during the cut: %v", s.Name, roles)
	if slices.ContainsFunc(roles, func(r string) bool { return strings.HasPrefix(r, "Primary") }) {
		e.Violate("%s, Inconsistent (resyncing), became Primary: %v", s.Name, roles)
	}
	return q.finish()
}
