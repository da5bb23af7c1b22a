package nbd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, testtool.Require(t, name), args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func TestNbdinfo(t *testing.T) {
	testtool.Require(t, "nbdinfo")
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
	testtool.Require(t, "qemu-io")
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

// runToolErr runs a tool expected to fail and returns its combined output.
func runToolErr(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testtool.Require(t, name), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("%s %s succeeded, want a refusal:\n%s", name, strings.Join(args, " "), out)
	}
	return string(out)
}

// Real TLS clients (libnbd's nbdinfo and nbdcopy, QEMU's qemu-img and
// qemu-io; all GnuTLS) against a server that requires TLS with client
// certificates, reading the certificate directory layout they share.
func TestToolsTLS(t *testing.T) {
	for _, tool := range []string{"nbdinfo", "nbdcopy", "qemu-img", "qemu-io"} {
		testtool.Require(t, tool)
	}
	p := getPKI(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good")       // our CA, a client certificate it signed
	untrusted := filepath.Join(dir, "other") // our CA, a client certificate another CA signed
	noCert := filepath.Join(dir, "nocert")   // our CA, no client certificate
	distrust := filepath.Join(dir, "wrong")  // does not trust our server
	for _, d := range []struct {
		dir    string
		issuer *nbdtest.PKI
		caPEM  []byte
		cn     string
	}{
		{good, p.ca, p.ca.CAPEM, "libnbd client"},
		{untrusted, p.other, p.ca.CAPEM, "intruder"},
		{noCert, p.ca, p.ca.CAPEM, ""},
		{distrust, p.ca, p.other.CAPEM, "libnbd client"},
	} {
		if err := d.issuer.WriteClientDir(d.dir, d.caPEM, d.cn); err != nil {
			t.Fatal(err)
		}
	}
	dev := newMem(8 << 20)
	addr := serve(t, &nbd.Server{TLS: p.serverMutual, TLSMode: nbd.TLSRequire,
		Exports: []nbd.Export{{Name: "disk", Device: dev}, {Name: "small", Device: newMem(2 << 20)}}})
	host, port, _ := net.SplitHostPort(addr)
	uri := func(certs string) string { return "nbds://" + addr + "/disk?tls-certificates=" + certs }
	qemuObj := func(certs string) []string {
		return []string{"--object", "tls-creds-x509,id=tls0,dir=" + certs + ",endpoint=client",
			"--image-opts", "driver=nbd,host=" + host + ",port=" + port + ",export=disk,tls-creds=tls0"}
	}

	t.Run("nbdinfo", func(t *testing.T) {
		out := runTool(t, "nbdinfo", "--json", uri(good))
		var v struct {
			Protocol string `json:"protocol"`
			TLS      bool   `json:"TLS"`
			Exports  []struct {
				Size int64 `json:"export-size"`
			} `json:"exports"`
		}
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("nbdinfo output: %v\n%s", err, out)
		}
		if !v.TLS || len(v.Exports) != 1 || v.Exports[0].Size != 8<<20 {
			t.Fatalf("nbdinfo over TLS: %s", out)
		}
	})
	t.Run("nbdcopy", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "src")
		back := filepath.Join(t.TempDir(), "back")
		data := pattern(2<<20, 11)
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		small := strings.Replace(uri(good), "/disk?", "/small?", 1)
		runTool(t, "nbdcopy", "--connections=2", src, small)
		runTool(t, "nbdcopy", small, back)
		got, err := os.ReadFile(back)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("nbdcopy round trip over TLS differs (%v)", err)
		}
	})
	t.Run("qemu", func(t *testing.T) {
		out := runTool(t, "qemu-img", append([]string{"info", "--output=json"}, qemuObj(good)...)...)
		if !bytes.Contains(out, []byte(`"virtual-size": 8388608`)) {
			t.Fatalf("qemu-img info over TLS: %s", out)
		}
		args := []string{"-c", "write -P 0x5c 1M 64k", "-c", "flush", "-c", "read -P 0x5c 1M 64k"}
		out = runTool(t, "qemu-io", append(args, qemuObj(good)...)...)
		if bytes.Contains(out, []byte("fail")) || dev.data[1<<20] != 0x5c {
			t.Fatalf("qemu-io over TLS:\n%s", out)
		}
	})
	t.Run("plain client refused", func(t *testing.T) {
		out := runToolErr(t, []string{"LIBNBD_DEBUG=1"}, "nbdinfo", "nbd://"+addr+"/disk")
		if !strings.Contains(out, "TLS is required on this server") {
			t.Fatalf("nbdinfo without TLS: the server's reason is not shown:\n%s", out)
		}
		out = runToolErr(t, nil, "qemu-img", "info", "nbd://"+addr+"/disk")
		if !strings.Contains(out, "TLS is required on this server") {
			t.Fatalf("qemu-img without TLS:\n%s", out)
		}
	})
	t.Run("untrusted client certificate refused", func(t *testing.T) {
		runToolErr(t, nil, "nbdinfo", uri(untrusted))
		runToolErr(t, nil, "qemu-img", append([]string{"info"}, qemuObj(untrusted)...)...)
	})
	t.Run("client without certificate refused", func(t *testing.T) {
		runToolErr(t, nil, "nbdinfo", uri(noCert))
	})
	t.Run("client does not trust the server", func(t *testing.T) {
		runToolErr(t, nil, "nbdinfo", uri(distrust))
		runToolErr(t, nil, "qemu-img", append([]string{"info"}, qemuObj(distrust)...)...)
	})
}
