//go:build ignore

// abtool runs fio jobs against fresh repd clusters in variants, rounds
// interleaved (the order reversed every other round), and prints each
// run's IOPS, each node's CPU (percent of one CPU over the job) and
// the GOMAXPROCS moves each node logged, then every variant's median and
// the median of its per-round ratios to the first variant. The session-16
// experiments of this directory's README ran with it (root, from the
// module root):
//
//	go build -tags urfave_cli_no_docs -o /tmp/bin/ ./cmd/repd ./cmd/repctl ./cmd/linkproxy
//	go run ./bench/results/2026-12-07-vm-session16/abtool.go -rounds 5 -job randwrite-4k-qd32 -secs 10 \
//		sa:none:/tmp/bin A:A:/tmp/bin Apin:A:/tmp/bin:mask=1,2
//
// A variant is name:protocol:bindir[:option...]: protocol none (one node,
// standalone), A or C; options chrt=P|S|PS (SCHED_RR 1 on every thread of
// the Primary, the Secondary or both), nice=P/-5 (every thread's nice
// value), env=K=V (in both nodes' environment), mask=M0,M1 (the nodes'
// cpu-mask), fio=M (fio under taskset M), peers=2. Each run: a 512 MiB
// device, one 1 MiB sequential pass, sync and drop the page cache, then
// the job (bench/jobs/JOB.fio, 2 s ramp, -secs measured). PERF=1 records
// perf call graphs of each node for 4 s into /tmp/perf-NAME-I.data
// (PERF=trace: `perf trace -s` summaries, /tmp/trace-NAME-I.txt);
// GOTRACE=1 fetches a 2 s Go execution trace of each node
// (/tmp/gotrace-NAME-I.out, through --pprof); IDLE=N waits N s before
// the job. Added in session 17: PERF=ftrace records 1 s of scheduler
// events and system calls of the whole machine through tracefs into
// /tmp/ftrace-NAME.txt, the nodes' pids into /tmp/ftrace-NAME.pids (for
// ../2026-12-07-vm-session17/hops.py); LATLOG=1 has fio log every
// write's latency (/tmp/lat-NAME_clat.1.log); a run whose Primary logged
// a peer disconnect says DISCONNECTS:N after its CPU figures (a variant
// that breaks the link runs at standalone speed). Added in session 22:
// FIOARGS="--rate_iops=N ..." adds arguments to fio's command line, and
// SIDE="COMMAND" runs a shell command beside each job (started 1.5 s
// before fio, it must end by itself; its output follows the run's CPU
// figures), as ../2026-12-07-vm-session22/pairfloor.go. Added in session
// 23: PREREAD=BS reads the whole device sequentially in BS pieces through
// NBD, PREVERIFY=1 runs `repctl verify --wait` on the first node, and
// PREINVALIDATE=1 `repctl invalidate` on the second (a full resync, waited
// for), all after the page cache is dropped and before the job; a job's
// reads count with its writes. Files of the same name
// are overwritten by the next round. It is a study tool, not the bench.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/repd/repd/bench/internal/fio"
	"github.com/repd/repd/bench/internal/procfs"
	"github.com/repd/repd/harness"
)

type variant struct {
	name, bins, proto string
	chrt              string // "", "P", "S", "PS"
	env               []string
	masks             []string
	fiomask           string
	nice              map[string]int
	peers             int
}

func main() {
	rounds := flag.Int("rounds", 4, "")
	job := flag.String("job", "randwrite-4k-qd32", "")
	secs := flag.Int("secs", 10, "")
	flag.Parse()
	var vs []variant
	for _, a := range flag.Args() {
		// name:proto:bins[:chrt=PS][:env=K=V][:mask=1,2]
		p := strings.Split(a, ":")
		v := variant{name: p[0], proto: p[1], bins: p[2]}
		for _, o := range p[3:] {
			k, val, _ := strings.Cut(o, "=")
			switch k {
			case "chrt":
				v.chrt = val
			case "env":
				v.env = append(v.env, val)
			case "nice":
				who, n, _ := strings.Cut(val, "/")
				if v.nice == nil {
					v.nice = map[string]int{}
				}
				v.nice[who], _ = strconv.Atoi(n)
			case "peers":
				v.peers, _ = strconv.Atoi(val)
			case "fio":
				v.fiomask = val
			case "mask":
				v.masks = strings.Split(val, ",")
			}
		}
		vs = append(vs, v)
	}
	res := map[string][]float64{}
	for r := 0; r < *rounds; r++ {
		order := vs
		if r%2 == 1 {
			order = slices.Clone(vs)
			slices.Reverse(order)
		}
		for _, v := range order {
			iops, c, err := run(v, *job, *secs)
			if err != nil {
				fmt.Println("ERR", v.name, err)
				continue
			}
			fmt.Printf("round %d %-12s %8.0f  %s\n", r, v.name, iops, c)
			res[v.name] = append(res[v.name], iops)
		}
	}
	base := vs[0].name
	for _, v := range vs {
		var ratios []float64
		for i := range res[v.name] {
			if i < len(res[base]) {
				ratios = append(ratios, res[v.name][i]/res[base][i])
			}
		}
		fmt.Printf("%-12s median %8.0f  ratio-to-%s median %.3f %v\n", v.name, med(res[v.name]), base, med(ratios), ratios)
	}
}

