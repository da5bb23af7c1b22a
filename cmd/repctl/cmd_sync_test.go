package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/repd/repd/api"
)

func TestSyncProgress(t *testing.T) {
	pct := 42.25
	p := api.PeerStatus{SyncPercent: &pct, SyncLeftBytes: 100 << 20, SyncRateBytesPerSec: 50 << 20, SyncETASeconds: 2}
	if got, want := syncProgress(p), "done:42.2% left:100.0MiB rate:50.0MiB/s eta:2s"; got != want {
		t.Fatalf("syncProgress = %q, want %q", got, want)
	}
	if syncProgress(api.PeerStatus{}) != "" {
		t.Fatal("progress without a resync")
	}
}

func TestCreateMD(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "r0.toml")
	meta := filepath.Join(dir, "a.meta")
	os.WriteFile(conf, []byte(`[resource]
name = "r0"
size = "16MiB"
insecure = true
[[node]]
name = "alpha"
disk = "`+dir+`/a.img"
meta = "`+meta+`"
nbd = "127.0.0.1:10809"
peer = "127.0.0.1:7789"
admin = "`+dir+`/a.sock"
[[node]]
name = "beta"
disk = "`+dir+`/b.img"
meta = "`+dir+`/b.meta"
nbd = "127.0.0.2:10809"
peer = "127.0.0.2:7789"
admin = "`+dir+`/b.sock"
`), 0o644)
	if err := runCreateMD(conf, "alpha", false); err != nil {
		t.Fatal(err)
	}
	err := runCreateMD(conf, "alpha", false)
	if err == nil || exitCode(err) != exitRefused || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second create-md: %v (exit %d)", err, exitCode(err))
	}
	if err := runCreateMD(conf, "alpha", true); err != nil {
		t.Fatal(err)
	}
	if err := runCreateMD(conf, "gamma", false); err == nil || exitCode(err) != exitUsage {
		t.Fatalf("unknown node: %v", err)
	}
	if err := runCreateMD("", "alpha", false); err == nil || exitCode(err) != exitUsage {
		t.Fatalf("no config: %v", err)
	}
}
