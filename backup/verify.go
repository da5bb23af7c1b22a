package backup

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/repd/repd/backup/qcow2"
)

// Verify checks every point: its file exists, its SHA-256 matches the
// manifest, its qcow2 metadata is sound (qcow2 Check), and its backing file
// is the one the manifest says. It returns the problems found (none: nil).
func (r *Repo) Verify(ctx context.Context) ([]string, error) {
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	for i, p := range r.m.Points {
		if err := ctx.Err(); err != nil {
			return problems, err
		}
		r.progress(Progress{Phase: "verify", File: p.File, Done: int64(i), Total: int64(len(r.m.Points))})
		sum, size, err := r.fileSum(p.File)
		if err != nil {
			bad("%s: %v", p.File, err)
			continue
		}
		if sum != p.SHA256 || size != p.FileBytes {
			bad("%s: checksum %s (%d bytes), the manifest says %s (%d bytes): the file changed since it was written", p.File, sum, size, p.SHA256, p.FileBytes)
		}
		im, err := qcow2.Open(r.path(p.File))
		if err != nil {
			bad("%s: %v", p.File, err)
			continue
		}
		rep, err := im.Check()
		name, format := im.Backing()
		im.Close()
		switch {
		case err != nil:
			bad("%s: %v", p.File, err)
		case !rep.OK():
			bad("%s: %d qcow2 errors: %s", p.File, rep.ErrorCount, strings.Join(rep.Errors, "; "))
		}
		if name != p.Backing || (name != "" && format != "qcow2") {
			bad("%s: backing file %q (%s), the manifest says %q", p.File, name, format, p.Backing)
		}
	}
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return problems, err
	}
	named := map[string]bool{}
	for _, p := range r.m.Points {
		named[p.File] = true
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".qcow2") && !named[e.Name()] {
			bad("%s: not in the manifest (left by an interrupted run?); no point uses it", e.Name())
		}
	}
	return problems, nil
}