func med(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	y := append([]float64(nil), x...)
	sort.Float64s(y)
	if len(y)%2 == 1 {
		return y[len(y)/2]
	}
	return (y[len(y)/2-1] + y[len(y)/2]) / 2
}

func run(v variant, job string, secs int) (float64, string, error) {
	ctx := context.Background()
	root, err := harness.ModuleRoot()
	if err != nil {
		return 0, "", err
	}
	dir, _ := os.MkdirTemp("/var/tmp", "ab-")
	if os.Getenv("KEEP") == "" {
		defer os.RemoveAll(dir)
	} else {
		fmt.Println("dir", dir)
	}
	bins := &harness.Bins{Dir: v.bins, Repd: filepath.Join(v.bins, "repd"), Repctl: filepath.Join(v.bins, "repctl"), Linkproxy: filepath.Join(v.bins, "linkproxy")}
	o := harness.Options{Names: []string{"alpha", "bravo"}, Resource: "bench", Size: 512 << 20, Protocol: v.proto, NBDUnix: true, StopTimeout: 5 * time.Second, CPUMasks: v.masks}
	o.Args = []string{"--log-level", "debug"}
	if l := os.Getenv("LOGLEVEL"); l != "" {
		// Session 25: LOGLEVEL=info runs the nodes at the bench's level.
		o.Args = []string{"--log-level", l}
	}
	if os.Getenv("GOTRACE") != "" {
		o.Metrics, o.Args = true, append(o.Args, "--pprof")
	}
	for _, e := range v.env {
		k, val, _ := strings.Cut(e, "=")
		os.Setenv(k, val)
		defer os.Unsetenv(k)
	}
	var c *harness.Cluster
	if v.peers == 2 {
		o.Names = []string{"alpha", "bravo", "charlie"}
	}
	if v.proto == "none" {
		o.Names, o.Protocol = []string{"alpha"}, "C"
		c, err = harness.New(bins, dir, o)
		if err == nil {
			err = c.Start(ctx)
			if err == nil {
				_, err = c.Nodes[0].Ctl(ctx, "primary", "--force")
			}
		}
	} else {
		c, err = harness.Launch(ctx, bins, dir, o)
	}
	if err != nil {
		if c != nil {
			c.Close()
		}
		return 0, "", err
	}
	defer func() {
		for _, n := range c.Nodes {
			n.Stop()
		}
		c.Close()
	}()
	uri := c.Nodes[0].URI()
	pre := exec.Command("fio", "--ioengine=nbd", "--uri="+uri, "--name=pre", "--rw=write", "--bs=1M", "--iodepth=8", "--size=100%", "--direct=1")
	if out, err := pre.CombinedOutput(); err != nil {
		return 0, "", fmt.Errorf("pre: %v %s", err, out)
	}
	for i, n := range c.Nodes {
		who := "P"
		if i > 0 {
			who = "S"
		}
		if nv, ok := v.nice[who]; ok {
			tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", n.Pid()))
			for _, t := range tasks {
				tid, _ := strconv.Atoi(t.Name())
				if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nv); err != nil {
					return 0, "", err
				}
			}
		}
		if strings.Contains(v.chrt, who) {
			if out, err := exec.Command("chrt", "-a", "-r", "-p", "1", strconv.Itoa(n.Pid())).CombinedOutput(); err != nil {
				return 0, "", fmt.Errorf("chrt %v %s", err, out)
			}
		}
	}
	// Session 24: SETTLE=N waits N seconds after the prefill before the
	// cache is dropped, so that a protocol-A Secondary has applied the
	// prefill's tail by then (otherwise its last MiBs are written after
	// the drop, into large folios).
	if d := os.Getenv("SETTLE"); d != "" {
		n, _ := strconv.Atoi(d)
		time.Sleep(time.Duration(n) * time.Second)
	}
	exec.Command("sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches").Run()
	// Session 23: after the page cache is dropped and before the job,
	// PREREAD=BS reads the whole device sequentially in BS pieces through
	// NBD, PREVERIFY=1 runs repctl verify --wait on the first node.
	if os.Getenv("PREREAD") != "" {
		rd := exec.Command("fio", "--ioengine=nbd", "--uri="+uri, "--name=rd", "--rw=read", "--bs="+os.Getenv("PREREAD"), "--iodepth=1", "--size=100%")
		if out, err := rd.CombinedOutput(); err != nil {
			return 0, "", fmt.Errorf("preread: %v %s", err, out)
		}
	}
	if os.Getenv("PREVERIFY") != "" {
		t0 := time.Now()
		if out, err := c.Nodes[0].Ctl(ctx, "verify", "--wait"); err != nil {
			return 0, "", fmt.Errorf("preverify: %v %s", err, out)
		}
		fmt.Println("verify took", time.Since(t0))
	}
	if os.Getenv("PREINVALIDATE") != "" && len(c.Nodes) > 1 {
		t0 := time.Now()
		if out, err := c.Nodes[1].Ctl(ctx, "invalidate"); err != nil {
			return 0, "", fmt.Errorf("preinvalidate: %v %s", err, out)
		}
		if out, err := c.Nodes[0].Ctl(ctx, "wait-sync", "--timeout", "5m"); err != nil {
			return 0, "", fmt.Errorf("preinvalidate: wait-sync: %v %s", err, out)
		}
		fmt.Println("full resync took", time.Since(t0))
	}
	if d := os.Getenv("IDLE"); d != "" {
		n, _ := strconv.Atoi(d)
		time.Sleep(time.Duration(n) * time.Second)
	}
	var side *exec.Cmd
	var sideOut strings.Builder
	if sc := os.Getenv("SIDE"); sc != "" {
		// Session 22: a command run beside the job (started 1.5 s before
		// fio; it must end by itself), its output printed after the run.
		side = exec.Command("sh", "-c", sc)
		side.Stdout, side.Stderr = &sideOut, &sideOut
		if err := side.Start(); err != nil {
			return 0, "", err
		}
		time.Sleep(1500 * time.Millisecond)
	}
	outf := filepath.Join(dir, "fio.json")
	fioArgs := []string{"fio", "--output-format=json"}
	if fa := os.Getenv("FIOARGS"); fa != "" {
		fioArgs = append(fioArgs, strings.Fields(fa)...)
	}
	if l := os.Getenv("LATLOG"); l != "" {
		fioArgs = append(fioArgs, "--write_lat_log=/tmp/lat-"+v.name, "--log_avg_msec=0")
	}
	if v.fiomask != "" {
		fioArgs = append([]string{"taskset", v.fiomask}, fioArgs...)
	}
	cmd := exec.Command(fioArgs[0], append(fioArgs[1:], "--output="+outf, "--ioengine=nbd", "--uri="+uri, filepath.Join(root, "bench", "jobs", job+".fio"))...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("BENCH_RUNTIME=%d", secs))
	if err := cmd.Start(); err != nil {
		return 0, "", err
	}
	time.Sleep(2500 * time.Millisecond)
	t0 := time.Now()
	var c0 []time.Duration
	for _, n := range c.Nodes {
		d, _ := procfs.CPU(n.Pid())
		c0 = append(c0, d)
	}
	if os.Getenv("GOTRACE") != "" {
		for i, n := range c.Nodes {
			go exec.Command("curl", "-s", "-o", fmt.Sprintf("/tmp/gotrace-%s-%d.out", v.name, i), "http://"+n.Metrics+"/debug/pprof/trace?seconds=2").Run()
		}
	}
	if os.Getenv("PERF") == "ftrace" {
		var pids []string
		for _, n := range c.Nodes {
			pids = append(pids, fmt.Sprintf("%s=%d", n.Name, n.Pid()))
		}
		if err := os.WriteFile(fmt.Sprintf("/tmp/ftrace-%s.pids", v.name), []byte(strings.Join(pids, "\n")+"\n"), 0o644); err != nil {
			return 0, "", err
		}
		if err := ftrace(fmt.Sprintf("/tmp/ftrace-%s.txt", v.name), time.Second); err != nil {
			return 0, "", err
		}
		time.Sleep(time.Duration(secs-2) * time.Second)
	} else if os.Getenv("PERF") != "" {
		var ps []*exec.Cmd
		for i, n := range c.Nodes {
			if os.Getenv("PERF") == "trace" {
				pc := exec.Command("perf", "trace", "-s", "-o", fmt.Sprintf("/tmp/trace-%s-%d.txt", v.name, i), "-p", strconv.Itoa(n.Pid()), "--", "sleep", "3")
				pc.Start()
				ps = append(ps, pc)
				continue
			}
			pc := exec.Command("perf", "record", "-g", "-o", fmt.Sprintf("/tmp/perf-%s-%d.data", v.name, i), "-p", strconv.Itoa(n.Pid()), "--", "sleep", "4")
			pc.Start()
			ps = append(ps, pc)
		}
		for _, pc := range ps {
			pc.Wait()
		}
		time.Sleep(time.Duration(secs-5) * time.Second)
	} else {
		time.Sleep(time.Duration(secs-1) * time.Second)
	}
	el := time.Since(t0).Seconds()
	var cs []string
	for i, n := range c.Nodes {
		d, _ := procfs.CPU(n.Pid())
		cs = append(cs, fmt.Sprintf("%.0f%%", 100*(d-c0[i]).Seconds()/el))
	}
	if err := cmd.Wait(); err != nil {
		return 0, "", err
	}
	if side != nil {
		err := side.Wait()
		cs = append(cs, "side: "+strings.TrimSpace(sideOut.String()))
		if err != nil {
			return 0, "", fmt.Errorf("side: %v: %s", err, sideOut.String())
		}
	}
	for _, n := range c.Nodes {
		b, _ := os.ReadFile(filepath.Join(dir, n.Name+".log"))
		var moves []string
		for _, l := range strings.Split(string(b), "\n") {
			if i := strings.Index(l, "gomaxprocs="); i >= 0 {
				moves = append(moves, l[i+11:i+12])
			}
		}
		cs = append(cs, n.Name[:1]+":"+strings.Join(moves, ""))
		if d := strings.Count(string(b), "msg=\"peer disconnected\""); d > 0 {
			cs = append(cs, fmt.Sprintf("DISCONNECTS:%d", d))
		}
	}
	b, _ := os.ReadFile(outf)
	r, err := fio.Parse(b)
	if err != nil {
		return 0, "", err
	}
	return r.Write.IOPS + r.Read.IOPS, strings.Join(cs, "/"), nil // reads count since session 23
}

