package chaos

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/faultnet"
	"github.com/repd/repd/harness"
	"github.com/repd/repd/nbd/nbdtest"
)

// Scenarios are every scenario, by name.
var Scenarios = []Scenario{
	{Name: "kill-primary", Protocols: []string{"C", "A"}, Run: killPrimary},
	{Name: "kill-secondary", Protocols: []string{"C", "A"}, Run: killSecondary},
	{Name: "kill-both", Protocols: []string{"C", "A"}, Run: killBoth},
	{Name: "partition", Protocols: []string{"C", "A"}, Run: partition},
	{Name: "asymmetric", Protocols: []string{"C", "A"}, Run: asymmetric},
	{Name: "flap", Protocols: []string{"C", "A"}, Run: flap},
	{Name: "shape", Protocols: []string{"C", "A"}, Run: shape},
	{Name: "stall", Protocols: []string{"C"}, Run: stall},
	{Name: "corrupt", Protocols: []string{"C", "A"}, Run: corrupt},
	{Name: "meta-corrupt", Protocols: []string{"C"}, Run: metaCorrupt},
	{Name: "roles", Protocols: []string{"C"}, Run: roles},
	{Name: "bad-input", Protocols: []string{"C"}, Run: badInput},
	{Name: "disk-full", Protocols: []string{"C", "A"}, SmallDisk: true, Run: diskFull},
	// three-kill promotes the last node standing by hand: that needs
	// quorum off (with three data nodes the default is a majority, which
	// rightly refuses one node alone); the quorum scenarios below cover
	// the majority.
	{Name: "three-kill", Protocols: []string{"C"}, Nodes: 3, Extra: "quorum = \"off\"\n", Run: threeKill},
	// Quorum and automatic failover (quorum.go): two data nodes and a
	// witness, or three data nodes.
	{Name: "quorum-isolate-primary", Protocols: []string{"C", "A"}, Nodes: 3, Witness: true, AutoPromote: true, Size: quorumSize, Run: quorumIsolatePrimary},
	{Name: "quorum-kill-primary", Protocols: []string{"C", "A"}, Nodes: 3, Witness: true, AutoPromote: true, Size: quorumSize, Run: quorumKillPrimary},
	{Name: "quorum-flap", Protocols: []string{"C", "A"}, Nodes: 3, Witness: true, AutoPromote: true, Size: quorumSize, Run: quorumFlap},
	{Name: "quorum-resync-partition", Protocols: []string{"C"}, Nodes: 3, Witness: true, AutoPromote: true, Size: quorumSize,
		Extra: "resync-rate = \"2MiB\"\n", Run: quorumResyncPartition},
	{Name: "quorum-oneway", Protocols: []string{"C", "A"}, Nodes: 3, Witness: true, AutoPromote: true, Size: quorumSize, Soak: true, Run: quorumOneWay},
	{Name: "quorum-isolate-secondary", Protocols: []string{"C", "A"}, Nodes: 3, Witness: true, AutoPromote: true, Size: quorumSize, Soak: true, Run: quorumIsolateSecondary},
	{Name: "quorum-witness-kill", Protocols: []string{"C", "A"}, Nodes: 3, Witness: true, AutoPromote: true, Size: quorumSize, Soak: true, Run: quorumWitnessKill},
	{Name: "quorum3-isolate-primary", Protocols: []string{"C", "A"}, Nodes: 3, AutoPromote: true, Size: quorumSize, Soak: true, Run: quorumIsolatePrimary},
	{Name: "quorum3-kill-primary", Protocols: []string{"C", "A"}, Nodes: 3, AutoPromote: true, Size: quorumSize, Soak: true, Run: quorumKillPrimary},
}

