package render

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/proc"
	"github.com/repd/repd/bench/internal/result"
)

// Charts are drawn by gnuplot (Debian's gnuplot-nox) from data files the
// harness writes next to the report: charts/*.dat and charts/*.gp, so a
// chart can be redrawn or restyled by hand. Without gnuplot the report and
// JSON are still written and the report says the charts were skipped.

// point is one bar or one point of a line.
type point struct {
	X     int // position on the x axis
	Label string
	Value float64
}

// series is one line of a chart.
type series struct {
	Title  string
	Points []point
}

// linkOrder are the x positions of the link charts: loopback, then the
// delay-only link profiles by RTT (the bandwidth-capped one is in the bars).
func linkOrder(s *result.Summary) []link.Profile {
	out := []link.Profile{{Name: ""}}
	seen := map[string]bool{}
	for _, t := range s.Targets {
		if t.Meta.Link != "" && !seen[t.Meta.Link] {
			if l, ok := link.Lookup(t.Meta.Link); ok && l.Bandwidth == 0 {
				seen[l.Name] = true
				out = append(out, l)
			}
		}
	}
	// Sort by RTT (few entries).
	for i := 1; i < len(out); i++ {
		for j := i; j > 1 && out[j].RTT < out[j-1].RTT; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func linkLabel(l link.Profile) string {
	if l.Name == "" {
		return "loopback"
	}
	return fmt.Sprintf("%s +%gms", l.Name, l.RTTms())
}

// linkSeries is a metric of one workload for protocol proto with one peer,
// across the links: repd-c1 on loopback, repd-c1-lan, ... Missing points
// are left out.
func linkSeries(s *result.Summary, workload, proto string, metric func(result.Result) float64) series {
	se := series{Title: "protocol " + proto}
	for x, l := range linkOrder(s) {
		name := "repd-" + strings.ToLower(proto) + "1"
		if l.Name != "" {
			name += "-" + l.Name
		}
		for _, r := range s.Results {
			if r.Target == name && r.Workload == workload && r.Error == "" {
				se.Points = append(se.Points, point{x, linkLabel(l), metric(r)})
			}
		}
	}
	return se
}

// measuredRTTSeries is each link's measured round trip in ms (no point for
// loopback).
func measuredRTTSeries(s *result.Summary) series {
	se := series{Title: "measured link RTT"}
	for x, l := range linkOrder(s) {
		for _, li := range s.Links {
			if l.Name != "" && li.Name == l.Name && li.Error == "" {
				se.Points = append(se.Points, point{x, linkLabel(l), li.MeasuredRTTms})
			}
		}
	}
	return se
}

// barSeries is a metric of one workload on every target that ran it.
func barSeries(s *result.Summary, workload string, metric func(result.Result) float64) series {
	se := series{Title: workload}
	for _, r := range s.Results {
		if r.Workload == workload && r.Error == "" {
			se.Points = append(se.Points, point{len(se.Points), r.Target, metric(r)})
		}
	}
	return se
}

func writeP50ms(r result.Result) float64 {
	if r.Write != nil {
		return r.Write.P50us / 1e3
	}
	return 0
}

func writeP99ms(r result.Result) float64 {
	if r.Write != nil {
		return r.Write.P99us / 1e3
	}
	return 0
}

func iops(r result.Result) float64 { return r.IOPS }
func mbps(r result.Result) float64 { return r.MBps }

// standaloneValue is the standalone target's metric on a workload, 0 if none.
func standaloneValue(s *result.Summary, workload string, metric func(result.Result) float64) float64 {
	for _, r := range s.Results {
		if r.Target == result.Standalone && r.Workload == workload && r.Error == "" {
			return metric(r)
		}
	}
	return 0
}

// datFile renders series as a gnuplot data file: one block per series
// (index i), rows "x-position "label" value".
func datFile(ss []series) string {
	var b strings.Builder
	for i, se := range ss {
		if i > 0 {
			b.WriteString("\n\n")
		}
		fmt.Fprintf(&b, "# %s\n", se.Title)
		for _, p := range se.Points {
			fmt.Fprintf(&b, "%d %q %g\n", p.X, p.Label, p.Value)
		}
	}
	return b.String()
}

// chart is one PNG: its data and the gnuplot script drawing it.
type chart struct {
	name   string // file name without extension
	data   []series
	script string // plot commands; the data file is "NAME.dat"
}

// charts are the charts this run's results can fill.
func charts(s *result.Summary) []chart {
	var out []chart
	ref := func(w string, metric func(result.Result) float64, what string) string {
		if v := standaloneValue(s, w, metric); v > 0 {
			return fmt.Sprintf(", %g with lines dashtype 2 lc rgb 'gray40' title 'standalone %s'", v, what)
		}
		return ""
	}
	if w := "randwrite-4k-qd1"; len(linkSeries(s, w, "C", writeP50ms).Points) > 1 {
		ss := []series{
			linkSeries(s, w, "C", writeP50ms), linkSeries(s, w, "C", writeP99ms),
			linkSeries(s, w, "A", writeP50ms), linkSeries(s, w, "A", writeP99ms),
			measuredRTTSeries(s),
		}
		out = append(out, chart{name: "latency-vs-link", data: ss, script: `
set title "4k random write, QD1: completion latency vs added link RTT (1 peer)"
set ylabel "latency (ms, log scale)"
set logscale y
set key top left
plot "latency-vs-link.dat" index 0 using 1:3:xtic(2) with linespoints lw 2 pt 7 lc rgb '#c0392b' title 'C p50', \
     "" index 1 using 1:3 with linespoints lw 1 pt 6 dt 3 lc rgb '#c0392b' title 'C p99', \
     "" index 2 using 1:3 with linespoints lw 2 pt 5 lc rgb '#2471a3' title 'A p50', \
     "" index 3 using 1:3 with linespoints lw 1 pt 4 dt 3 lc rgb '#2471a3' title 'A p99', \
     "" index 4 using 1:3 with points pt 2 ps 1.5 lc rgb 'black' title 'link RTT measured through the proxy'` + ref(w, writeP50ms, "p50") + "\n"})
	}
	if w := "randwrite-4k-qd32"; len(linkSeries(s, w, "C", iops).Points) > 1 {
		ss := []series{linkSeries(s, w, "C", iops), linkSeries(s, w, "A", iops)}
		out = append(out, chart{name: "iops-vs-link", data: ss, script: `
set title "4k random write, QD32: IOPS vs added link RTT (1 peer)"
set ylabel "IOPS"
set yrange [0:*]
set key top right
plot "iops-vs-link.dat" index 0 using 1:3:xtic(2) with linespoints lw 2 pt 7 lc rgb '#c0392b' title 'protocol C', \
     "" index 1 using 1:3 with linespoints lw 2 pt 5 lc rgb '#2471a3' title 'protocol A'` + ref(w, iops, "") + "\n"})
	}
	for _, b := range []struct {
		name, workload, ylabel string
		metric                 func(result.Result) float64
	}{
		{"iops-bars", "randwrite-4k-qd32", "IOPS", iops},
		{"seqwrite-bars", "seqwrite-1m-qd8", "MB/s", mbps},
		{"dbsync-bars", "dbsync-16k-fsync8", "IOPS", iops},
	} {
		se := barSeries(s, b.workload, b.metric)
		if len(se.Points) == 0 {
			continue
		}
		out = append(out, chart{name: b.name, data: []series{se}, script: fmt.Sprintf(`
set title "%s: %s per target"
set ylabel "%s"
set yrange [0:*]
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by -40 left
set bmargin 7
set rmargin 10
plot "%s.dat" index 0 using 1:3:xtic(2) with boxes lc rgb '#2e86c1' notitle, \
     "" index 0 using 1:3:(sprintf("%%.0f", $3)) with labels offset 0,0.7 font ",8" notitle
`, b.workload, b.ylabel, b.ylabel, b.name)})
	}
	return out
}

const chartPreamble = `set terminal pngcairo size 960,540 font "sans,10"
set grid ytics
set xtics nomirror
`

// DrawCharts writes the charts' data and scripts under out/charts and runs
// gnuplot on each. It returns the PNGs' paths relative to out, and a note
// for the report when charts were skipped or failed.
func DrawCharts(ctx context.Context, s *result.Summary, out string) ([]string, string) {
	cs := charts(s)
	if len(cs) == 0 {
		return nil, ""
	}
	dir := filepath.Join(out, "charts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "Charts skipped: " + err.Error()
	}
	for _, c := range cs {
		os.WriteFile(filepath.Join(dir, c.name+".dat"), []byte(datFile(c.data)), 0o644)
		script := chartPreamble + fmt.Sprintf("set output %q\n", c.name+".png") + c.script
		os.WriteFile(filepath.Join(dir, c.name+".gp"), []byte(script), 0o644)
	}
	gp, err := exec.LookPath("gnuplot")
	if err != nil {
		return nil, "Charts skipped: gnuplot is not installed (Debian: apt-get install gnuplot-nox; or scripts/deps.sh). " +
			"Their data and scripts are in charts/: run `gnuplot NAME.gp` there."
	}
	var pngs, failed []string
	for _, c := range cs {
		gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cmd := exec.Command(gp, c.name+".gp")
		cmd.Dir = dir
		var msg bytes.Buffer
		cmd.Stderr = &msg
		err := proc.Run(gctx, cmd)
		cancel()
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s (%v%s)", c.name, err, proc.Tail(msg.String())))
			continue
		}
		pngs = append(pngs, filepath.Join("charts", c.name+".png"))
	}
	note := ""
	if len(failed) > 0 {
		note = "gnuplot failed on: " + strings.Join(failed, "; ")
	}
	return pngs, note
}
