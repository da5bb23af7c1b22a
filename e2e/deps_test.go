package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/repd/repd/internal/testtool"
)

// TestDepsCheck holds scripts/deps.sh to the code: its --check passes on
// the checkout as it is, and fails, naming the command, when an entry the
// code needs is taken out of the package table (here xmllint, which
// ocf-tester calls and which only a Recommends used to bring in).
func TestDepsCheck(t *testing.T) {
	testtool.Require(t, "shfmt")
	testtool.Require(t, "jq")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "scripts", "deps.sh")
	run := func(path string) (string, error) {
		out, err := exec.Command("bash", path, "--check", "--root", root).CombinedOutput()
		return string(out), err
	}
	if out, err := run(script); err != nil {
		t.Fatalf("deps.sh --check on the checkout: %v\n%s", err, out)
	}

	src, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"xmllint", "nbdcopy", "setpriv"} {
		entry := regexp.MustCompile(`(?m)^\s*\[` + regexp.QuoteMeta(tool) + `\]=.*\n`)
		if !entry.Match(src) {
			t.Fatalf("deps.sh has no entry for %s", tool)
		}
		cut := filepath.Join(t.TempDir(), "deps.sh")
		if err := os.WriteFile(cut, entry.ReplaceAll(src, nil), 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := run(cut)
		if err == nil {
			t.Errorf("deps.sh --check passed without the entry for %s:\n%s", tool, out)
			continue
		}
		if !strings.Contains(out, "'"+tool+"'") {
			t.Errorf("deps.sh --check without %s failed without naming it:\n%s", tool, out)
		}
	}
}
