package target

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/config"
	"github.com/repd/repd/harness"
)

func TestTargetMeta(t *testing.T) {
	for _, tg := range All() {
		if tg.Meta.Kind == "" || tg.Meta.Group == "" {
			t.Errorf("%s: meta %+v", tg.Name, tg.Meta)
		}
	}
	wan := Replicated("A", 1, "none", &link.Profiles[2])
	if wan.Name != "repd-a1-wan" || wan.Meta.LinkRTTms != 30 || wan.Meta.Group != result.GroupLinks {
		t.Errorf("wan target: %s %+v", wan.Name, wan.Meta)
	}
	if l := link.Profiles[2].Link(); l.Delay != 15*time.Millisecond {
		t.Errorf("wan one-way delay %s, want 15ms", l.Delay)
	}
}

// Each replicated loopback target without compression has an insecure
// twin, named after it, with the same meta, out of the default run, whose
// resource file has no secret and says insecure = true; the twin itself
// has a secret.
func TestInsecureTwins(t *testing.T) {
	byName := allByName()
	for _, name := range []string{"repd-a1", "repd-c1"} {
		tw, ok := byName[name+"-insecure"]
		if !ok {
			t.Fatalf("no target %s-insecure", name)
		}
		if tw.Meta.Default || tw.Meta != (result.TargetMeta{Kind: "repd", Group: result.GroupLoopback, Protocol: byName[name].Meta.Protocol, Peers: 1, Compression: "none"}) {
			t.Errorf("%s: meta %+v, want %s's %+v out of the default run", tw.Name, tw.Meta, name, byName[name].Meta)
		}
	}
	env := Env{Dir: t.TempDir(), Size: 1 << 30, Transport: "unix", Logf: t.Logf}
	for _, insecure := range []bool{false, true} {
		rc := RepdConfig{Nodes: []string{"alpha", "bravo"}, Protocol: "A", Insecure: insecure}
		c, err := harness.New(&harness.Bins{}, t.TempDir(), rc.Options(env))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(c.Nodes[0].Conf)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		f, err := config.Parse(b)
		if err != nil {
			t.Fatalf("config.Parse: %v\n%s", err, b)
		}
		if f.Resource.Insecure != insecure || (f.Resource.SecretFile == "") != insecure {
			t.Errorf("Insecure %v: resource file says insecure = %v, secret-file %q", insecure, f.Resource.Insecure, f.Resource.SecretFile)
		}
	}
}

// A repd target's resource file is one repd accepts, with the target's
// keys: the resource "bench" of the run's size, NBD on unix sockets, the
// Extra keys in order; with a link, each node's own file and a shaped
// proxy on the link with the link's window and the target's seed.
func TestRepdResourceFile(t *testing.T) {
	wan, _ := link.Lookup("wan")
	rc := RepdConfig{Name: "rpo-A", Nodes: []string{"alpha", "bravo"}, Protocol: "A",
		Extra: map[string]string{"on-congestion": `"block"`, "journal-size": "8388608"}, Link: &wan, Seed: SeedOf("rpo-A")}
	env := Env{Dir: t.TempDir(), Size: 1 << 30, Transport: "unix", Logf: t.Logf}
	c, err := harness.New(&harness.Bins{}, env.Dir, rc.Options(env))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	px := c.Proxy(0, 1)
	if px == nil || px.MaxInFlight != wan.Window() || px.Seed() != SeedOf("rpo-A")+1 {
		t.Fatalf("proxy %+v: want the wan window %d and seed %d", px, wan.Window(), SeedOf("rpo-A")+1)
	}
	for _, n := range c.Nodes {
		b, err := os.ReadFile(n.Conf)
		if err != nil {
			t.Fatal(err)
		}
		f, err := config.Parse(b)
		if err != nil {
			t.Fatalf("config.Parse: %v\n%s", err, b)
		}
		if f.Resource.Name != "bench" || len(f.Nodes) != 2 || f.Nodes[0].Name != "alpha" || f.Nodes[1].Name != "bravo" {
			t.Errorf("%s: %+v", n.Conf, f)
		}
		out := string(b)
		for _, s := range []string{"size = 1073741824", `protocol = "A"`, "journal-size = 8388608\non-congestion = \"block\"\n", `nbd = "unix:` + env.Dir} {
			if !strings.Contains(out, s) {
				t.Errorf("%s lacks %q:\n%s", n.Conf, s, out)
			}
		}
	}
	if ep := (&Cluster{Cluster: c}).Endpoint(); len(ep.Servers) != 2 || ep.URI != "nbd+unix:///bench?socket="+env.Dir+"/alpha.nbd.sock" ||
		ep.FioArgs[0] != "--ioengine=nbd" || len(ep.PIDs()) != 0 || ep.Alive() == nil {
		t.Errorf("endpoint of stopped nodes: %+v (alive: %v)", ep, ep.Alive())
	}
}

func TestHexMask(t *testing.T) {
	for want, cpus := range map[string][]int{"1": {0}, "2": {1}, "3": {0, 1}, "c": {2, 3}, "10": {4}, "100000001": {0, 32}} {
		if got := HexMask(cpus); got != want {
			t.Errorf("HexMask(%v) = %q, want %q", cpus, got, want)
		}
		if m, err := config.ParseCPUMask(want); err != nil || !slices.Equal(m.CPUs(), cpus) {
			t.Errorf("ParseCPUMask(%q) = %v, %v: not %v", want, m.CPUs(), err, cpus)
		}
	}
}

