// Package testtool finds the external programs tests run (qemu-img,
// nbdinfo, fio, ...), the same way in every package.
package testtool

import (
	"os"
	"os/exec"
	"testing"
)

// Require returns the path of the external tool name. A missing tool
// fails the test under CI=true (CI installs every tool with
// scripts/deps.sh, so its absence there is a bug) and skips it elsewhere,
// saying how to install it. scripts/deps.sh --check finds the tools tests
// need by the calls to Require with a literal name.
func Require(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found on PATH (CI installs it with scripts/deps.sh)", name)
	}
	t.Skipf("%s not installed (run scripts/deps.sh as root)", name)
	return ""
}

// RequireRoot fails the test under CI=true (CI runs as root) and skips it
// elsewhere, when the process is not root; what says what needs root.
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s needs root (CI runs as root)", what)
	}
	t.Skipf("%s needs root", what)
}
