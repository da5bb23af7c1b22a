// Command soak runs chaos scenarios against real repd processes with random
// seeds for as long as asked, and prints a summary: scenarios run, faults
// injected, writes checked, violations (which must be 0), and the daemons'
// goroutines and RSS over time.
//
// Alongside the scenarios (each of which starts fresh daemons), an
// endurance cluster of three daemons runs for the whole soak without a
// restart, under a workload and a link fault every few seconds, checked
// every epoch: its goroutines and RSS show whether a long-lived daemon
// leaks (-endurance=false turns it off).
//
//	go run ./chaos/cmd/soak -duration 30m
//	go run ./chaos/cmd/soak -seed 42 -scenario kill-primary   # replay one
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/repd/repd/chaos"
	"github.com/repd/repd/harness"
)

func main() {
	duration := flag.Duration("duration", 5*time.Minute, "how long to run random schedules")
	seed := flag.Int64("seed", 0, "replay this seed (with -scenario); 0 picks random seeds")
	scenario := flag.String("scenario", "", "run only this scenario (comma-separated list allowed)")
	protocol := flag.String("protocol", "", "force protocol C or A (default: chosen by the seed)")
	long := flag.Bool("long", true, "the scenarios' long forms (partitions flapping for a minute); -long=false replays a run of go test")
	onNoQuorum := flag.String("on-no-quorum", "", "force on-no-quorum suspend-io or io-error in the quorum scenarios (default: chosen by the seed)")
	verbose := flag.Bool("v", false, "print every run's schedule")
	race := flag.Bool("race", false, "build repd with -race")
	endurance := flag.Bool("endurance", true, "run the long-lived endurance cluster alongside the scenarios")
	epoch := flag.Duration("epoch", 5*time.Minute, "endurance: check and sample every epoch")
	flag.Parse()

	scs := chaos.Scenarios
	if *scenario != "" {
		scs = nil
		for _, name := range strings.Split(*scenario, ",") {
			sc, ok := chaos.Lookup(name)
			if !ok {
				fmt.Fprintf(os.Stderr, "soak: no scenario %q; have:", name)
				for _, s := range chaos.Scenarios {
					fmt.Fprintf(os.Stderr, " %s", s.Name)
				}
				fmt.Fprintln(os.Stderr)
				os.Exit(2)
			}
			scs = append(scs, sc)
		}
	}
	ctx := context.Background()
	root, err := harness.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	bins, err := harness.Build(ctx, root, *race)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	defer bins.Remove()
	switch *onNoQuorum {
	case "", "suspend-io", "io-error":
	default:
		fmt.Fprintf(os.Stderr, "soak: -on-no-quorum %q: want suspend-io or io-error\n", *onNoQuorum)
		os.Exit(2)
	}
	switch *protocol {
	case "", "A", "C":
	default:
		fmt.Fprintf(os.Stderr, "soak: -protocol %q: want A or C\n", *protocol)
		os.Exit(2)
	}
	cfg := chaos.Config{Bins: bins, Protocol: *protocol, OnNoQuorum: *onNoQuorum, Long: *long}

	if *seed != 0 {
		failed := false
		for _, sc := range scs {
			r := chaos.Run(ctx, cfg, sc, *seed)
			fmt.Println(r.Format(true))
			failed = failed || r.Failed()
		}
		if failed {
			os.Exit(1)
		}
		return
	}

	var endRes chan *chaos.EnduranceResult
	if *endurance {
		endRes = make(chan *chaos.EnduranceResult, 1)
		es := rand.Int64N(1<<40) + 1
		fmt.Printf("# endurance cluster seed=%d epoch=%v\n", es, *epoch)
		go func() {
			endRes <- chaos.Endurance{Bins: bins, Seed: es, Duration: *duration, Epoch: min(*epoch, *duration),
				Logf: func(f string, a ...any) { fmt.Printf("# "+f+"\n", a...) }}.Run(ctx)
		}()
	}

	type agg struct{ runs, fails, faults, checked int }
	per := map[string]*agg{}
	var total agg
	var violations, errs int
	var failures []string
	start := time.Now()
	deadline := start.Add(*duration)
	lastReport := start
	var maxG, maxRSS float64
	var samples []string
	for i := 0; time.Now().Before(deadline); i++ {
		sc := scs[i%len(scs)]
		if i%len(scs) == 0 && i > 0 {
			rand.Shuffle(len(scs), func(a, b int) { scs[a], scs[b] = scs[b], scs[a] })
		}
		s := rand.Int64N(1<<40) + 1
		r := chaos.Run(ctx, cfg, sc, s)
		fmt.Println(r.Format(*verbose))
		a := per[sc.Name]
		if a == nil {
			a = &agg{}
			per[sc.Name] = a
		}
		a.runs++
		a.faults += r.Faults
		a.checked += r.WritesChecked
		total.runs++
		total.faults += r.Faults
		total.checked += r.WritesChecked
		violations += len(r.Violations)
		maxG = max(maxG, r.MaxGoroutines)
		maxRSS = max(maxRSS, r.MaxRSS)
		if r.Failed() {
			a.fails++
			total.fails++
			if r.Err != nil {
				errs++
			}
			failures = append(failures, fmt.Sprintf("%s seed=%d protocol=%s: %s", r.Scenario, r.Seed, r.Protocol, r.Replay()))
		}
		if time.Since(lastReport) > time.Minute || !time.Now().Before(deadline) {
			lastReport = time.Now()
			line := fmt.Sprintf("%6.1fmin runs=%d max go_goroutines=%.0f max RSS=%.1fMiB (this run: %.0f, %.1fMiB)",
				time.Since(start).Minutes(), total.runs, maxG, maxRSS/(1<<20), r.MaxGoroutines, r.MaxRSS/(1<<20))
			samples = append(samples, line)
			fmt.Println("# " + line)
		}
	}
	fmt.Printf("\n=== soak summary after %v ===\n", time.Since(start).Round(time.Second))
	names := make([]string, 0, len(per))
	for n := range per {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Printf("%-16s %6s %6s %8s %10s\n", "scenario", "runs", "fails", "faults", "checked")
	for _, n := range names {
		a := per[n]
		fmt.Printf("%-16s %6d %6d %8d %10d\n", n, a.runs, a.fails, a.faults, a.checked)
	}
	fmt.Printf("%-16s %6d %6d %8d %10d\n", "total", total.runs, total.fails, total.faults, total.checked)
	fmt.Printf("violations: %d   runs that could not complete: %d\n", violations, errs)
	fmt.Println("repd goroutines / RSS over time (maximum per run, sampled each minute):")
	for _, s := range samples {
		fmt.Println("  " + s)
	}
	endFailed := false
	if endRes != nil {
		r := <-endRes
		fmt.Printf("endurance cluster (3 daemons, never restarted): %d epochs, %d link faults, %d writes checked, %d violations\n",
			len(r.Samples), r.Faults, r.Checked, len(r.Violations))
		fmt.Println("  at        goroutines (alpha beta gamma)   RSS MiB (alpha beta gamma)")
		for _, s := range r.Samples {
			fmt.Printf("  %6.1fmin  %-30s  %s\n", s.At.Minutes(), fmt.Sprint(s.Goroutines), mibs(s.RSS))
		}
		if r.Err != nil || len(r.Violations) > 0 {
			endFailed = true
			fmt.Println("FAILED: endurance:", r.Err, r.Violations)
			for _, a := range r.Schedule {
				fmt.Println("    " + a.String())
			}
		}
	}
	for _, f := range failures {
		fmt.Println("FAILED:", f)
	}
	if total.fails > 0 || endFailed {
		os.Exit(1)
	}
}

func mibs(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.1f", x/(1<<20)))
	}
	return strings.Join(parts, " ")
}
