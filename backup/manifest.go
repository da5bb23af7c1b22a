package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/repd/repd/internal/durable"
)

// ManifestName is the manifest's file name in a backup directory.
const ManifestName = "manifest.json"

// manifestVersion is the manifest format written and understood.
const manifestVersion = 1

// Kinds of point.
const (
	KindFull = "full"
	KindInc  = "inc"
)

// Manifest records a backup chain.
type Manifest struct {
	Version     int     `json:"version"`
	VirtualSize int64   `json:"virtual_size"`
	ClusterSize int     `json:"cluster_size"`
	Points      []Point `json:"points"`
}

// Point is one restorable point in time.
type Point struct {
	// File is the qcow2 file, relative to the directory.
	File string `json:"file"`
	// Kind is KindFull (no backing file) or KindInc.
	Kind string `json:"kind"`
	// Backing is the file of the point before (KindInc).
	Backing string `json:"backing,omitempty"`
	// Snapshot is the snapshot this point copies; the next incremental
	// reads its changes from the dirty bitmap named after it.
	Snapshot string `json:"snapshot"`
	// BaseSnapshot is the snapshot whose dirty bitmap gave an incremental
	// its changes (the previous point's).
	BaseSnapshot string `json:"base_snapshot,omitempty"`
	// Time is when the backup started.
	Time time.Time `json:"time"`
	// Source is the export that was read.
	Source string `json:"source,omitempty"`
	// BytesRead is what was read from the export.
	BytesRead int64 `json:"bytes_read"`
	// DataBytes is what the file stores (clusters × cluster size).
	DataBytes int64 `json:"data_bytes"`
	// FileBytes is the file's size.
	FileBytes int64 `json:"file_bytes"`
	// SHA256 is the file's checksum, hex.
	SHA256 string `json:"sha256"`
	// Merged lists the files retention merged into this full point.
	Merged []string `json:"merged,omitempty"`
}

// Name is the point's file name without ".qcow2".
func (p Point) Name() string { return strings.TrimSuffix(p.File, ".qcow2") }

// validate checks the manifest's invariants.
func (m *Manifest) validate() error {
	if m.Version != manifestVersion {
		return fmt.Errorf("manifest version %d: this repctl understands version %d", m.Version, manifestVersion)
	}
	if len(m.Points) == 0 {
		return nil
	}
	if m.VirtualSize <= 0 || m.ClusterSize <= 0 {
		return fmt.Errorf("manifest: virtual_size %d, cluster_size %d", m.VirtualSize, m.ClusterSize)
	}
	seen := map[string]bool{}
	for i, p := range m.Points {
		if p.File == "" || p.File != filepath.Base(p.File) || !strings.HasSuffix(p.File, ".qcow2") || seen[p.File] {
			return fmt.Errorf("manifest point %d: file %q is not a distinct *.qcow2 name in the directory", i, p.File)
		}
		seen[p.File] = true
		switch {
		case i == 0 && p.Kind != KindFull:
			return fmt.Errorf("manifest point 0 (%s) is %q: the oldest point must be full", p.File, p.Kind)
		case p.Kind == KindFull && p.Backing != "":
			return fmt.Errorf("manifest point %s: full with a backing file", p.File)
		case p.Kind == KindInc && p.Backing != m.Points[i-1].File:
			return fmt.Errorf("manifest point %s: backing %q, but the point before is %s", p.File, p.Backing, m.Points[i-1].File)
		case p.Kind != KindFull && p.Kind != KindInc:
			return fmt.Errorf("manifest point %s: kind %q", p.File, p.Kind)
		}
	}
	return nil
}

// readManifest reads dir's manifest; a missing one is an empty chain.
func readManifest(dir string) (Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, os.ErrNotExist) {
		return Manifest{Version: manifestVersion}, nil
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("backup manifest: %w", err)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("backup manifest %s: %w", filepath.Join(dir, ManifestName), err)
	}
	if err := m.validate(); err != nil {
		return Manifest{}, fmt.Errorf("backup manifest %s: %w", filepath.Join(dir, ManifestName), err)
	}
	return m, nil
}

// writeManifest replaces dir's manifest atomically and durably.
func writeManifest(dir string, m Manifest) error {
	if err := m.validate(); err != nil {
		return fmt.Errorf("backup manifest (not written): %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	tmp := filepath.Join(dir, ManifestName+".tmp")
	if err := writeFileSync(tmp, b); err != nil {
		return fmt.Errorf("backup manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, ManifestName)); err != nil {
		return fmt.Errorf("backup manifest: %w", err)
	}
	return durable.SyncDir(dir)
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
