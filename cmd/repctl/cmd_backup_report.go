package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/repd/repd/api"
	"github.com/repd/repd/backup"
	"github.com/repd/repd/internal/durable"
)

// maxReportError bounds the error a failure report carries (the node
// refuses more than 1 KiB).
const maxReportError = 1000

// tell reports a backup's outcome: to the node (o.report) and into the
// textfile (o.metricsFile). A report that cannot be made is a warning: the
// backup itself is what it is.
func (o backupOpts) tell(ctx context.Context, p backup.Point, snapshot string, start time.Time, berr error) {
	if o.report == nil && o.metricsFile == "" {
		return
	}
	end := o.now()
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		dir = o.dir
	}
	r := api.BackupReport{Time: end, Dir: dir, Snapshot: snapshot, Duration: math.Max(0, end.Sub(start).Seconds())}
	if berr != nil {
		r.Error = reportText(berr.Error(), maxReportError)
		if errors.Is(berr, context.Canceled) || ctx.Err() != nil {
			r.Error = reportText("interrupted: "+berr.Error(), maxReportError)
		}
	} else {
		r.Kind, r.BytesRead, r.FileBytes, r.Snapshot = p.Kind, p.BytesRead, p.FileBytes, p.Snapshot
	}
	if o.report != nil {
		defer func(t0 time.Time) { o.log.Debug("outcome reported to the node", "seconds", time.Since(t0).Seconds()) }(time.Now())
		// The backup's context may be the one that was cancelled.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := o.report(rctx, r)
		cancel()
		if err != nil {
			fmt.Fprintf(o.out, "warning: the backup's outcome was not reported to the node (its backup metrics do not show it): %v\n", err)
		}
	}
	if o.metricsFile != "" {
		if err := writeMetricsFile(o.metricsFile, r); err != nil {
			fmt.Fprintf(o.out, "warning: --metrics-file: %v\n", err)
		}
	}
}

// reportText makes s fit a report: control characters (newlines from a
// wrapped tool's output) become spaces, and it is cut to at most max bytes
// on a character boundary.
func reportText(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) <= max {
		return s
	}
	s = s[:max-3]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// The textfile's metrics: the daemon's names, labelled with the backup
// directory so that several backups (repd-backup@r0, @r1) on one host do
// not collide in node_exporter.
var textfileMetrics = []struct{ name, typ, help string }{
	{"repd_backup_last_success_timestamp_seconds", "gauge", "When the last successful backup finished (Unix time)."},
	{"repd_backup_last_size_bytes", "gauge", "Size of the qcow2 file the last successful backup wrote."},
	{"repd_backup_last_read_bytes", "gauge", "Bytes the last successful backup read from its snapshot."},
	{"repd_backup_last_duration_seconds", "gauge", "How long the last successful backup took."},
	{"repd_backup_last_full", "gauge", "1 if the last successful backup was full, 0 if incremental."},
	{"repd_backups_total", "counter", "Successful backups into this directory written down in this file."},
	{"repd_backup_failures_total", "counter", "Failed backups into this directory written down in this file."},
}

// writeMetricsFile updates the node_exporter textfile path with r: the
// last-success gauges on a success, and the counts, carried over from the
// file as it was (a file that does not parse starts them again at 0, as a
// restarted exporter's counters do). The file is replaced atomically (a
// temporary file in its directory, fsynced, renamed) so the collector
// never reads half of it.
func writeMetricsFile(path string, r api.BackupReport) error {
	prev := readMetricsFile(path)
	v := map[string]float64{}
	for _, m := range textfileMetrics {
		if x, ok := prev[m.name]; ok {
			v[m.name] = x
		}
	}
	v["repd_backups_total"] += 0 // the counts are always written: 0 until counted
	v["repd_backup_failures_total"] += 0
	if r.Error != "" {
		v["repd_backup_failures_total"]++
	} else {
		v["repd_backups_total"]++
		v["repd_backup_last_success_timestamp_seconds"] = float64(r.Time.UnixNano()) / 1e9
		v["repd_backup_last_size_bytes"] = float64(r.FileBytes)
		v["repd_backup_last_read_bytes"] = float64(r.BytesRead)
		v["repd_backup_last_duration_seconds"] = r.Duration
		v["repd_backup_last_full"] = 0
		if r.Kind == api.BackupFull {
			v["repd_backup_last_full"] = 1
		}
	}
	var b bytes.Buffer
	label := `{dir="` + escapeLabel(r.Dir) + `"}`
	for _, m := range textfileMetrics {
		x, ok := v[m.name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s%s %s\n", m.name, m.help, m.name, m.typ, m.name, label, strconv.FormatFloat(x, 'g', -1, 64))
	}
	return durable.ReplaceFile(path, b.Bytes(), 0o644)
}

// readMetricsFile reads the values of a textfile this command wrote:
// metric name → value; nothing for a missing or foreign file.
func readMetricsFile(path string) map[string]float64 {
	out := map[string]float64{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		if x, err := strconv.ParseFloat(line[i+1:], 64); err == nil && !math.IsNaN(x) && !math.IsInf(x, 0) {
			out[name] = x
		}
	}
	return out
}

// escapeLabel escapes a Prometheus label value.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
