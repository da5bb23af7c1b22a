package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
)

// single starts a one-node resource and makes it Primary.
func single(t *testing.T, size string) *node {
	c := newCluster(t, clusterOpts{nodes: 1, size: size})
	n := c.nodes[0]
	n.start()
	n.mustCtl("primary", "--force")
	waitFor(t, "alpha Primary/UpToDate", 10*time.Second, func() bool {
		s := n.status()
		return s.Role == api.Primary && s.Disk == "UpToDate"
	})
	return n
}

func TestNBDInfo(t *testing.T) {
	nbdinfo := testtool.Require(t, "nbdinfo")
	n := single(t, "64MiB")
	out := run(t, 30*time.Second, nbdinfo, "--json", n.uri())
	var info struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Size        int64  `json:"export-size"`
			ReadOnly    bool   `json:"is_read_only"`
			CanFlush    bool   `json:"can_flush"`
			CanFUA      bool   `json:"can_fua"`
			CanTrim     bool   `json:"can_trim"`
			CanZero     bool   `json:"can_zero"`
			CanMulti    bool   `json:"can_multi_conn"`
			CanCache    bool   `json:"can_cache"`
			BlockPref   int64  `json:"block_size_preferred"`
			BlockMax    int64  `json:"block_size_maximum"`
			Description string `json:"description"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo saw %d exports:\n%s", len(info.Exports), out)
	}
	e := info.Exports[0]
	if e.Name != "r0" || e.Size != 64<<20 || e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanMulti {
		t.Fatalf("export as nbdinfo sees it: %+v\n%s", e, out)
	}
	if e.BlockPref != 4096 || e.BlockMax != 32<<20 {
		t.Fatalf("block sizes: preferred %d, maximum %d", e.BlockPref, e.BlockMax)
	}
	// The default export ("") is the resource too, and OPT_LIST lists it.
	list := run(t, 30*time.Second, nbdinfo, "--list", "--json", "nbd://"+n.nbd)
	if !bytes.Contains(list, []byte(`"r0"`)) {
		t.Fatalf("nbdinfo --list does not show r0:\n%s", list)
	}
}

func TestNBDCopyRoundTrip(t *testing.T) {
	nbdcopy := testtool.Require(t, "nbdcopy")
	n := single(t, "32MiB")
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	outp := filepath.Join(dir, "out")
	data := make([]byte, 32<<20)
	rand.Read(data)
	os.WriteFile(in, data, 0o644)
	run(t, 60*time.Second, nbdcopy, "--connections=4", "--requests=16", in, n.uri())
	run(t, 60*time.Second, nbdcopy, "--connections=4", n.uri(), outp)
	got, _ := os.ReadFile(outp)
	if !bytes.Equal(got, data) {
		t.Fatal("data copied out with nbdcopy differs from what was copied in")
	}
	// And it is on the backing file after a flush (nbdcopy flushes at the end).
	if hashFile(t, n.disk, 32<<20) != hashFile(t, in, 32<<20) {
		t.Fatal("backing file differs from the data written")
	}
}

func TestQemuImgConvertCompare(t *testing.T) {
	qemuImg := testtool.Require(t, "qemu-img")
	n := single(t, "16MiB")
	src := filepath.Join(t.TempDir(), "src.raw")
	data := make([]byte, 16<<20)
	rand.Read(data[:8<<20]) // second half zero: exercises zero detection
	os.WriteFile(src, data, 0o644)
	run(t, 60*time.Second, qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", src, n.uri())
	out := run(t, 60*time.Second, qemuImg, "compare", "-f", "raw", "-F", "raw", src, n.uri())
	if !bytes.Contains(out, []byte("Images are identical")) {
		t.Fatalf("qemu-img compare: %s", out)
	}
}

func TestQemuIOFlushTrimZeroFUA(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	n := single(t, "16MiB")
	io := func(cmds ...string) string {
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		args = append(args, n.uri())
		out := string(run(t, 60*time.Second, qemuIO, args...))
		if strings.Contains(out, "failed") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io %v:\n%s", cmds, out)
		}
		return out
	}
	io("write -P 0xaa 0 4M", "write -f -P 0xbb 4M 1M", "flush")
	io("read -P 0xaa 0 4M", "read -P 0xbb 4M 1M")
	io("discard 1M 1M", "read -P 0 1M 1M", "read -P 0xaa 0 1M", "read -P 0xaa 2M 2M")
	io("write -z 2M 1M", "read -P 0 2M 1M")
	io("write -z -u 3M 512k", "read -P 0 3M 512k", "read -P 0xaa 3584k 512k")
	io("write -z -f 8M 1M", "read -P 0 8M 1M", "flush")
	// Reads past the end are refused by the client or the server, never served.
	cmd := exec.Command(qemuIO, "-f", "raw", "-c", "read 16M 4k", n.uri())
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "failed") && !strings.Contains(string(out), "out of") && !strings.Contains(string(out), "Invalid") {
		t.Fatalf("read past the end was not refused:\n%s", out)
	}
	// The FUA write and the flush are on disk: read the backing file directly.
	b := make([]byte, 1<<20)
	f, _ := os.Open(n.disk)
	defer f.Close()
	f.ReadAt(b, 4<<20)
	if !bytes.Equal(b, bytes.Repeat([]byte{0xbb}, 1<<20)) {
		t.Fatal("FUA write is not in the backing file")
	}
}

func TestFioVerifySeveralConnections(t *testing.T) {
	fio := testtool.Require(t, "fio")
	n := single(t, "64MiB")
	out := run(t, 5*time.Minute, fio, "--name=verify", "--ioengine=nbd", "--uri="+n.uri(),
		"--rw=randwrite", "--bs=4k", "--bssplit=4k/70:64k/20:1m/10", "--numjobs=4",
		"--offset_increment=16M", "--size=16M", "--iodepth=16", "--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1",
		"--do_verify=1", "--group_reporting", "--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOPS float64 `json:"iops"`
				IOs  int64   `json:"total_ios"`
			} `json:"write"`
			Read struct {
				IOs int64 `json:"total_ios"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out[bytes.IndexByte(out, '{'):], &res); err != nil {
		t.Fatalf("fio json: %v\n%s", err, out)
	}
	j := res.Jobs[0]
	if j.Error != 0 || j.Write.IOs == 0 || j.Read.IOs == 0 {
		t.Fatalf("fio: error %d, %d writes, %d verify reads", j.Error, j.Write.IOs, j.Read.IOs)
	}
}

