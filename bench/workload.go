package main

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The fio job files. They carry the workload only; the target's options
// (ioengine, filename or uri) go on fio's command line before the job file.
//
//go:embed jobs/*.fio
var jobFS embed.FS

// prefillJob writes the whole target once before the read workloads.
const prefillJob = "prefill.fio"

// preconditionJob writes the whole target once before every run of a
// write workload (--precondition), with the workload's block size and
// queue depth.
const preconditionJob = "precondition.fio"

// Workload is one fio job file, run against every target in turn.
type Workload struct {
	Name string // the job file's name without ".fio", and its job section
	Desc string // for the report
	// NeedsData: prefill the target before the first run, so reads hit
	// written blocks rather than holes (which a server may answer without I/O).
	NeedsData bool
	// BS and QD: the precondition pass of a write workload writes with
	// the job's block size, at this queue depth (the job's, or 32 for a
	// QD1 job: the pass only has to write every block once).
	BS string
	QD int
}

// Workloads in run order. The write-only ones come first; the read ones are
// preceded by a prefill pass on each target.
var Workloads = []Workload{
	{Name: "randwrite-4k-qd1", Desc: "4k randwrite QD1", BS: "4k", QD: 32},
	{Name: "randwrite-4k-qd32", Desc: "4k randwrite QD32", BS: "4k", QD: 32},
	{Name: "seqwrite-1m-qd8", Desc: "1M seqwrite QD8", BS: "1M", QD: 8},
	{Name: "dbsync-16k-fsync8", Desc: "16k randwrite QD1, flush every 8", BS: "16k", QD: 32},
	{Name: "randread-4k-qd32", Desc: "4k randread QD32", NeedsData: true},
	{Name: "randrw-70-30-4k-qd32", Desc: "4k randrw 70/30 QD32", NeedsData: true},
}

// selectWorkloads returns the workloads named in a comma list ("" or "all":
// every one).
func selectWorkloads(list string) ([]Workload, error) {
	if list == "" || list == "all" {
		return Workloads, nil
	}
	var out []Workload
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, w := range Workloads {
			if w.Name == name {
				out = append(out, w)
				found = true
			}
		}
		if !found {
			var known []string
			for _, w := range Workloads {
				known = append(known, w.Name)
			}
			return nil, fmt.Errorf("unknown workload %q (known: %s)", name, strings.Join(known, ", "))
		}
	}
	return out, nil
}

// writeJobs copies the embedded job files into dir, where fio reads them.
func writeJobs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ents, err := jobFS.ReadDir("jobs")
	if err != nil {
		return err
	}
	for _, e := range ents {
		b, err := jobFS.ReadFile("jobs/" + e.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// workloadDescs are the workloads' descriptions by name, for the report.
func workloadDescs() map[string]string {
	m := map[string]string{}
	for _, w := range Workloads {
		m[w.Name] = w.Desc
	}
	return m
}
