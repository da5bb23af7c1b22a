package main

import (
	"strings"
	"testing"

	"github.com/repd/repd/config"
)

func TestParseFio(t *testing.T) {
	// The shape of fio 3.33's --output-format=json, trimmed; a warning line
	// before the object, as fio sometimes prints.
	in := `fio: some warning
{
  "fio version" : "fio-3.33",
  "jobs" : [ {
      "jobname" : "randrw-70-30-4k-qd32", "error" : 0,
      "read" : { "iops" : 700.5, "bw_bytes" : 2869248, "total_ios" : 7005,
        "clat_ns" : { "percentile" : { "1.000000" : 1000, "50.000000" : 120000, "99.000000" : 850000 } } },
      "write" : { "iops" : 300.25, "bw_bytes" : 1229824, "total_ios" : 3002,
        "clat_ns" : { "percentile" : { "50.000000" : 150000, "99.000000" : 990500 } } }
  } ]
}`
	r, err := parseFio([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if r.Read.IOPS != 700.5 || r.Read.P50us != 120 || r.Read.P99us != 850 || r.Read.IOs != 7005 {
		t.Errorf("read = %+v", r.Read)
	}
	if r.Write.P99us != 990.5 || r.Write.MBps() != 1.229824 {
		t.Errorf("write = %+v", r.Write)
	}
	iops, _ := r.Total()
	if iops != 1000.75 {
		t.Errorf("total iops = %v", iops)
	}
	res := Result{Read: &r.Read, Write: &r.Write}
	if p50, _ := latencies(res); p50 != "r 120 / w 150" {
		t.Errorf("latencies = %q", p50)
	}
}

func TestParseFioJobError(t *testing.T) {
	in := `{"jobs":[{"jobname":"w","error":1,"read":{},"write":{}}]}`
	_, err := parseFio([]byte(in))
	if err == nil || !strings.Contains(err.Error(), "EPERM") {
		t.Fatalf("err = %v, want EPERM", err)
	}
}

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

func TestChecks(t *testing.T) {
	s := &Summary{
		Targets: []TargetInfo{{Name: "repd", MaxRSS: 50 << 20}, {Name: "nbdkit"}},
		Results: []Result{
			{Workload: "randwrite-4k-qd32", Target: "repd", IOPS: 110},
			{Workload: "randwrite-4k-qd32", Target: "nbdkit", IOPS: 100},
			{Workload: "seqwrite-1m-qd8", Target: "repd", IOPS: 90},
			{Workload: "seqwrite-1m-qd8", Target: "nbdkit", IOPS: 100},
			{Workload: "randread-4k-qd32", Target: "nbdkit", IOPS: 100},
		},
	}
	got := map[string]string{}
	for _, c := range evalChecks(s) {
		got[c.Name] = c.Status
	}
	want := map[string]string{
		"repd/nbdkit IOPS on randwrite-4k-qd32": "PASS",
		"repd/nbdkit IOPS on seqwrite-1m-qd8":   "FAIL",
		"repd/nbdkit IOPS on randread-4k-qd32":  "SKIP",
		"repd max RSS":                          "PASS",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
}

func TestRepdTemplate(t *testing.T) {
	d := &RepdData{Resource: "bench", Size: 1 << 30, Protocol: "C", Nodes: []RepdNode{
		{Name: "alpha", Disk: "/d/a.img", Meta: "/d/a.meta", NBD: "unix:/d/a.sock", Peer: "127.0.0.1:1", Admin: "/d/a.admin.sock"},
		{Name: "bravo", Disk: "/d/b.img", Meta: "/d/b.meta", NBD: "127.0.0.1:2", Peer: "127.0.0.1:3", Admin: "/d/b.admin.sock"},
	}, Extra: map[string]string{"on-congestion": `"block"`}}
	out, err := renderRepdConfig(repdTemplate, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`size = 1073741824`, `on-congestion = "block"`, `nbd   = "unix:/d/a.sock"`, `name  = "bravo"`} {
		if !strings.Contains(out, s) {
			t.Errorf("resource file lacks %q:\n%s", s, out)
		}
	}
	// It must be a resource file repd accepts.
	if _, err := config.Parse([]byte(out)); err != nil {
		t.Errorf("config.Parse: %v\n%s", err, out)
	}
}
