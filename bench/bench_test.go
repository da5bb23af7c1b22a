package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "256MiB": 256 << 20, "512M": 512 << 20, "1G": 1 << 30, "4096": 4096} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1G", "1.5G"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}

func TestBuildPlanDefault(t *testing.T) {
	plan, err := buildPlan(flags{targets: "default", workloads: "default", links: link.Names()})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	works := map[string]int{}
	for _, ph := range plan {
		for _, tg := range ph.targets {
			got[ph.group] = append(got[ph.group], tg.Name)
		}
		works[ph.group] = len(ph.workloads)
	}
	if ph := plan[0]; ph.runs("repd-a1-zstd", "randread-4k-qd32") || !ph.runs("repd-a1-zstd", "randwrite-4k-qd32") || !ph.runs("repd-a1", "randread-4k-qd32") {
		t.Error("compression targets not limited to their workloads")
	}
	want := map[string]string{
		result.GroupLoopback: "local,nbdkit,repd,repd-c1,repd-a1,repd-c2,repd-c1-zstd,repd-a1-zstd",
		result.GroupLinks:    "repd-c1-lan,repd-a1-lan,repd-c1-metro,repd-a1-metro,repd-c1-wan,repd-a1-wan,repd-c1-lan-100mbit,repd-a1-lan-100mbit",
	}
	for g, w := range want {
		if s := strings.Join(got[g], ","); s != w {
			t.Errorf("%s: %s, want %s", g, s, w)
		}
	}
	if works[result.GroupLoopback] != len(Workloads) || works[result.GroupLinks] != 2 || len(plan) != 2 {
		t.Errorf("workloads per group: %v", works)
	}

	plan, err = buildPlan(flags{targets: "repd,repd-c1-wan,repd-c1-lan", workloads: "randwrite-4k-qd1", links: "wan"})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != 2 || plan[1].targets[0].Name != "repd-c1-wan" || len(plan[1].targets) != 1 || len(plan[1].workloads) != 1 {
		t.Errorf("explicit plan: %+v", plan)
	}
	if _, err := buildPlan(flags{targets: "nope", links: "none"}); err == nil {
		t.Error("unknown target accepted")
	}
	if _, err := buildPlan(flags{targets: "default", links: "moon"}); err == nil {
		t.Error("unknown link accepted")
	}
}

func TestMedianRounds(t *testing.T) {
	rs := []result.Result{
		{Workload: "w", Target: "a", IOPS: 30, MBps: 3},
		{Workload: "w", Target: "b", IOPS: 5},
		{Workload: "w", Target: "a", IOPS: 10, MBps: 1},
		{Workload: "w", Target: "b", IOPS: 7, Error: "fio died"},
		{Workload: "w", Target: "a", IOPS: 20, MBps: 2, MaxRSS: 9},
		{Workload: "w", Target: "b", IOPS: 6},
	}
	got := medianRounds(rs)
	if len(got) != 2 || got[0].Target != "a" || got[1].Target != "b" {
		t.Fatalf("targets %+v", got)
	}
	if a := got[0]; a.IOPS != 20 || a.MBps != 2 || !slices.Equal(a.RoundsIOPS, []float64{30, 10, 20}) || a.MaxRSS != 9 {
		t.Errorf("a: median round %+v", a)
	}
	if b := got[1]; b.Error != "fio died" || !slices.Equal(b.RoundsIOPS, []float64{5, 7, 6}) {
		t.Errorf("b: a failed round must be reported: %+v", b)
	}
	if one := medianRounds(rs[:2]); len(one) != 2 || one[0].RoundsIOPS != nil {
		t.Errorf("single rounds: %+v", one)
	}
}

// TestPrecondition runs the precondition pass of a write workload with fio
// on a sparse file: every block of the file is written (none is left a
// hole), with the workload's block size and queue depth.
func TestPrecondition(t *testing.T) {
	dir := t.TempDir()
	const size = 8 << 20
	path := filepath.Join(dir, "target.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	jobs := filepath.Join(dir, "jobs")
	if err := writeJobs(jobs); err != nil {
		t.Fatal(err)
	}
	m := &matrix{scratch: dir, jobDir: jobs, precondition: true}
	r := &running{
		t:  target.Target{Name: "file"},
		ep: &target.Endpoint{FioArgs: []string{"--ioengine=psync", "--filename=" + path}},
	}
	w := Workload{Name: "randwrite-16k", BS: "16k", QD: 4}
	if err := m.preconditionRun(context.Background(), w, r); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 < size {
		t.Errorf("after the precondition pass the file has %d bytes, %d allocated; want %d, all allocated", st.Size, st.Blocks*512, size)
	}
	b, err := os.ReadFile(filepath.Join(dir, "precondition--file.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Jobs []struct {
			Options map[string]string `json:"job options"`
			Write   struct {
				IOs int64 `json:"total_ios"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b[bytes.IndexByte(b, '{'):], &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Jobs) != 1 {
		t.Fatalf("fio ran %d jobs, want 1", len(out.Jobs))
	}
	j := out.Jobs[0]
	if j.Write.IOs != size/(16<<10) {
		t.Errorf("the pass wrote %d blocks, want %d of 16 KiB", j.Write.IOs, size/(16<<10))
	}
	// fio lists the job's own options; bs and iodepth came from its
	// command line, so they apply to every job and show in the global
	// options instead.
	var g struct {
		Global map[string]string `json:"global options"`
	}
	if err := json.Unmarshal(b[bytes.IndexByte(b, '{'):], &g); err != nil {
		t.Fatal(err)
	}
	if g.Global["bs"] != "16k" || g.Global["iodepth"] != "4" {
		t.Errorf("fio's global options %v: want bs 16k and iodepth 4", g.Global)
	}
}

// TestPreconditions: every write workload, and no read workload, runs
// after a precondition pass; not on the targets behind a shaped link, nor
// with --precondition=false.
func TestPreconditions(t *testing.T) {
	byName := map[string]target.Target{}
	for _, tg := range target.All() {
		byName[tg.Name] = tg
	}
	on, off := &matrix{precondition: true}, &matrix{}
	for _, w := range Workloads {
		write := !w.NeedsData
		if write && (w.BS == "" || w.QD < 1) {
			t.Errorf("write workload %s has no precondition block size or queue depth", w.Name)
		}
		if got := on.preconditions(w, byName["repd-c1"]); got != write {
			t.Errorf("%s on repd-c1: precondition %v, want %v", w.Name, got, write)
		}
		if on.preconditions(w, byName["repd-c1-wan"]) || on.preconditions(w, byName["repd-a1-lan"]) {
			t.Errorf("%s: preconditioned through a shaped link", w.Name)
		}
		if off.preconditions(w, byName["repd"]) {
			t.Errorf("%s: preconditioned with --precondition=false", w.Name)
		}
	}
}
