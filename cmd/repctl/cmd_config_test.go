package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// check-config prints the node's cpu-mask, its own over the resource's,
// in words and as JSON.
func TestCheckConfigCPUMask(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "r0.toml")
	src := `[resource]
name = "r0"
size = "64MiB"
insecure = true
cpu-mask = "3"

[[node]]
name = "alpha"
disk = "` + dir + `/a.img"
meta = "` + dir + `/a.meta"
nbd = "127.0.0.2:10809"
peer = "127.0.0.2:7789"
admin = "` + dir + `/a.sock"

[[node]]
name = "beta"
disk = "` + dir + `/b.img"
meta = "` + dir + `/b.meta"
nbd = "127.0.0.3:10809"
peer = "127.0.0.3:7789"
admin = "` + dir + `/b.sock"
cpu-mask = "0"
`
	if err := os.WriteFile(conf, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(args ...string) string {
		app := newApp()
		var b bytes.Buffer
		app.Writer = &b
		if err := app.Run(append([]string{"repctl", "check-config", "--config", conf}, args...)); err != nil {
			t.Fatalf("check-config %v: %v", args, err)
		}
		return b.String()
	}
	if out := check("--node", "alpha"); !strings.Contains(out, "auto-promote false, cpu-mask 3 (CPUs 0,1)\n") {
		t.Fatalf("alpha: %q", out)
	}
	if out := check("--node", "beta"); strings.Contains(out, "cpu-mask") {
		t.Fatalf("beta (cpu-mask \"0\" over the resource's): %q", out)
	}
	for node, want := range map[string][]int{"alpha": {0, 1}, "beta": {}} {
		var got checkedConfig
		if err := json.Unmarshal([]byte(check("--node", node, "--json")), &got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.CPUs, want) || (got.CPUMask == "0") != (len(want) == 0) {
			t.Errorf("%s: cpu_mask %q, cpus %v; want CPUs %v", node, got.CPUMask, got.CPUs, want)
		}
	}
}