func TestCleanShutdownOnSIGTERM(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	n := single(t, "16MiB")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x5a 0 2M", n.uri())
	if err := n.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	log, _ := os.ReadFile(n.logPath)
	if !bytes.Contains(log, []byte("stopped cleanly")) {
		t.Fatalf("no clean stop in the log:\n%s", log)
	}
	if _, err := os.Stat(n.admin); !os.IsNotExist(err) {
		t.Fatalf("admin socket left behind: %v", err)
	}
	b := make([]byte, 2<<20)
	f, _ := os.Open(n.disk)
	defer f.Close()
	f.ReadAt(b, 0)
	if !bytes.Equal(b, bytes.Repeat([]byte{0x5a}, 2<<20)) {
		t.Fatal("data written before SIGTERM is not in the backing file")
	}
	// It starts again on the same disk and meta file.
	n.start()
	if s := n.status(); s.Role != api.Secondary {
		t.Fatalf("after restart role = %s, want Secondary", s.Role)
	}
}

func TestBadConfigRefused(t *testing.T) {
	buildBinaries(t)
	dir := t.TempDir()
	cases := []struct{ name, conf, want string }{
		{"unknown key", "[resource]\nname=\"r\"\nsize=\"1MiB\"\nfoo=1\n[[node]]\nname=\"a\"\ndisk=\"DIR/a\"\nmeta=\"DIR/m\"\nnbd=\"127.0.0.1:1\"\nadmin=\"DIR/s\"\n", "unknown key resource.foo"},
		{"missing disk", "[resource]\nname=\"r\"\nsize=\"1MiB\"\n[[node]]\nname=\"a\"\nmeta=\"DIR/m\"\nnbd=\"127.0.0.1:1\"\nadmin=\"DIR/s\"\n", `node "a".disk: missing`},
		{"disk too small", "[resource]\nname=\"r\"\nsize=\"8MiB\"\n[[node]]\nname=\"a\"\ndisk=\"DIR/small\"\nmeta=\"DIR/m\"\nnbd=\"127.0.0.1:1\"\nadmin=\"DIR/s\"\n", "smaller than the resource size"},
		{"unknown node", "[resource]\nname=\"r\"\nsize=\"1MiB\"\n[[node]]\nname=\"b\"\ndisk=\"DIR/a\"\nmeta=\"DIR/m\"\nnbd=\"127.0.0.1:1\"\nadmin=\"DIR/s\"\n", `no node "a"`},
	}
	os.WriteFile(filepath.Join(dir, "small"), make([]byte, 1<<20), 0o644)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, "c.toml")
			os.WriteFile(p, []byte(strings.ReplaceAll(c.conf, "DIR", dir)), 0o644)
			out, err := exec.Command(bins.repd, "--config", p, "--node", "a").CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("repd with %s: err=%v, output:\n%s\nwant it to mention %q", c.name, err, out, c.want)
			}
		})
	}
}

// repd runs with GODEBUG's schedtrace set to its longest period, which
// keeps Go's sysmon out of the deep sleep every idle moment at queue depth
// 1 paid a wake-up for (cmd/repd/sysmon.go), in the same process (same
// pid, same arguments); GODEBUG=schedtrace=0 in its environment keeps Go's
// default, and other GODEBUG settings stay.
func TestSysmonSetting(t *testing.T) {
	n := single(t, "16MiB")
	godebug := func() string {
		t.Helper()
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", n.pid()))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(b), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
				return v
			}
		}
		return ""
	}
	if g := godebug(); !strings.Contains(","+g+",", ",schedtrace=2147483647,") {
		t.Fatalf("repd's GODEBUG is %q, want schedtrace=2147483647 in it", g)
	}
	for _, env := range []string{"schedtrace=0", "madvdontneed=1"} {
		if err := n.stop(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		cmd := n.h.Command()
		cmd.Env = append(cmd.Env, "GODEBUG="+env)
		n.startWith(cmd)
		want := env
		if env == "madvdontneed=1" {
			want = env + ",schedtrace=2147483647"
		}
		if g := godebug(); g != want {
			t.Errorf("started with GODEBUG=%s: repd runs with %q, want %q", env, g, want)
		}
	}
}
