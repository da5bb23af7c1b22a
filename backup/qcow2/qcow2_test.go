package qcow2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/internal/testtool"
)

// tool runs an external command; it returns stdout and the exit code, and
// fails the test if the command could not run.
func tool(t testing.TB, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, testtool.Require(t, name), args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String() + stderr.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out.String(), 0
}

func mustTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, code := tool(t, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), code, out)
	}
	return out
}

// qemuCheck runs qemu-img check and fails unless it finds no error and no leak.
func qemuCheck(t testing.TB, path string) {
	t.Helper()
	out := mustTool(t, "qemu-img", "check", "--output=json", path)
	var r struct {
		Errors int `json:"check-errors"`
		Leaks  int `json:"leaks"`
		Corr   int `json:"corruptions"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("qemu-img check output: %v\n%s", err, out)
	}
	if r.Errors != 0 || r.Leaks != 0 || r.Corr != 0 {
		t.Fatalf("qemu-img check %s: %s", path, out)
	}
}

// ourCheck runs Check and fails on any error or leak.
func ourCheck(t testing.TB, path string) *Report {
	t.Helper()
	im, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	r, err := im.Check()
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Leaks != 0 {
		t.Fatalf("Check %s: %+v", path, r)
	}
	return r
}

func writeRaw(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// chainBytes reads the whole chain of path with our reader.
func chainBytes(t testing.TB, path string) []byte {
	t.Helper()
	c, err := OpenChain(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, c.Size())
	if _, err := c.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// qemuBytes reads path through qemu-img convert.
func qemuBytes(t testing.TB, path string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	mustTool(t, "qemu-img", "convert", "-O", "raw", path, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int64
		cluster int
		oneIn   int // write one cluster in oneIn (1: two in three)
		cache   int // L2 tables cached
	}{
		{"64k clusters, size not a multiple of the cluster", 4<<20 + 12800, 64 << 10, 1, 16},
		// 7 L2 tables (more than the 4 cached) and 2 refcount blocks.
		{"4k clusters, L2 tables evicted, 2 refcount blocks", 14 << 20, 4 << 10, 1, 4},
		{"2M clusters", 5 << 20, 2 << 20, 1, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func(n int) { l2CacheTables = n }(l2CacheTables)
			l2CacheTables = tc.cache
			dir := t.TempDir()
			img := filepath.Join(dir, "a.qcow2")
			w, err := Create(img, CreateOptions{Size: tc.size, ClusterSize: tc.cluster})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, tc.size)
			cs := int64(tc.cluster)
			src := rand.NewChaCha8([32]byte{byte(tc.size)})
			rng := rand.New(src)
			buf := make([]byte, cs)
			// Scattered writes (every L2 table, out of order), rewrites,
			// zero clusters over data, and the partial last cluster.
			order := rng.Perm(int(w.Clusters()))
			for k, i := range order {
				idx := int64(i)
				if (tc.oneIn > 1 && k%tc.oneIn != 0) || (tc.oneIn == 1 && k%3 == 0) {
					continue
				}
				src.Read(buf)
				if err := w.WriteCluster(idx, buf); err != nil {
					t.Fatal(err)
				}
				copy(want[idx*cs:], buf)
				if k%7 == 0 {
					if err := w.WriteZeroCluster(idx); err != nil {
						t.Fatal(err)
					}
					clear(want[idx*cs : min((idx+1)*cs, tc.size)])
				}
			}
			last := w.Clusters() - 1
			fill := bytes.Repeat([]byte{0x77}, int(cs))
			if err := w.WriteCluster(last, fill); err != nil {
				t.Fatal(err)
			}
			copy(want[last*cs:], fill)
			if err := w.WriteCluster(last+1, fill); err == nil {
				t.Fatal("write past the last cluster accepted")
			}
			if err := w.WriteCluster(0, buf[:100]); err == nil {
				t.Fatal("short cluster accepted")
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, img)
			ourCheck(t, img)
			raw := filepath.Join(dir, "want.raw")
			writeRaw(t, raw, want)
			mustTool(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, img)
			if !same(chainBytes(t, img), want) {
				t.Fatal("our reader disagrees with what was written")
			}
			info := mustTool(t, "qemu-img", "info", "--output=json", img)
			if !strings.Contains(info, `"cluster-size": `+itoa(cs)) || !strings.Contains(info, `"compat": "1.1"`) {
				t.Fatalf("qemu-img info: %s", info)
			}
		})
	}
}

// same compares by SHA-256: bytes.Equal on megabytes is slow under the race
// detector, the hash's assembly is not instrumented.
func same(a, b []byte) bool { return sha256.Sum256(a) == sha256.Sum256(b) }

func itoa(v int64) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(v)) }

func fmtInt(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// A chain raw ← qcow2 ← qcow2 written by us reads the same in qemu and in
// our reader; zero clusters hide the backing data.
func TestBackingChain(t *testing.T) {
	dir := t.TempDir()
	const size = 4 << 20
	const cs = 64 << 10
	base := make([]byte, size-1000) // a backing file shorter than the image
	for i := range base {
		base[i] = byte(i % 251)
	}
	writeRaw(t, filepath.Join(dir, "base.raw"), base)
	want := append(append([]byte(nil), base...), make([]byte, 1000)...)

	mid, err := Create(filepath.Join(dir, "mid.qcow2"), CreateOptions{Size: size, BackingFile: "base.raw", BackingFormat: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte{0xa1}, cs)
	mid.WriteCluster(3, a)
	copy(want[3*cs:], a)
	mid.WriteZeroCluster(5)
	clear(want[5*cs : 6*cs])
	if err := mid.Close(); err != nil {
		t.Fatal(err)
	}
	top, err := Create(filepath.Join(dir, "top.qcow2"), CreateOptions{Size: size, BackingFile: "mid.qcow2", BackingFormat: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	b := bytes.Repeat([]byte{0xb2}, cs)
	top.WriteCluster(5, b) // over mid's zero cluster
	copy(want[5*cs:], b)
	top.WriteZeroCluster(3) // over mid's data
	clear(want[3*cs : 4*cs])
	top.WriteCluster(63, b) // the last cluster, beyond base's end
	copy(want[63*cs:], b)
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"mid.qcow2", "top.qcow2"} {
		qemuCheck(t, filepath.Join(dir, f))
		ourCheck(t, filepath.Join(dir, f))
	}
	var chain []struct {
		Filename, Format string
		BackingFilename  string `json:"backing-filename"`
	}
	if err := json.Unmarshal([]byte(mustTool(t, "qemu-img", "info", "--backing-chain", "--output=json", filepath.Join(dir, "top.qcow2"))), &chain); err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || chain[0].BackingFilename != "mid.qcow2" || chain[1].BackingFilename != "base.raw" || chain[2].Format != "raw" {
		t.Fatalf("qemu-img info --backing-chain: %+v", chain)
	}
	if !same(qemuBytes(t, filepath.Join(dir, "top.qcow2")), want) {
		t.Fatal("qemu reads the chain differently")
	}
	if !same(chainBytes(t, filepath.Join(dir, "top.qcow2")), want) {
		t.Fatal("our reader reads the chain differently")
	}
	// qemu-img map: top holds clusters 3 (zero), 5 and 63 itself.
	var m []struct {
		Start, Length, Depth int64
		Data, Zero           bool
	}
	json.Unmarshal([]byte(mustTool(t, "qemu-img", "map", "--output=json", filepath.Join(dir, "top.qcow2"))), &m)
	own := map[int64]bool{}
	for _, e := range m {
		if e.Depth == 0 {
			for o := e.Start; o < e.Start+e.Length; o += cs {
				own[o/cs] = true
			}
		}
	}
	if len(own) != 3 || !own[3] || !own[5] || !own[63] {
		t.Fatalf("qemu-img map: clusters of the top image %v\n%+v", own, m)
	}
	c, err := OpenChain(filepath.Join(dir, "top.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		off, n int64
		want   bool
	}{{3 * cs, cs, false}, {5 * cs, cs, true}, {0, cs, true}, {size - 1000, 1000, true}} {
		if got, err := c.Mapped(tc.off, tc.n); err != nil || got != tc.want {
			t.Errorf("Mapped(%d, %d) = %v, %v; want %v", tc.off, tc.n, got, err, tc.want)
		}
	}
	if files := c.Files(); len(files) != 3 {
		t.Fatalf("files %v", files)
	}
}

// Our reader reads what qemu writes, whatever qemu does (zeroes, discards,
// bitmaps, a v2 image), and our check agrees with qemu-img check on it.
func TestReadQemuImages(t *testing.T) {
	dir := t.TempDir()
	for _, compat := range []string{"1.1", "0.10"} {
		img := filepath.Join(dir, "q"+compat+".qcow2")
		mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat="+compat+",cluster_size=32k", img, "3M")
		mustTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x31 0 1M", "-c", "write -z 64k 64k", "-c", "discard 512k 32k",
			"-c", "write -P 0x32 2M 5000", img)
		if compat == "1.1" {
			mustTool(t, "qemu-img", "bitmap", "--add", img, "b0")
		}
		top := filepath.Join(dir, "top"+compat+".qcow2")
		mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", filepath.Base(img), top)
		mustTool(t, "qemu-io", "-f", "qcow2", "-c", "write -z 0 4k", "-c", "write -P 0x33 1M 4k", top)
		if !same(chainBytes(t, top), qemuBytes(t, top)) {
			t.Fatalf("compat %s: our reader disagrees with qemu-img convert", compat)
		}
		ourCheck(t, img)
		ourCheck(t, top)
	}
}

// Check finds what qemu-img check finds: a wrong refcount, and a cluster
// used twice.
func TestCheckFindsCorruption(t *testing.T) {
	dir := t.TempDir()
	make1 := func(name string) string {
		p := filepath.Join(dir, name)
		w, err := Create(p, CreateOptions{Size: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		w.WriteCluster(0, bytes.Repeat([]byte{1}, 64<<10))
		w.WriteCluster(1, bytes.Repeat([]byte{2}, 64<<10))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A refcount of 0 for a data cluster.
	p := make1("refcount.qcow2")
	im, _ := Open(p)
	rt := make([]byte, 8)
	im.f.ReadAt(rt, int64(im.h.refcountOffset))
	im.Close()
	block := int64(binary.BigEndian.Uint64(rt))
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	f.WriteAt([]byte{0, 0}, block+2*1) // cluster 1: the first data cluster
	f.Close()
	assertCorrupt(t, p)

	// Cluster 1's L2 entry pointing at cluster 0's data.
	p = make1("twice.qcow2")
	im, _ = Open(p)
	l2off := int64(im.l1[0] & offsetMask)
	e := make([]byte, 8)
	im.f.ReadAt(e, l2off)
	im.Close()
	f, _ = os.OpenFile(p, os.O_RDWR, 0)
	f.WriteAt(e, l2off+8)
	f.Close()
	assertCorrupt(t, p)
}

func assertCorrupt(t *testing.T, p string) {
	t.Helper()
	if out, code := tool(t, "qemu-img", "check", p); code != 2 {
		t.Fatalf("qemu-img check of a corrupted image: exit %d\n%s", code, out)
	}
	im, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	r, err := im.Check()
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() {
		t.Fatalf("Check found nothing wrong in %s", p)
	}
	t.Logf("%s: %v", filepath.Base(p), r.Errors)
}

func TestRebase(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("backing!"), 128<<10) // 1 MiB
	for _, n := range []string{"b1.raw", "backing-two.raw", "b3.raw"} {
		writeRaw(t, filepath.Join(dir, n), data)
	}
	img := filepath.Join(dir, "top.qcow2")
	w, err := Create(img, CreateOptions{Size: 1 << 20, BackingFile: "b1.raw", BackingFormat: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	own := bytes.Repeat([]byte{9}, 64<<10)
	w.WriteCluster(2, own)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), data...)
	copy(want[128<<10:], own)
	// Alternate between the two name slots, with names of different lengths.
	for _, n := range []string{"backing-two.raw", "b3.raw", "b1.raw", "backing-two.raw"} {
		if err := Rebase(img, n); err != nil {
			t.Fatal(err)
		}
		im, err := Open(img)
		if err != nil {
			t.Fatal(err)
		}
		name, format := im.Backing()
		im.Close()
		if name != n || format != "raw" {
			t.Fatalf("after Rebase(%q): backing %q (%s)", n, name, format)
		}
		qemuCheck(t, img)
		info := mustTool(t, "qemu-img", "info", "--output=json", img)
		if !strings.Contains(info, `"backing-filename": "`+n+`"`) {
			t.Fatalf("qemu-img info after Rebase(%q): %s", n, info)
		}
		if !same(qemuBytes(t, img), want) || !same(chainBytes(t, img), want) {
			t.Fatalf("content changed by Rebase(%q)", n)
		}
	}
	if err := Rebase(img, strings.Repeat("x", 2000)); err == nil {
		t.Fatal("a 2000-byte name accepted")
	}
}

func TestCreateRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []CreateOptions{
		{Size: 0},
		{Size: 1 << 20, ClusterSize: 512},
		{Size: 1 << 20, ClusterSize: 3 << 10},
		{Size: 1 << 20, BackingFile: "x"},
		{Size: 1 << 20, BackingFile: "x", BackingFormat: "vmdk"},
		{Size: 1 << 20, BackingFormat: "raw"},
		{Size: 1 << 62},
	} {
		if _, err := Create(filepath.Join(dir, "x.qcow2"), o); err == nil {
			t.Errorf("Create(%+v) accepted", o)
		}
	}
	p := filepath.Join(dir, "exists")
	writeRaw(t, p, nil)
	if _, err := Create(p, CreateOptions{Size: 1 << 20}); err == nil {
		t.Error("Create over an existing file accepted")
	}
}

// An interrupted writer leaves a file that is not an image.
func TestAbortLeavesNoImage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.qcow2")
	w, err := Create(p, CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteCluster(0, make([]byte, 64<<10))
	w.Abort()
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), "not a qcow2 image") {
		t.Fatalf("Open of an aborted image: %v", err)
	}
}

// CloseDuringSync runs its function on the complete image: what it reads
// is the file Close leaves (qemu-img check passes on a copy of it), and its
// error is Close's.
func TestCloseDuringSync(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.qcow2")
	w, err := Create(p, CreateOptions{Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xa5}, 64<<10)
	for _, c := range []int64{0, 7, 40} {
		if err := w.WriteCluster(c, data); err != nil {
			t.Fatal(err)
		}
	}
	var seen []byte
	if err := w.CloseDuringSync(func(path string) error {
		var err error
		seen, err = os.ReadFile(path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	final, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(seen, final) {
		t.Fatalf("during read %d bytes, the closed file has %d (or they differ)", len(seen), len(final))
	}
	cp := filepath.Join(dir, "copy.qcow2")
	if err := os.WriteFile(cp, seen, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, cp)

	w, err = Create(filepath.Join(dir, "y.qcow2"), CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("checksum failed")
	if err := w.CloseDuringSync(func(string) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("CloseDuringSync returned %v, want the function's error", err)
	}
}

// TestHeaderBeyondPeek: open reads the first headerPeek bytes of cluster
// 0 and the rest only when the extensions or the backing file name lie
// beyond them. Images whose extensions, or backing name, start past
// headerPeek read the same through our reader as through qemu-img.
func TestHeaderBeyondPeek(t *testing.T) {
	const size = 1 << 20
	const cs = 64 << 10
	for _, tc := range []struct {
		name    string
		padding int // bytes of an unknown extension before the others
		nameAt  int // the backing file name's offset (0: right after the extensions; -1: none)
	}{
		{"small", 0, 0},
		{"no backing, long extension", 6000, -1},
		{"long extension", 6000, 0},
		{"name far", 0, 5000},
		{"both far", 9000, 20000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			base := bytes.Repeat([]byte{0x5a}, size)
			writeRaw(t, filepath.Join(dir, "base.raw"), base)
			p := filepath.Join(dir, "top.qcow2")
			w, err := Create(p, CreateOptions{Size: size, ClusterSize: cs, BackingFile: "base.raw", BackingFormat: "raw"})
			if err != nil {
				t.Fatal(err)
			}
			c := bytes.Repeat([]byte{0xc3}, cs)
			if err := w.WriteCluster(2, c); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			want := append([]byte(nil), base...)
			copy(want[2*cs:], c)

			// Rewrite cluster 0's tail: [unknown extension], backing
			// format, end, then the backing file name.
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			c0 := make([]byte, cs)
			if _, err := f.ReadAt(c0, 0); err != nil {
				t.Fatal(err)
			}
			be := binary.BigEndian
			hl := int(be.Uint32(c0[100:]))
			clear(c0[hl:])
			ext := func(at int, typ uint32, data []byte) int {
				be.PutUint32(c0[at:], typ)
				be.PutUint32(c0[at+4:], uint32(len(data)))
				copy(c0[at+8:], data)
				return at + 8 + (len(data)+7)&^7
			}
			at := hl
			if tc.padding > 0 {
				at = ext(at, 0x7e57da7a, bytes.Repeat([]byte{1}, tc.padding))
			}
			name, format := []byte("base.raw"), "raw"
			if tc.nameAt < 0 {
				name, format = nil, ""
				clear(want)
				copy(want[2*cs:], c)
			} else {
				at = ext(at, extBackingFormat, []byte(format))
			}
			at = ext(at, extEnd, nil)
			if tc.nameAt > 0 {
				at = tc.nameAt
			}
			copy(c0[at:], name)
			if name == nil {
				at = 0
			}
			be.PutUint64(c0[8:], uint64(at))
			be.PutUint32(c0[16:], uint32(len(name)))
			if _, err := f.WriteAt(c0, 0); err != nil {
				t.Fatal(err)
			}
			if got := qemuBytes(t, p); !same(got, want) {
				t.Fatal("qemu-img reads something else: the crafted header is wrong")
			}
			if got := chainBytes(t, p); !same(got, want) {
				t.Fatalf("our reader: the image differs (backing name at %d, extensions to %d)", at, at)
			}
			im, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if n, f := im.Backing(); n != string(name) || f != format {
				t.Fatalf("backing %q format %q", n, f)
			}
		})
	}
}
