package admin

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode"

	"github.com/repd/repd/api"
)

// Bounds of a backup report's fields.
const (
	maxBackupDir      = 4096 // PATH_MAX
	maxBackupSnapshot = 64   // a snapshot name's bound
	maxBackupError    = 1024
	// maxBackupSkew is how far in the future of the node's clock a
	// report's time may be: repctl runs on the node's host (the admin
	// socket is a unix socket), so only a confused clock is further off.
	maxBackupSkew = 5 * time.Minute
	// maxBackupDuration bounds a report's duration: a year.
	maxBackupDuration = 365 * 24 * 3600
)

// CheckBackupReport returns an error naming what is wrong with r, a report
// that arrived at now, or nil. A success names its kind (full or inc), its
// sizes and its snapshot; a failure carries its error; both name the
// backup directory and a time that is not in the future.
func CheckBackupReport(r api.BackupReport, now time.Time) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	switch {
	case r.Time.IsZero():
		bad("time: missing (when the backup finished, RFC 3339)")
	case r.Time.Year() < 2000:
		bad("time %s: before the year 2000", r.Time.Format(time.RFC3339))
	case r.Time.After(now.Add(maxBackupSkew)):
		bad("time %s: in the future of this node's clock (%s)", r.Time.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	failed := r.Error != ""
	switch {
	case r.Kind == api.BackupFull || r.Kind == api.BackupInc:
	case r.Kind == "" && failed:
	case r.Kind == "":
		bad("kind: missing: %q or %q (or error, for a failed backup)", api.BackupFull, api.BackupInc)
	default:
		bad("kind %.20q: want %q or %q", r.Kind, api.BackupFull, api.BackupInc)
	}
	if r.BytesRead < 0 {
		bad("bytes_read %d: negative", r.BytesRead)
	}
	if r.FileBytes < 0 {
		bad("file_bytes %d: negative", r.FileBytes)
	}
	if r.Duration < 0 || r.Duration > maxBackupDuration || math.IsNaN(r.Duration) {
		bad("duration %g: want seconds, 0 to %d", r.Duration, maxBackupDuration)
	}
	if r.Dir == "" {
		bad("dir: missing (the backup directory)")
	} else if !strings.HasPrefix(r.Dir, "/") {
		bad("dir %.40q: not an absolute path", r.Dir)
	}
	if r.Snapshot == "" && !failed {
		bad("snapshot: missing (the snapshot the backup read)")
	}
	errs = append(errs,
		checkText("dir", r.Dir, maxBackupDir),
		checkText("snapshot", r.Snapshot, maxBackupSnapshot),
		checkText("error", r.Error, maxBackupError))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bad backup report: %w", err)
	}
	return nil
}

// checkText refuses a field longer than max bytes or with
// control characters (it is shown in status and logs). Bytes that are not
// UTF-8 arrive as U+FFFD: encoding/json replaces them.
func checkText(field, s string, max int) error {
	switch {
	case len(s) > max:
		return fmt.Errorf("%s: %d bytes, at most %d", field, len(s), max)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("%s %.40q: has control characters", field, s)
	}
	return nil
}
