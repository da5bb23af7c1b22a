package fio

import (
	"strings"
	"testing"

	"github.com/repd/repd/bench/internal/result"
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
        "clat_ns" : { "percentile" : { "50.000000" : 150000, "99.000000" : 990500 } } },
      "sync" : { "total_ios" : 375, "lat_ns" : { "min" : 194989, "mean" : 266691.5, "N" : 375,
        "percentile" : { "50.000000" : 232448, "99.000000" : 684032 } } }
  } ]
}`
	r, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if r.Read.IOPS != 700.5 || r.Read.P50us != 120 || r.Read.P99us != 850 || r.Read.IOs != 7005 {
		t.Errorf("read = %+v", r.Read)
	}
	if r.Write.P99us != 990.5 || r.Write.MBps() != 1.229824 {
		t.Errorf("write = %+v", r.Write)
	}
	if r.Flush != (result.FlushStats{N: 375, MeanUs: 266.6915, P50us: 232.448}) {
		t.Errorf("flush = %+v", r.Flush)
	}
	iops, _ := r.Total()
	if iops != 1000.75 {
		t.Errorf("total iops = %v", iops)
	}
}

func TestParseFioJobError(t *testing.T) {
	in := `{"jobs":[{"jobname":"w","error":1,"read":{},"write":{}}]}`
	_, err := Parse([]byte(in))
	if err == nil || !strings.Contains(err.Error(), "EPERM") {
		t.Fatalf("err = %v, want EPERM", err)
	}
}