// The pinned variants of repd-c1 and repd-a1, out of the default run,
// start real nodes whose every thread runs on its own half of the CPUs:
// the Primary on the first, the peer on the rest.
func TestPinnedTargets(t *testing.T) {
	byName := allByName()
	for _, name := range []string{"repd-a1", "repd-c1"} {
		p, ok := byName[name+"-pinned"]
		want := byName[name].Meta
		want.Pinned, want.Default = true, false
		if !ok || p.Meta.Default || p.Meta != want {
			t.Fatalf("%s-pinned: %v, meta %+v; want %s's meta, pinned, out of the default run", name, ok, p.Meta, name)
		}
	}
	masks, err := splitCPUs()
	if err != nil {
		t.Fatal(err) // this machine has two CPUs or more
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ep, err := byName["repd-c1-pinned"].Start(ctx, Env{Dir: t.TempDir(), Size: 64 << 20, Transport: "unix", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Stop()
	pids := ep.PIDs()
	if len(pids) != 2 {
		t.Fatalf("%d server processes, want 2", len(pids))
	}
	for i, pid := range pids {
		m, _ := config.ParseCPUMask(masks[i])
		var want unix.CPUSet
		for _, c := range m.CPUs() {
			want.Set(c)
		}
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			var got unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &got); err != nil {
				continue // the thread ended
			}
			if got != want {
				t.Errorf("node %d (pid %d) thread %d runs on %d CPUs, not only %v (cpu-mask %s)", i, pid, tid, got.Count(), m.CPUs(), masks[i])
			}
		}
	}
}

// allByName is All by target name.
func allByName() map[string]Target {
	m := map[string]Target{}
	for _, tg := range All() {
		m[tg.Name] = tg
	}
	return m
}

// The -machines targets model one node per machine: the Primary on the
// first half of the CPUs, its peer on the rest, and fio on the Primary's
// half (its worker's affinity, read while a real fio job writes); their
// standalone twin puts repd and fio on the same half. None is in the
// default run.
func TestMachinesTargets(t *testing.T) {
	byName := allByName()
	for _, name := range []string{"repd-a1", "repd-c1"} {
		m, ok := byName[name+"-machines"]
		want := byName[name].Meta
		want.Machines, want.Default = true, false
		if !ok || m.Meta != want {
			t.Fatalf("%s-machines: %v, meta %+v; want %s's meta, machines, out of the default run", name, ok, m.Meta, name)
		}
	}
	if sm, ok := byName[result.StandaloneMachine]; !ok || sm.Meta.Default || !sm.Meta.Machines || sm.Meta.Peers != 0 {
		t.Fatalf("%s: %v, meta %+v", result.StandaloneMachine, ok, sm.Meta)
	}
	first, rest, err := halves()
	if err != nil {
		t.Fatal(err) // this machine has two CPUs or more
	}
	for _, tc := range []struct {
		name  string
		masks [][]int
	}{
		{result.StandaloneMachine, [][]int{first}},
		{"repd-c1-machines", [][]int{first, rest}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		ep, err := byName[tc.name].Start(ctx, Env{Dir: t.TempDir(), Size: 64 << 20, Transport: "unix", Logf: t.Logf})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		pids := ep.PIDs()
		if len(pids) != len(tc.masks) {
			t.Errorf("%s: %d server processes, want %d", tc.name, len(pids), len(tc.masks))
		}
		for i, pid := range pids {
			if got := affinity(t, pid); !slices.Equal(got, tc.masks[i]) {
				t.Errorf("%s: node %d runs on CPUs %v, want %v", tc.name, i, got, tc.masks[i])
			}
		}
		job := filepath.Join(t.TempDir(), "w.fio")
		if err := os.WriteFile(job, []byte("[w]\nrw=randwrite\nbs=4k\niodepth=4\ntime_based=1\nruntime=3\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, "fio", append(append([]string{"--output=/dev/null"}, ep.FioArgs...), job)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// A worker sets its affinity once forked: its last sample in
		// fio's first two seconds counts.
		workers := map[int][]int{}
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			for _, c := range children(cmd.Process.Pid) {
				if a, err := affinityOf(c); err == nil { // else it ended
					workers[c] = a
				}
			}
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("%s: fio %v: %v", tc.name, ep.FioArgs, err)
		}
		if len(workers) == 0 {
			t.Errorf("%s: no fio worker seen", tc.name)
		}
		for _, w := range workers {
			if !slices.Equal(w, first) {
				t.Errorf("%s: fio's worker runs on CPUs %v, want %v (%v)", tc.name, w, first, ep.FioArgs)
			}
		}
		ep.Stop()
		cancel()
	}
}

// affinity is the CPUs pid may run on.
func affinity(t *testing.T, pid int) []int {
	t.Helper()
	cpus, err := affinityOf(pid)
	if err != nil {
		t.Fatalf("affinity of %d: %v", pid, err)
	}
	return cpus
}

// children are the pids whose parent is pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}