// Lookup finds a scenario by name.
func Lookup(name string) (Scenario, bool) {
	for _, s := range Scenarios {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

func (e *Env) proto() string { return e.Res.Protocol }

// finish waits for the running nodes to be in sync, checks the primary p
// against the history, stops everything and compares the disks.
func (e *Env) finish(p *harness.Node, mode Mode) error {
	for _, n := range e.C.Nodes {
		if !n.Running() {
			if err := n.Start(e.Ctx); err != nil {
				return err
			}
			e.Act(false, "start %s", n.Name)
		}
	}
	if err := e.C.WaitInSync(e.Ctx, 60*time.Second); err != nil {
		return err
	}
	e.Act(false, "in sync")
	if _, err := e.Check(p, mode); err != nil {
		return err
	}
	if err := e.C.ShutdownAndCompare(e.Ctx); err != nil {
		e.Violate("%v", err)
		return nil
	}
	e.Act(false, "stopped; UpToDate disks hash equal")
	return nil
}

// promote makes n Primary with repctl, waiting for it to see the old
// primary gone.
func (e *Env) promote(n *harness.Node, force bool) error {
	args := []string{"primary"}
	if force {
		args = append(args, "--force")
	}
	var err error
	for range 100 {
		if _, err = n.Ctl(e.Ctx, args...); err == nil {
			e.Act(false, "promote %s", n.Name)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("promote %s: %w", n.Name, err)
}

func killPrimary(e *Env) error {
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	w := e.Workload(p)
	e.Sleep(500*time.Millisecond, 2*time.Second)
	e.Act(true, "SIGKILL %s (Primary)", p.Name)
	p.Kill()
	w.Stop()
	if err := e.promote(s, false); err != nil {
		return err
	}
	if e.proto() == "A" {
		img, err := e.Check(s, Prefix)
		if err != nil {
			return err
		}
		e.H.Rebase(img)
		e.Act(false, "rebase history on %s", s.Name)
	}
	w2 := e.Workload(s)
	e.Sleep(300*time.Millisecond, time.Second)
	if err := p.Start(e.Ctx); err != nil {
		return err
	}
	e.Act(false, "restart %s", p.Name)
	if e.Rng.IntN(2) == 0 {
		e.Sleep(0, 800*time.Millisecond)
		e.Act(true, "SIGKILL %s again (during resync)", p.Name)
		p.Kill()
		e.Sleep(100*time.Millisecond, 500*time.Millisecond)
		if err := p.Start(e.Ctx); err != nil {
			return err
		}
		e.Act(false, "restart %s", p.Name)
	}
	e.Sleep(200*time.Millisecond, time.Second)
	w2.Stop()
	return e.finish(s, AllAcked)
}

func killSecondary(e *Env) error {
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	w := e.Workload(p)
	for k := 1 + e.Rng.IntN(3); k > 0; k-- {
		e.Sleep(200*time.Millisecond, time.Second)
		e.Act(true, "SIGKILL %s (Secondary)", s.Name)
		s.Kill()
		e.Sleep(100*time.Millisecond, time.Second)
		if err := s.Start(e.Ctx); err != nil {
			return err
		}
		e.Act(false, "restart %s", s.Name)
	}
	e.Sleep(200*time.Millisecond, time.Second)
	w.Stop()
	return e.finish(p, AllAcked)
}

func killBoth(e *Env) error {
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	w := e.Workload(p)
	e.Sleep(300*time.Millisecond, time.Second)
	e.Act(true, "SIGKILL %s (Secondary)", s.Name)
	s.Kill()
	e.Sleep(200*time.Millisecond, time.Second)
	e.Act(true, "SIGKILL %s (Primary)", p.Name)
	p.Kill()
	w.Stop()
	for _, n := range []*harness.Node{s, p} {
		if err := n.Start(e.Ctx); err != nil {
			return err
		}
		e.Act(false, "restart %s", n.Name)
	}
	// p has the newer data (s missed what p wrote after s died).
	if err := e.promote(p, false); err != nil {
		return err
	}
	w2 := e.Workload(p)
	e.Sleep(200*time.Millisecond, 800*time.Millisecond)
	w2.Stop()
	return e.finish(p, AllAcked)
}

// latencyBound checks that no request took longer than the peer timeout
// plus a margin (the primary drops a peer that does not ack in time).
func (e *Env) latencyBound(w *Workload, what string) {
	bound := e.C.Opt.Timeout + 3*time.Second
	if l := w.MaxLatency(); l > bound {
		e.Violate("%s: a request took %v, more than timeout %v + 3s", what, l.Round(time.Millisecond), e.C.Opt.Timeout)
	} else {
		e.Act(false, "%s: max request latency %v", what, l.Round(time.Millisecond))
	}
}

func partition(e *Env) error {
	p := e.C.Nodes[0]
	px := e.C.Proxy(0, 1)
	w := e.Workload(p)
	for k := 1 + e.Rng.IntN(2); k > 0; k-- {
		e.Sleep(200*time.Millisecond, time.Second)
		w.W.ResetLatency()
		e.Act(true, "partition alpha|beta")
		px.Partition(true)
		e.Sleep(500*time.Millisecond, 3*time.Second)
		e.latencyBound(w.W, "partitioned")
		e.Act(false, "heal")
		px.Partition(false)
		if e.Rng.IntN(2) == 0 {
			e.Act(true, "cut all connections")
			px.CutAll()
		}
	}
	e.Sleep(500*time.Millisecond, 1500*time.Millisecond)
	w.Stop()
	return e.finish(p, AllAcked)
}

// blackhole is a link that holds everything for an hour.
var blackhole = faultnet.Link{Delay: time.Hour}

func asymmetric(e *Env) error {
	p := e.C.Nodes[0]
	px := e.C.Proxy(0, 1)
	w := e.Workload(p)
	e.Sleep(200*time.Millisecond, time.Second)
	w.W.ResetLatency()
	if e.Rng.IntN(2) == 0 {
		e.Act(true, "blackhole alpha→beta only")
		px.SetLink(blackhole, faultnet.Link{})
	} else {
		e.Act(true, "blackhole beta→alpha only (acks)")
		px.SetLink(faultnet.Link{}, blackhole)
	}
	e.Sleep(500*time.Millisecond, 3*time.Second)
	e.latencyBound(w.W, "asymmetric")
	e.Act(false, "heal (reset held connections)")
	px.SetLink(faultnet.Link{}, faultnet.Link{})
	px.CutAll()
	e.Sleep(500*time.Millisecond, 1500*time.Millisecond)
	w.Stop()
	return e.finish(p, AllAcked)
}

func flap(e *Env) error {
	p := e.C.Nodes[0]
	px := e.C.Proxy(0, 1)
	w := e.Workload(p)
	end := time.Now().Add(time.Second + time.Duration(e.Rng.Int64N(int64(3*time.Second))))
	for time.Now().Before(end) {
		e.Sleep(50*time.Millisecond, 600*time.Millisecond)
		e.Act(true, "cut")
		px.CutAll()
	}
	e.Sleep(500*time.Millisecond, time.Second)
	w.Stop()
	return e.finish(p, AllAcked)
}

func shape(e *Env) error {
	p := e.C.Nodes[0]
	px := e.C.Proxy(0, 1)
	w := e.Workload(p)
	for k := 1 + e.Rng.IntN(3); k > 0; k-- {
		l := faultnet.Link{
			Delay:    time.Duration(e.Rng.IntN(20)) * time.Millisecond,
			Jitter:   time.Duration(e.Rng.IntN(10)) * time.Millisecond,
			LossProb: float64(e.Rng.IntN(6)) / 100,
		}
		if e.Rng.IntN(3) == 0 {
			l.Bandwidth = int64(1+e.Rng.IntN(20)) << 20
		}
		e.Act(true, "shape both ways: delay %v jitter %v loss %.2f bandwidth %d", l.Delay, l.Jitter, l.LossProb, l.Bandwidth)
		px.SetLink(l, l)
		e.Sleep(500*time.Millisecond, 2*time.Second)
	}
	px.SetLink(faultnet.Link{}, faultnet.Link{})
	e.Act(false, "clear shaping")
	e.Sleep(300*time.Millisecond, time.Second)
	w.Stop()
	return e.finish(p, AllAcked)
}

func stall(e *Env) error {
	p := e.C.Nodes[0]
	px := e.C.Proxy(0, 1)
	w := e.Workload(p)
	e.Sleep(300*time.Millisecond, time.Second)
	w.W.ResetLatency()
	e.Act(true, "stall (peer stops reading)")
	px.Stall(true)
	e.Sleep(2*e.C.Opt.Timeout, 3*e.C.Opt.Timeout)
	e.latencyBound(w.W, "stalled")
	e.Act(false, "unstall")
	px.Stall(false)
	e.Sleep(500*time.Millisecond, time.Second)
	w.Stop()
	return e.finish(p, AllAcked)
}

func corrupt(e *Env) error {
	p := e.C.Nodes[0]
	px := e.C.Proxy(0, 1)
	w := e.Workload(p)
	e.Sleep(200*time.Millisecond, 800*time.Millisecond)
	prob := 0.005 + e.Rng.Float64()*0.05
	e.Act(true, "corrupt one bit per chunk with probability %.3f both ways", prob)
	px.SetLink(faultnet.Link{CorruptProb: prob}, faultnet.Link{CorruptProb: prob})
	e.Sleep(time.Second, 3*time.Second)
	px.SetLink(faultnet.Link{}, faultnet.Link{})
	e.Act(false, "clean link")
	e.Sleep(500*time.Millisecond, time.Second)
	w.Stop()
	var bad int64
	for _, n := range e.C.Nodes {
		if st, err := n.Status(e.Ctx); err == nil {
			for _, ps := range st.Peers {
				bad += ps.BadFrames
			}
		}
	}
	e.Act(false, "bad frames counted by the nodes: %d", bad)
	return e.finish(p, AllAcked)
}

// metaCorrupt tears or corrupts the secondary's meta file: repd must refuse
// to start with a clear error; deleting the meta file and a full resync
// recover it.
func metaCorrupt(e *Env) error {
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	w := e.Workload(p)
	e.Sleep(300*time.Millisecond, time.Second)
	e.Act(true, "SIGKILL %s", s.Name)
	s.Kill()
	fi, err := os.Stat(s.Meta)
	if err != nil {
		return err
	}
	if e.Rng.IntN(2) == 0 {
		e.Act(true, "tear %s's meta file to %d of %d bytes", s.Name, fi.Size()/3, fi.Size())
		if err := os.Truncate(s.Meta, fi.Size()/3); err != nil {
			return err
		}
	} else {
		f, err := os.OpenFile(s.Meta, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		junk := make([]byte, min(fi.Size(), 64<<10))
		for i := range junk {
			junk[i] = byte(e.Rng.Uint32())
		}
		_, err = f.WriteAt(junk, 0)
		f.Close()
		if err != nil {
			return err
		}
		e.Act(true, "overwrite the first %d bytes of %s's meta file with random bytes", len(junk), s.Name)
	}
	if err := s.Spawn(); err != nil {
		return err
	}
	exited, exitErr := s.Exited(15 * time.Second)
	if !exited {
		e.Violate("%s started on a corrupted meta file", s.Name)
		s.Kill()
	} else {
		tail := s.LogTail(600)
		e.Act(false, "%s refused to start: %v", s.Name, exitErr)
		if !strings.Contains(strings.ToLower(tail), "meta") {
			e.Violate("%s's error does not name the meta file: %s", s.Name, tail)
		}
		lines := strings.Split(strings.TrimSpace(tail), "\n")
		e.Find("repd on a corrupted meta file says: %s", lines[len(lines)-1])
	}
	// Recovery: re-create the meta file offline (the node then knows nothing
	// of its data and takes a full resync).
	if out, err := s.Ctl(e.Ctx, "create-md", "--config", s.Conf, "--node", s.Name); err == nil {
		e.Violate("create-md without --force overwrote a meta file: %s", strings.TrimSpace(out))
	}
	if out, err := s.Ctl(e.Ctx, "create-md", "--config", s.Conf, "--node", s.Name, "--force"); err != nil {
		e.Violate("repctl create-md --force on %s: %v %s", s.Name, err, strings.TrimSpace(out))
		os.Remove(s.Meta)
	}
	e.Act(false, "repctl create-md --force on %s, restart", s.Name)
	if err := s.Start(e.Ctx); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	st, _ := p.Status(e.Ctx)
	ps := st.Peers[0]
	e.Act(false, "%s sees %s: %s/%s disk %s err %q", p.Name, s.Name, ps.Connection, ps.Replication, ps.Disk, ps.LastError)
	if ps.Replication != api.SyncSource && ps.Replication != api.SyncTarget {
		if _, err := s.Ctl(e.Ctx, "connect", "--discard-my-data", p.Name); err != nil {
			e.Find("connect --discard-my-data on a fresh meta file: %v", err)
		} else {
			e.Act(false, "connect --discard-my-data on %s", s.Name)
		}
	}
	e.Sleep(200*time.Millisecond, time.Second)
	w.Stop()
	return e.finish(p, AllAcked)
}

// roles: two operators promote and demote at once, a promote during
// resync, a demote with writes in flight.
func roles(e *Env) error {
	a, b := e.C.Nodes[0], e.C.Nodes[1]
	w := e.Workload(a)
	e.Sleep(300*time.Millisecond, time.Second)
	// Two operators at once: demote a (writes in flight) and promote b.
	e.Act(true, "concurrently: secondary on %s (writes in flight), primary on %s", a.Name, b.Name)
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() { defer wg.Done(); _, errA = a.Ctl(e.Ctx, "secondary") }()
	go func() {
		defer wg.Done()
		time.Sleep(time.Duration(e.Rng.IntN(50)) * time.Millisecond)
		_, errB = b.Ctl(e.Ctx, "primary")
	}()
	wg.Wait()
	e.Act(false, "secondary on %s: %v; primary on %s: %v", a.Name, errA, b.Name, errB)
	if errA != nil {
		return fmt.Errorf("demote with writes in flight failed: %w", errA)
	}
	if err := e.onePrimary(); err != nil {
		e.Violate("%v", err)
	}
	w.Stop()
	p := b
	if errB != nil {
		if err := e.promote(b, false); err != nil {
			return err
		}
	}
	if _, err := e.Check(p, AllAcked); err != nil {
		return err
	}
	// Both promote at once: exactly one may win.
	if _, err := p.Ctl(e.Ctx, "secondary"); err != nil {
		return err
	}
	e.Act(true, "concurrently: primary on %s and on %s", a.Name, b.Name)
	errs := make([]error, 2)
	for i, n := range []*harness.Node{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = n.Ctl(e.Ctx, "primary") }()
	}
	wg.Wait()
	e.Act(false, "primary on %s: %v; on %s: %v", a.Name, errs[0], b.Name, errs[1])
	if errs[0] == nil && errs[1] == nil {
		// Promotion is a two-phase cluster-wide change: one wins.
		e.Violate("two connected Secondaries promoted at the same time both became Primary (%v)", e.onePrimary())
	}
	p, s := a, b
	if errs[0] != nil {
		p, s = b, a
		if errs[1] != nil {
			if err := e.promote(p, false); err != nil {
				return err
			}
		}
	}
	// Promote during resync: s misses writes, comes back, and is promoted
	// while it is SyncTarget.
	w = e.Workload(p)
	e.Sleep(200*time.Millisecond, 500*time.Millisecond)
	e.Act(true, "SIGKILL %s", s.Name)
	s.Kill()
	e.Sleep(500*time.Millisecond, time.Second)
	w.Stop()
	if err := s.Start(e.Ctx); err != nil {
		return err
	}
	e.Act(false, "restart %s; promote it during resync", s.Name)
	var tried bool
	for range 40 {
		st, err := s.Status(e.Ctx)
		if err == nil && st.Disk == "Inconsistent" {
			_, err := s.Ctl(e.Ctx, "primary")
			e.Act(false, "primary on %s while %s: %v", s.Name, st.Disk, err)
			if err == nil {
				e.Violate("%s promoted while Inconsistent without --force", s.Name)
			}
			tried = true
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if !tried {
		e.Act(false, "resync was over before the promote could race it")
	}
	if err := e.onePrimary(); err != nil {
		e.Violate("%v", err)
	}
	return e.finish(p, AllAcked)
}

func (e *Env) onePrimary() error {
	var prim []string
	for _, n := range e.C.Nodes {
		if st, err := n.Status(e.Ctx); err == nil && st.Role == api.Primary {
			prim = append(prim, n.Name)
		}
	}
	if len(prim) > 1 {
		return fmt.Errorf("two connected Primaries: %v", prim)
	}
	return nil
}

// badInput sends garbage to every listener while a workload runs.
func badInput(e *Env) error {
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	time.Sleep(time.Second)
	var before []float64
	for _, n := range e.C.Nodes {
		g, _, err := scrape(e.Ctx, n)
		if err != nil {
			return err
		}
		before = append(before, g)
	}
	w := e.Workload(p)
	targets := []struct{ what, addr string }{
		{"nbd " + p.Name, p.NBD}, {"nbd " + s.Name, s.NBD},
		{"peer " + p.Name, p.Peer}, {"peer " + s.Name, s.Peer},
	}
	for k := 0; k < 40; k++ {
		t := targets[e.Rng.IntN(len(targets))]
		junk := make([]byte, 1+e.Rng.IntN(8192))
		for i := range junk {
			junk[i] = byte(e.Rng.Uint32())
		}
		mode := e.Rng.IntN(3)
		if mode == 1 && strings.HasPrefix(t.what, "nbd") {
			// a valid handshake, then garbage requests
			cl, err := nbdtest.Dial("tcp", t.addr, "r0")
			if err == nil {
				cl.SendRaw(junk)
				time.Sleep(10 * time.Millisecond)
				cl.Close()
			}
			continue
		}
		c, err := net.DialTimeout("tcp", t.addr, time.Second)
		if err != nil {
			continue
		}
		c.Write(junk)
		if mode == 2 {
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			c.Read(make([]byte, 512))
		}
		c.Close()
	}
	e.Act(true, "40 garbage connections to the NBD and peer listeners")
	// An admin-socket caller without permission.
	cmd := exec.Command(e.C.Bins.Repctl, "--admin", p.Admin, "secondary")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err == nil {
		e.Violate("an unprivileged caller demoted %s over the admin socket", p.Name)
	} else if errors.As(err, &ee) {
		e.Act(true, "unprivileged repctl secondary: exit %d: %s", ee.ExitCode(), strings.TrimSpace(string(out)))
	} else {
		e.Act(false, "unprivileged repctl could not run: %v", err)
	}
	e.Sleep(300*time.Millisecond, time.Second)
	nerr := w.W.Errors()
	w.Stop()
	if nerr > 0 {
		e.Violate("%d workload writes failed during the garbage", nerr)
	}
	for _, n := range e.C.Nodes {
		if !n.Running() {
			e.Violate("%s died: %s", n.Name, n.LogTail(1000))
			continue
		}
		st, err := n.Status(e.Ctx)
		if err != nil {
			e.Violate("%s status: %v", n.Name, err)
		} else if n == p && st.Role != api.Primary {
			e.Violate("%s is no longer Primary", n.Name)
		}
	}
	// Goroutines settle back (connections closed, nothing left waiting).
	for i, n := range e.C.Nodes {
		var g float64
		harness.WaitFor(e.Ctx, "goroutines back to baseline", 10*time.Second, func() bool {
			g, _, _ = scrape(e.Ctx, n)
			return g <= before[i]+5
		})
		e.Act(false, "%s goroutines before %v after %v", n.Name, before[i], g)
		if g > before[i]+5 {
			e.Violate("%s: %v goroutines after the garbage, %v before", n.Name, g, before[i])
		}
	}
	return e.finish(p, AllAcked)
}

// threeKill: three nodes; kill a random secondary and the primary in turn.
func threeKill(e *Env) error {
	p := e.C.Nodes[0]
	s1, s2 := e.C.Nodes[1], e.C.Nodes[2]
	if e.Rng.IntN(2) == 0 {
		s1, s2 = s2, s1
	}
	w := e.Workload(p)
	e.Sleep(300*time.Millisecond, time.Second)
	e.Act(true, "SIGKILL %s (Secondary)", s1.Name)
	s1.Kill()
	e.Sleep(200*time.Millisecond, time.Second)
	e.Act(true, "SIGKILL %s (Primary)", p.Name)
	p.Kill()
	w.Stop()
	if err := e.promote(s2, false); err != nil {
		return err
	}
	w = e.Workload(s2)
	e.Sleep(200*time.Millisecond, 600*time.Millisecond)
	for _, n := range []*harness.Node{p, s1} {
		if err := n.Start(e.Ctx); err != nil {
			return err
		}
		e.Act(false, "restart %s", n.Name)
	}
	e.Sleep(200*time.Millisecond, time.Second)
	w.Stop()
	return e.finish(s2, AllAcked)
}

// diskFull: the secondary's disk is a sparse file on a 6 MiB tmpfs, so its
// writes start failing with ENOSPC. The primary must go on and lose
// nothing; the failing node detaches (on-io-error detach): Failed.
func diskFull(e *Env) error {
	p, s := e.C.Nodes[0], e.C.Nodes[1]
	w := e.Workload(p)
	e.Act(true, "%s's disk lives on a 6 MiB tmpfs (device %d MiB)", s.Name, e.C.Opt.Size>>20)
	e.Sleep(2*time.Second, 3*time.Second)
	nerr := w.W.Errors()
	w.W.ResetLatency()
	e.Sleep(500*time.Millisecond, time.Second)
	lat := w.W.MaxLatency()
	w.Stop()
	if nerr > 0 {
		e.Violate("%d writes failed on the primary although its own disk is fine", nerr)
	}
	if lat > e.C.Opt.Timeout+3*time.Second {
		e.Violate("writes took %v with the secondary's disk full", lat)
	}
	sst, err := s.Status(e.Ctx)
	if err != nil {
		e.Violate("%s does not answer status with a full disk: %v", s.Name, err)
	} else {
		e.Act(false, "%s: role %v disk %s", s.Name, sst.Role, sst.Disk)
		if sst.Disk != "Failed" && sst.Disk != "Diskless" {
			e.Violate("%s's disk is full (ENOSPC) but its disk state is %s, not Failed/detached", s.Name, sst.Disk)
		}
	}
	pst, err := p.Status(e.Ctx)
	if err == nil {
		ps := pst.Peers[0]
		e.Act(false, "%s sees %s: %s/%s disk %s, out of sync %d KiB, connects %d, last error %q",
			p.Name, s.Name, ps.Connection, ps.Replication, ps.Disk, ps.OutOfSyncKiB, ps.Connects, ps.LastError)
		if ps.Disk != "Failed" {
			e.Violate("%s sees %s's disk as %q, not Failed", p.Name, s.Name, ps.Disk)
		}
		if ps.Connects > 3 {
			e.Violate("%s reconnected to %s %d times (a reconnect storm)", p.Name, s.Name, ps.Connects)
		}
	}
	if _, err := e.Check(p, AllAcked); err != nil {
		return err
	}
	e.Act(false, "stop; the secondary's data is not compared (its disk is full)")
	for _, n := range e.C.Nodes {
		n.Stop()
	}
	return nil
}
