package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Bins are the binaries a cluster runs.
type Bins struct {
	Dir       string // holds the binaries; Remove deletes it
	Repd      string
	Repctl    string
	Linkproxy string
	Race      bool // built with -race
}

// Build builds ./cmd/repd, ./cmd/repctl and ./cmd/linkproxy of the module at
// root into a new temporary directory, with -race if race is set. The
// caller removes it (Bins.Remove).
func Build(ctx context.Context, root string, race bool) (*Bins, error) {
	dir, err := os.MkdirTemp("", "repd-bin-")
	if err != nil {
		return nil, fmt.Errorf("build repd: %w", err)
	}
	// An unprivileged repctl (the permission tests) runs from here too.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("build repd: %w", err)
	}
	// The Makefile's tags: urfave/cli's documentation generators left out
	// (3 ms of every repctl start).
	args := []string{"build", "-tags", "urfave_cli_no_docs", "-o", dir + string(filepath.Separator)}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/repd", "./cmd/repctl", "./cmd/linkproxy")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go %s in %s: %v\n%s", strings.Join(args, " "), root, err, out)
	}
	return &Bins{
		Dir:       dir,
		Repd:      filepath.Join(dir, "repd"),
		Repctl:    filepath.Join(dir, "repctl"),
		Linkproxy: filepath.Join(dir, "linkproxy"),
		Race:      race,
	}, nil
}

// Remove deletes the binaries' directory.
func (b *Bins) Remove() error { return os.RemoveAll(b.Dir) }

var shared struct {
	sync.Mutex
	done bool
	bins *Bins
	err  error
}

// Binaries returns the binaries of the module that holds the working
// directory, built once per process (with -race when this process has the
// race detector). A TestMain calls RemoveBinaries after m.Run.
func Binaries() (*Bins, error) {
	shared.Lock()
	defer shared.Unlock()
	if !shared.done {
		shared.done = true
		root, err := ModuleRoot()
		if err == nil {
			shared.bins, err = Build(context.Background(), root, Race)
		}
		shared.err = err
	}
	return shared.bins, shared.err
}

// RemoveBinaries deletes what Binaries built.
func RemoveBinaries() {
	shared.Lock()
	defer shared.Unlock()
	if shared.bins != nil {
		shared.bins.Remove()
	}
	shared.done, shared.bins, shared.err = false, nil, nil
}

// ModuleRoot finds the repd module's root at or above the working
// directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/repd/repd\n") {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("not inside the repd checkout (no go.mod of github.com/repd/repd at or above " + dir + ")")
		}
		d = parent
	}
}

// QuickExitEnv is the environment for the binaries: a race-enabled Go
// binary otherwise sleeps 1 s at exit, which adds up over many repctl
// calls.
func QuickExitEnv() []string {
	return append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}
