package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/durable"
	"github.com/repd/repd/replica"
)

// backupRecordVersion is the version of the backup record file's JSON.
const backupRecordVersion = 1

// backupRecord keeps the node's backup record: the last successful backup
// repctl backup reported and the counts, in a small JSON file beside the
// meta file (meta + ".backup.json"), replaced atomically on every report
// (durable.ReplaceFile: a temporary file, fsynced, renamed over the old
// one, the directory fsynced). A lost or unreadable file costs only the record (the
// backup-age alert fires until the next backup), never the device.
type backupRecord struct {
	path string
	mu   sync.Mutex
	st   api.BackupStatus
}

// backupRecordFile is the record file's content.
type backupRecordFile struct {
	Version int `json:"version"`
	api.BackupStatus
}

// backupRecordPath is where the record of a node with meta file meta lives.
func backupRecordPath(meta string) string { return meta + ".backup.json" }

// openBackupRecord reads the record at path; a missing file is an empty
// record. An unreadable one is reported with the empty record, which the
// next report replaces.
func openBackupRecord(path string) (*backupRecord, error) {
	r := &backupRecord{path: path}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return r, nil
	}
	if err != nil {
		return r, fmt.Errorf("backup record: %w", err)
	}
	var f backupRecordFile
	if err := json.Unmarshal(b, &f); err != nil {
		return r, fmt.Errorf("backup record %s: %w (starting with an empty record; the next backup rewrites it)", path, err)
	}
	if f.Version != backupRecordVersion {
		return r, fmt.Errorf("backup record %s: version %d, this repd reads %d (starting with an empty record)", path, f.Version, backupRecordVersion)
	}
	r.st = f.BackupStatus
	return r, nil
}

// Status returns a copy of the record.
func (r *backupRecord) Status() *api.BackupStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	if st.Last != nil {
		l := *st.Last
		st.Last = &l
	}
	if st.LastFailure != nil {
		l := *st.LastFailure
		st.LastFailure = &l
	}
	return &st
}

// Record adds a report (checked by the admin API) and returns once the
// record is durable; the record in memory changes only then.
func (r *backupRecord) Record(rep api.BackupReport) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	if rep.Error == "" {
		st.Backups++
		st.Last = &rep
	} else {
		st.Failures++
		st.LastFailure = &rep
	}
	b, err := json.MarshalIndent(backupRecordFile{Version: backupRecordVersion, BackupStatus: st}, "", "  ")
	if err != nil {
		return err
	}
	if err := durable.ReplaceFile(r.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("backup record: %w", err)
	}
	r.st = st
	return nil
}

// recordingNode is the node the daemon serves: the engine, with the backup
// record in its status and the admin API's RecordBackup.
type recordingNode struct {
	*replica.Node
	backups *backupRecord
	log     *slog.Logger
	publish func(api.Event) // the events stream
}

var _ admin.BackupRecorder = recordingNode{}

func (n recordingNode) Status() api.Status {
	s := n.Node.Status()
	s.Backup = n.backups.Status()
	return s
}

func (n recordingNode) RecordBackup(r api.BackupReport) error {
	if err := n.backups.Record(r); err != nil {
		n.log.Error("backup report not recorded", "err", err)
		return err
	}
	e := api.Event{Time: r.Time, Kind: "backup", Snapshot: r.Snapshot}
	if r.Error != "" {
		n.log.Warn("backup failed (reported by repctl)", "dir", r.Dir, "snapshot", r.Snapshot, "err", r.Error)
		e.New, e.Message = "failed", fmt.Sprintf("backup into %s failed: %s", r.Dir, r.Error)
	} else {
		n.log.Info("backup done (reported by repctl)", "kind", r.Kind, "dir", r.Dir, "snapshot", r.Snapshot,
			"bytes_read", r.BytesRead, "file_bytes", r.FileBytes, "seconds", r.Duration)
		e.New, e.Message = r.Kind, fmt.Sprintf("%s backup into %s: read %d bytes, wrote a %d-byte file in %.1f s", r.Kind, r.Dir, r.BytesRead, r.FileBytes, r.Duration)
	}
	if n.publish != nil {
		n.publish(e)
	}
	return nil
}
