package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/repd/repd/backup/qcow2"
	"github.com/repd/repd/internal/durable"
)

// Options configure a Repo.
type Options struct {
	// ClusterSize of new chains (default 64 KiB); a chain keeps the size
	// its full backup was made with.
	ClusterSize int
	// Logger receives what the package does (default: discarded).
	Logger *slog.Logger
	// Progress, if set, is called as work advances (at most once per
	// window of a few MiB).
	Progress func(Progress)
	// Now is the clock that names points (default time.Now).
	Now func() time.Time
}

// Progress reports how far an operation is.
type Progress struct {
	Phase string // "scan", "copy", "checksum", "merge", "restore", "verify"
	File  string // the file being written or checked
	Done  int64  // bytes done in this phase
	Total int64  // bytes this phase will do (0: not known yet)
}

// Repo is a backup directory, locked for this process until Close.
type Repo struct {
	dir  string
	lock *os.File
	m    Manifest
	o    Options
	log  *slog.Logger
}

// Open opens (creating it if needed) the backup directory dir and takes its
// lock. Leftovers of an interrupted run (*.partial) are removed.
func Open(dir string, o Options) (*Repo, error) {
	if o.ClusterSize == 0 {
		o.ClusterSize = qcow2.DefaultClusterSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("backup directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("backup directory %s: %w", dir, err)
	}
	if err := durable.Lock(lock); err != nil {
		lock.Close()
		if errors.Is(err, durable.ErrLocked) {
			return nil, fmt.Errorf("backup directory %s is in use by another backup, restore or retention run (its .lock is held); wait for it to finish", dir)
		}
		return nil, fmt.Errorf("lock backup directory %s: %w", dir, err)
	}
	m, err := readManifest(dir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	r := &Repo{dir: dir, lock: lock, m: m, o: o, log: log}
	r.tidy()
	return r, nil
}

// tidy removes what an interrupted run left (*.partial, a manifest.json.tmp)
// and logs qcow2 files the manifest does not name.
func (r *Repo) tidy() {
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return
	}
	named := map[string]bool{}
	for _, p := range r.m.Points {
		named[p.File] = true
	}
	for _, e := range ents {
		n := e.Name()
		switch {
		case strings.HasSuffix(n, ".partial") || n == ManifestName+".tmp":
			r.log.Info("backup: removing the leftover of an interrupted run", "file", n)
			os.Remove(filepath.Join(r.dir, n))
		case strings.HasSuffix(n, ".qcow2") && !named[n]:
			r.log.Warn("backup: file not in the manifest (left by an interrupted run, or put there by hand); it is not part of any point", "file", n)
		}
	}
}

// Close releases the directory.
func (r *Repo) Close() error {
	if r.lock == nil {
		return nil
	}
	err := r.lock.Close()
	r.lock = nil
	return err
}

// Dir is the directory.
func (r *Repo) Dir() string { return r.dir }

// Manifest returns a copy of the chain's manifest.
func (r *Repo) Manifest() Manifest {
	m := r.m
	m.Points = append([]Point(nil), r.m.Points...)
	return m
}

// Last is the newest point.
func (r *Repo) Last() (Point, bool) {
	if len(r.m.Points) == 0 {
		return Point{}, false
	}
	return r.m.Points[len(r.m.Points)-1], true
}

// Point finds a point by its file name, its name without .qcow2, the time
// prefix of its name, its snapshot name, or "latest".
func (r *Repo) Point(name string) (Point, error) {
	if len(r.m.Points) == 0 {
		return Point{}, fmt.Errorf("no backups in %s", r.dir)
	}
	if name == "" || name == "latest" {
		return r.m.Points[len(r.m.Points)-1], nil
	}
	var found []Point
	for _, p := range r.m.Points {
		if p.File == name || p.Name() == name || p.Snapshot == name || strings.HasPrefix(p.File, name+"-") {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		var names []string
		for _, p := range r.m.Points {
			names = append(names, p.Name())
		}
		return Point{}, fmt.Errorf("no backup point %q in %s; there are: %s", name, r.dir, strings.Join(names, ", "))
	}
	return Point{}, fmt.Errorf("%q names %d backup points in %s; give the file name", name, len(found), r.dir)
}

func (r *Repo) path(file string) string { return filepath.Join(r.dir, file) }

func (r *Repo) progress(p Progress) {
	if r.o.Progress != nil {
		r.o.Progress(p)
	}
}

// newName picks the file name of a point taken at t.
func (r *Repo) newName(t time.Time, kind string) string {
	stem := t.UTC().Format("20060102T150405Z")
	for i := 1; ; i++ {
		s := stem
		if i > 1 {
			s = fmt.Sprintf("%s.%d", stem, i)
		}
		taken := false
		for _, p := range r.m.Points {
			if strings.HasPrefix(p.File, s+"-") {
				taken = true
			}
		}
		if _, err := os.Stat(r.path(s + "-" + kind + ".qcow2")); err == nil {
			taken = true
		}
		if !taken {
			return s + "-" + kind + ".qcow2"
		}
	}
}

// fileSum returns the SHA-256 and size of a file of the repository.
func (r *Repo) fileSum(file string) (string, int64, error) {
	return r.sumFile(r.path(file), file)
}

// sumFile returns the SHA-256 and size of the file at path, reporting
// progress under name. The buffer is small on purpose: the file is
// usually in the page cache, and the faults of a fresh large buffer cost
// more than the read calls it saves (64 KiB: 7.5 ms for 10 MiB here, 1 MiB:
// 12–13 ms).
func (r *Repo) sumFile(path, name string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	done, reported := int64(0), int64(0)
	for {
		n, err := f.Read(buf)
		h.Write(buf[:n])
		done += int64(n)
		if n > 0 && (done-reported >= 1<<20 || done == st.Size()) {
			reported = done
			r.progress(Progress{Phase: "checksum", File: name, Done: done, Total: st.Size()})
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", 0, fmt.Errorf("checksum %s: %w", name, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), done, nil
}

// closeSummed closes w, computing the SHA-256 of the complete file
// (reported as file) while it is fsynced.
func (r *Repo) closeSummed(w *qcow2.Writer, file string) (sum string, size int64, err error) {
	err = w.CloseDuringSync(func(path string) (err error) {
		sum, size, err = r.sumFile(path, file)
		return err
	})
	return sum, size, err
}

// publish renames file.partial to file, durably.
func (r *Repo) publish(file string) error {
	if err := os.Rename(r.path(file+".partial"), r.path(file)); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return durable.SyncDir(r.dir)
}

// commit makes m the manifest.
func (r *Repo) commit(m Manifest) error {
	if err := writeManifest(r.dir, m); err != nil {
		return err
	}
	r.m = m
	return nil
}
