package nbd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
)

// needTool returns the path of an external client; it skips the test when the
// tool is missing, or fails it when CI=true.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (required when CI=true)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func TestNbdinfo(t *testing.T) {
	needTool(t, "nbdinfo")
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{
		{Name: "disk", Description: "a disk", Device: newMem(testSize)},
		{Name: "ro", Device: plainDevice{newMem(64 << 10)}, ReadOnly: true},
	}})
	type export struct {
		Name         string `json:"export-name"`
		Description  string `json:"description"`
		Size         int64  `json:"export-size"`
		CanFlush     bool   `json:"can_flush"`
		CanFUA       bool   `json:"can_fua"`
		CanTrim      bool   `json:"can_trim"`
		CanZero      bool   `json:"can_zero"`
		CanFastZero  bool   `json:"can_fast_zero"`
		CanMultiConn bool   `json:"can_multi_conn"`
		CanCache     bool   `json:"can_cache"`
		ReadOnly     bool   `json:"is_read_only"`
		BlockMin     int64  `json:"block_size_minimum"`
		BlockPref    int64  `json:"block_size_preferred"`
		BlockMax     int64  `json:"block_size_maximum"`
	}
	info := func(exp string) export {
		var v struct {
			Protocol string   `json:"protocol"`
			Exports  []export `json:"exports"`
		}
		out := runTool(t, "nbdinfo", "--json", "nbd://"+addr+"/"+exp)
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("nbdinfo output: %v\n%s", err, out)
		}
		if v.Protocol != "newstyle-fixed" || len(v.Exports) != 1 {
			t.Fatalf("nbdinfo: %s", out)
		}
		return v.Exports[0]
	}

	// "" is the default export; nbdinfo asks NBD_INFO_NAME and shows its canonical name.
	got := info("")
	want := export{Name: "disk", Description: "a disk", Size: testSize, CanFlush: true, CanFUA: true, CanTrim: true,
		CanZero: true, CanFastZero: true, CanMultiConn: true, CanCache: true, BlockMin: 1, BlockPref: 4096, BlockMax: 32 << 20}
	if got != want {
		t.Errorf("nbdinfo default export:\n got %+v\nwant %+v", got, want)
	}
	got = info("ro")
	want = export{Name: "ro", Size: 64 << 10, CanFlush: true, CanFUA: true, CanMultiConn: true, CanCache: true,
		ReadOnly: true, BlockMin: 1, BlockPref: 4096, BlockMax: 32 << 20}
	if got != want {
		t.Errorf("nbdinfo ro:\n got %+v\nwant %+v", got, want)
	}

	out := runTool(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	if !bytes.Contains(out, []byte(`"disk"`)) || !bytes.Contains(out, []byte(`"ro"`)) {
		t.Errorf("nbdinfo --list: %s", out)
	}
}

func TestQemuIO(t *testing.T) {
	needTool(t, "qemu-io")
	dev := newMem(testSize)
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Name: "disk", Device: dev}}})
	runTool(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 64k",
		"-c", "write -P 0xcd -f 128k 4k", // FUA
		"-c", "write -z 64k 4k",
		"-c", "discard 192k 4k",
		"-c", "flush",
		"-c", "read -P 0xab 0 64k",
		"-c", "read -P 0xcd 128k 4k",
		"-c", "read -P 0 64k 4k",
		"nbd://"+addr+"/disk")
	if dev.data[0] != 0xab || dev.data[128<<10] != 0xcd {
		t.Fatal("qemu-io writes did not reach the device")
	}
	if dev.flushes.Load() == 0 || dev.fuas.Load() == 0 {
		t.Errorf("flushes %d, FUA writes %d", dev.flushes.Load(), dev.fuas.Load())
	}
}