// ftrace records every CPU's scheduler events (sched_switch, sched_wakeup,
// sched_migrate_task) and system call entries and exits for d into out,
// through tracefs: the kernel's ring buffer takes the events and nothing
// reads it until the end, so the traced processes keep their pace (perf
// record, whose reader needs a CPU of its own, halved it here).
func ftrace(out string, d time.Duration) error {
	const t = "/sys/kernel/tracing/"
	set := func(file, val string) error { return os.WriteFile(t+file, []byte(val+"\n"), 0o644) }
	old, err := os.ReadFile(t + "buffer_size_kb")
	if err != nil {
		return err
	}
	size, _, _ := strings.Cut(strings.TrimSpace(string(old)), " ")
	defer func() {
		// Whatever happened, leave tracing as it was found.
		set("tracing_on", "0")
		set("set_event", "")
		set("trace", "")
		set("buffer_size_kb", size)
	}()
	steps := [][2]string{{"tracing_on", "0"}, {"trace", ""}, {"buffer_size_kb", "200000"}, {"options/record-tgid", "1"},
		{"set_event", "sched:sched_switch sched:sched_wakeup sched:sched_migrate_task raw_syscalls:sys_enter raw_syscalls:sys_exit"}, {"tracing_on", "1"}}
	for _, st := range steps {
		if err := set(st[0], st[1]); err != nil {
			return fmt.Errorf("ftrace %s: %w", st[0], err)
		}
	}
	time.Sleep(d)
	set("tracing_on", "0")
	b, err := os.ReadFile(t + "trace")
	if err != nil {
		return err
	}
	return os.WriteFile(out, b, 0o644)
}
