package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/result"
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
