// Package fio runs fio and reads its JSON output.
package fio

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/repd/repd/bench/internal/proc"
	"github.com/repd/repd/bench/internal/procfs"
	"github.com/repd/repd/bench/internal/result"
)

// RampTime is ramp_time in the job files: fio measures after it.
const RampTime = 2 * time.Second

// Result is what the report needs from one fio run.
type Result struct {
	Read  result.DirStats `json:"read"`
	Write result.DirStats `json:"write"`
	// Flush is the job's flushes (fio's fsync=N: NBD_CMD_FLUSH over
	// ioengine=nbd); zero for a job without them.
	Flush result.FlushStats `json:"flush"`
	// CPU is fio's own CPU time from the end of ramp_time to its exit
	// (set when Job.AtRamp is).
	CPU time.Duration `json:"-"`
}

// Total is read+write IOPS and bandwidth.
func (r Result) Total() (iops, mbps float64) {
	return r.Read.IOPS + r.Write.IOPS, r.Read.MBps() + r.Write.MBps()
}

// fio's JSON output, the parts we read.
type fioJSON struct {
	Version string `json:"fio version"`
	Jobs    []struct {
		Name  string     `json:"jobname"`
		Error int        `json:"error"`
		Read  fioDirJSON `json:"read"`
		Write fioDirJSON `json:"write"`
		Sync  struct {
			IOs int64 `json:"total_ios"`
			Lat struct {
				Mean       float64            `json:"mean"`
				Percentile map[string]float64 `json:"percentile"`
			} `json:"lat_ns"`
		} `json:"sync"`
	} `json:"jobs"`
}

type fioDirJSON struct {
	IOPS    float64 `json:"iops"`
	BWBytes float64 `json:"bw_bytes"`
	IOs     int64   `json:"total_ios"`
	Clat    struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

func (d fioDirJSON) stats() result.DirStats {
	return result.DirStats{
		IOPS:    d.IOPS,
		BWBytes: d.BWBytes,
		IOs:     d.IOs,
		P50us:   percentile(d.Clat.Percentile, 50) / 1e3,
		P99us:   percentile(d.Clat.Percentile, 99) / 1e3,
	}
}

// percentile finds p in fio's percentile map, whose keys look like "99.000000".
func percentile(m map[string]float64, p float64) float64 {
	for k, v := range m {
		if f, err := strconv.ParseFloat(k, 64); err == nil && f == p {
			return v
		}
	}
	return 0
}

// Parse reads fio's --output-format=json output. Anything fio printed
// before the JSON object (warnings) is skipped.
func Parse(b []byte) (Result, error) {
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var j fioJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return Result{}, fmt.Errorf("parse fio json: %w", err)
	}
	if len(j.Jobs) == 0 {
		return Result{}, fmt.Errorf("fio json: no jobs")
	}
	// One job per run (numjobs=1, group_reporting): take the first.
	job := j.Jobs[0]
	r := Result{Read: job.Read.stats(), Write: job.Write.stats()}
	if sy := job.Sync; sy.IOs > 0 {
		r.Flush = result.FlushStats{N: sy.IOs, MeanUs: sy.Lat.Mean / 1e3, P50us: percentile(sy.Lat.Percentile, 50) / 1e3}
	}
	if job.Error != 0 {
		return r, fmt.Errorf("fio job %s: error %d (%s)", job.Name, job.Error, errnoName(job.Error))
	}
	return r, nil
}

func errnoName(n int) string {
	switch n {
	case 1:
		return "EPERM: not permitted; a Secondary refuses writes"
	case 5:
		return "EIO"
	case 28:
		return "ENOSPC"
	case 22:
		return "EINVAL"
	case 108:
		return "ESHUTDOWN"
	}
	return "errno " + strconv.Itoa(n)
}

// Job is one invocation of fio.
type Job struct {
	Args    []string // target options, before the job file
	JobFile string
	Output  string        // where fio writes its JSON
	Runtime time.Duration // BENCH_RUNTIME
	Timeout time.Duration // kill fio after this long (0: no limit but ctx)
	// AtRamp, if set, is called once ramp_time after fio starts, when its
	// measured window begins (fio's own CPU is then noted for
	// Result.CPU).
	AtRamp func()
}

// Run starts fio, waits for it and parses its JSON.
func (f Job) Run(ctx context.Context) (Result, error) {
	if f.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.Timeout)
		defer cancel()
	}
	args := append([]string{"--output-format=json", "--output=" + f.Output}, f.Args...)
	if f.JobFile != "" {
		args = append(args, f.JobFile)
	}
	cmd := exec.Command("fio", args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("BENCH_RUNTIME=%d", int(f.Runtime.Seconds())))
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	var fioAtRamp chan time.Duration
	started := func(pid int) {
		if f.AtRamp == nil {
			return
		}
		fioAtRamp = make(chan time.Duration, 1)
		time.AfterFunc(RampTime, func() {
			c := procfs.TreeCPU(pid)
			f.AtRamp()
			fioAtRamp <- c
		})
	}
	runErr := proc.Run(ctx, cmd, started)
	out, readErr := os.ReadFile(f.Output)
	var res Result
	var parseErr error
	if readErr == nil {
		res, parseErr = Parse(out)
	}
	if fioAtRamp != nil && cmd.ProcessState != nil {
		select {
		case c := <-fioAtRamp:
			// The exit status's usage includes the job processes fio
			// reaped.
			ps := cmd.ProcessState
			res.CPU = ps.UserTime() + ps.SystemTime() - c
		default: // fio ended before its ramp did
		}
	}
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("fio: %w", context.Cause(ctx))
	case parseErr != nil:
		return res, fmt.Errorf("%w%s", parseErr, proc.Tail(stderr.String()))
	case runErr != nil:
		return res, fmt.Errorf("fio: %w%s", runErr, proc.Tail(stderr.String()))
	case readErr != nil:
		return res, fmt.Errorf("fio: %w%s", readErr, proc.Tail(stderr.String()))
	}
	return res, nil
}
