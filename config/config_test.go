package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

const good = `
[resource]
name = "r0"
size = "64MiB"
insecure = true
protocol = "c"

[[node]]
name = "alpha"
disk = "/tmp/a.img"
meta = "/tmp/a.meta"
nbd = "127.0.0.1:10809"
peer = "127.0.0.1:7789"
admin = "/tmp/a.sock"

[[node]]
name = "beta"
disk = "/tmp/b.img"
meta = "/tmp/b.meta"
nbd = "unix:/tmp/b.nbd"
peer = "127.0.0.2:7789"
admin = "/tmp/b.sock"
`

func TestParseGood(t *testing.T) {
	f, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if f.Resource.Size != 64<<20 || f.Resource.Protocol != api.ProtocolC || f.Resource.BlockSize != 4096 {
		t.Fatalf("resource = %+v", f.Resource)
	}
	if time.Duration(f.Resource.Timeout) != DefaultTimeout || f.Resource.OnCongestion != CongestionBlock {
		t.Fatalf("defaults not applied: %+v", f.Resource)
	}
	b, err := f.Node("beta")
	if err != nil || *b.ID != 1 {
		t.Fatalf("beta = %+v, %v", b, err)
	}
	if _, err := f.Node("gamma"); err == nil || !strings.Contains(err.Error(), "alpha, beta") {
		t.Fatalf("unknown node error = %v", err)
	}
}

func TestParseBad(t *testing.T) {
	cases := []struct {
		name, old, new, want string
	}{
		{"unknown key", `protocol = "c"`, "protocol = \"c\"\nspeed = 3", "unknown key resource.speed"},
		{"unknown node key", `admin = "/tmp/a.sock"`, "admin = \"/tmp/a.sock\"\ncolour = 1", "unknown key node.colour"},
		{"missing name", `name = "r0"`, ``, "resource.name: missing"},
		{"bad name", `name = "r0"`, `name = "r 0"`, "resource.name"},
		{"missing size", `size = "64MiB"`, ``, "resource.size"},
		{"bad size", `size = "64MiB"`, `size = "lots"`, "size \"lots\""},
		{"unaligned size", `size = "64MiB"`, `size = 1000`, "multiple of 4KiB"},
		{"bad protocol", `protocol = "c"`, `protocol = "B"`, "resource.protocol"},
		{"bad block size", `protocol = "c"`, "protocol = \"c\"\nblock-size = 3000", "resource.block-size"},
		{"bad congestion", `protocol = "c"`, "protocol = \"c\"\non-congestion = \"drop\"", "resource.on-congestion"},
		{"bad on-io-error", `protocol = "c"`, "protocol = \"c\"\non-io-error = \"panic\"", "resource.on-io-error"},
		{"bad compression", `protocol = "c"`, "protocol = \"c\"\ncompression = \"lz4\"", "resource.compression"},
		{"bad timeout", `protocol = "c"`, "protocol = \"c\"\ntimeout = \"soon\"", "duration \"soon\""},
		{"missing disk", `disk = "/tmp/a.img"`, ``, `node "alpha".disk: missing`},
		{"missing admin", `admin = "/tmp/b.sock"`, ``, `node "beta".admin: missing`},
		{"missing peer", `peer = "127.0.0.2:7789"`, ``, `node "beta".peer: missing`},
		{"duplicate name", `name = "beta"`, `name = "alpha"`, "duplicate name"},
		{"duplicate peer", `peer = "127.0.0.2:7789"`, `peer = "127.0.0.1:7789"`, "duplicate address"},
		{"duplicate disk", `disk = "/tmp/b.img"`, `disk = "/tmp/a.img"`, `node "beta".disk: duplicate`},
		{"duplicate admin", `admin = "/tmp/b.sock"`, `admin = "/tmp/a.sock"`, `node "beta".admin: duplicate`},
		{"relative unix", `nbd = "unix:/tmp/b.nbd"`, `nbd = "unix:b.nbd"`, "must be absolute"},
		{"bad nbd", `nbd = "127.0.0.1:10809"`, `nbd = "10809"`, `node "alpha".nbd`},
		{"peer-listen without peer", `peer = "127.0.0.2:7789"`, `peer-listen = "127.0.0.2:7790"`, `node "beta".peer: missing`},
		{"bad peer-listen", `peer = "127.0.0.2:7789"`, "peer = \"127.0.0.2:7789\"\npeer-listen = \"x\"", "peer-listen"},
		{"peer-listen clashes", `peer = "127.0.0.2:7789"`, "peer = \"127.0.0.2:7789\"\npeer-listen = \"127.0.0.1:7789\"", "duplicate address"},
		{"meta equals disk", `meta = "/tmp/a.meta"`, `meta = "/tmp/a.img"`, "must differ"},
		{"syntax", `size = "64MiB"`, `size = `, "line"},
		{"bad after-sb-0pri", `protocol = "c"`, "protocol = \"c\"\nafter-sb-0pri = \"coin-flip\"", "resource.after-sb-0pri"},
		{"bad resync-rate", `protocol = "c"`, "protocol = \"c\"\nresync-rate = \"fast\"", "\"fast\""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(good, c.old) {
				t.Fatalf("fixture lacks %q", c.old)
			}
			_, err := Parse([]byte(strings.Replace(good, c.old, c.new, 1)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestParseSyncKeys(t *testing.T) {
	f, err := Parse([]byte(strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\ncsums = true\nresync-rate = \"100MiB\"\nresync-min-rate = \"10MiB\"\nafter-sb-0pri = \"discard-zero-changes\"", 1)))
	if err != nil {
		t.Fatal(err)
	}
	r := f.Resource
	if !r.CSums || r.ResyncRate != 100<<20 || r.ResyncMinRate != 10<<20 || r.AfterSB0Pri != SplitBrainDiscardZeroChanges {
		t.Fatalf("resource = %+v", r)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "4k": 4096, "1GiB": 1 << 30, "512M": 512 << 20, "2 TiB": 2 << 40} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1.5G", "99999999999T"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) succeeded", in)
		}
	}
}

// TestEveryKeyDocumented: each key the resource file accepts appears in the
// README's configuration example.
func TestEveryKeyDocumented(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []reflect.Type{reflect.TypeOf(Resource{}), reflect.TypeOf(Node{})} {
		for i := 0; i < typ.NumField(); i++ {
			key := typ.Field(i).Tag.Get("toml")
			if key == "" {
				continue
			}
			if !regexp.MustCompile(`(?m)^#?\s*` + regexp.QuoteMeta(key) + `\s*=`).Match(readme) {
				t.Errorf("config key %q is not in README.md's configuration example", key)
			}
		}
	}
}

// TestPolicyWords: each policy key takes exactly its words, parsed into the
// typed value the engine uses, and refuses any other naming the key.
func TestPolicyWords(t *testing.T) {
	for _, c := range []struct {
		line  string
		check func(Resource) bool
	}{
		{`on-congestion = "pull-ahead"`, func(r Resource) bool { return r.OnCongestion == CongestionPullAhead }},
		{`on-congestion = "block"`, func(r Resource) bool { return r.OnCongestion == CongestionBlock }},
		{`on-io-error = "pass-on"`, func(r Resource) bool { return r.OnIOError == IOErrorPassOn }},
		{`after-sb-0pri = "disconnect"`, func(r Resource) bool { return r.AfterSB0Pri == SplitBrainDisconnect }},
		{`compression = "zstd"`, func(r Resource) bool { return r.Compression == protocol.CodecZstd }},
		{`protocol = "A"`, func(r Resource) bool { return r.Protocol == api.ProtocolA }},
	} {
		src := strings.Replace(good, `protocol = "c"`, c.line, 1)
		if !strings.HasPrefix(c.line, "protocol") {
			src = strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\n"+c.line, 1)
		}
		f, err := Parse([]byte(src))
		if err != nil {
			t.Errorf("%s: %v", c.line, err)
			continue
		}
		if !c.check(f.Resource) {
			t.Errorf("%s: parsed as %+v", c.line, f.Resource)
		}
		if got := strings.SplitN(c.line, `"`, 3)[1]; !strings.EqualFold(fmt.Sprint(valueOf(f.Resource, c.line)), got) {
			t.Errorf("%s: String() = %v", c.line, valueOf(f.Resource, c.line))
		}
	}
	_, err := Parse([]byte(strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\non-congestion = \"Block\"", 1)))
	if err == nil || !strings.Contains(err.Error(), "resource.on-congestion") || !strings.Contains(err.Error(), `"block" or "pull-ahead"`) {
		t.Fatalf("a wrong word: %v", err)
	}
}

func valueOf(r Resource, line string) any {
	switch strings.Fields(line)[0] {
	case "on-congestion":
		return r.OnCongestion
	case "on-io-error":
		return r.OnIOError
	case "after-sb-0pri":
		return r.AfterSB0Pri
	case "compression":
		return r.Compression
	}
	return r.Protocol
}

const witnessNode = `
[[node]]
name = "tie"
disk = "none"
meta = "/tmp/tie.state"
peer = "127.0.0.3:7789"
admin = "/tmp/tie.sock"
`

// quorum defaults to majority with three voters (a witness counts) and to
// off with two; settings that let both halves of a partition have quorum,
// or automatic failover without quorum, are refused.
func TestQuorumKeys(t *testing.T) {
	two, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if two.Resource.Quorum != QuorumOff || two.Resource.Quorum.Votes(2) != 0 {
		t.Fatalf("two nodes: quorum %v", two.Resource.Quorum)
	}
	three, err := Parse([]byte(good + witnessNode))
	if err != nil {
		t.Fatal(err)
	}
	if three.Resource.Quorum != QuorumMajority || three.Resource.Quorum.Votes(3) != 2 {
		t.Fatalf("two nodes and a witness: quorum %v", three.Resource.Quorum)
	}
	w, _ := three.Node("tie")
	if !w.Witness() || w.NBD != "" {
		t.Fatalf("witness: %+v", w)
	}
	withRes := func(lines string, nodes string) error {
		_, err := Parse([]byte(strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\n"+lines, 1) + nodes))
		return err
	}
	if err := withRes("quorum = 2\nauto-promote = true\non-no-quorum = \"io-error\"\nauto-failback = true", witnessNode); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ lines, nodes, want string }{
		{"quorum = 1", witnessNode, "two halves"},
		{"quorum = 4", witnessNode, "more votes"},
		{"quorum = \"most\"", witnessNode, "majority"},
		{"auto-promote = true", "", "add a witness"},
		{"quorum = \"off\"\nauto-promote = true", witnessNode, "needs quorum"},
		{"auto-failback = true", witnessNode, "needs auto-promote"},
		{"on-no-quorum = \"panic\"", witnessNode, "suspend-io"},
		{"", strings.Replace(witnessNode, `admin = "/tmp/tie.sock"`, "admin = \"/tmp/tie.sock\"\nnbd = \"127.0.0.3:10809\"", 1), "serves no data"},
	} {
		err := withRes(c.lines, c.nodes)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.lines, err, c.want)
		}
	}
}

// snapshot-store-size turns snapshots on (0, the default, is off); each
// data node's store defaults to its meta path + ".snap"; a witness has
// none; stores may not collide with a disk, a meta file or each other.
func TestSnapshotKeys(t *testing.T) {
	f, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := f.Node("alpha")
	if f.Resource.SnapshotStoreSize != 0 || a.SnapshotStorePath() != "/tmp/a.meta.snap" || f.SnapshotReadMinRateBytes() != DefaultSnapshotReadMinRate {
		t.Fatalf("defaults: size %d, store %q, read min rate %d", f.Resource.SnapshotStoreSize, a.SnapshotStorePath(), f.SnapshotReadMinRateBytes())
	}
	for val, want := range map[string]int64{`"0"`: 0, `"64MiB"`: 64 << 20} {
		f, err := Parse([]byte(strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\nsnapshot-read-min-rate = "+val, 1)))
		if err != nil || f.SnapshotReadMinRateBytes() != want {
			t.Fatalf("snapshot-read-min-rate = %s: %v, %d", val, err, f.SnapshotReadMinRateBytes())
		}
	}
	src := strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\nsnapshot-store-size = \"2GiB\"", 1)
	src = strings.Replace(src, `admin = "/tmp/b.sock"`, "admin = \"/tmp/b.sock\"\nsnapshot-store = \"/srv/b.snap\"", 1)
	f, err = Parse([]byte(src + witnessNode))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := f.Node("beta")
	w, _ := f.Node("tie")
	if f.Resource.SnapshotStoreSize != 2<<30 || b.SnapshotStorePath() != "/srv/b.snap" || w.SnapshotStorePath() != "" {
		t.Fatalf("size %d, beta's store %q, witness's %q", f.Resource.SnapshotStoreSize, b.SnapshotStorePath(), w.SnapshotStorePath())
	}
	for _, c := range []struct{ old, new, want string }{
		{`protocol = "c"`, "protocol = \"c\"\nsnapshot-store-size = 4096", "resource.snapshot-store-size 4096: must be 0 (snapshots off) or at least 1MiB"},
		{`protocol = "c"`, "protocol = \"c\"\nsnapshot-store-size = -5", "resource.snapshot-store-size -5"},
		{`protocol = "c"`, "protocol = \"c\"\nsnapshot-store-size = \"lots\"", `size "lots"`},
		{`protocol = "c"`, "protocol = \"c\"\nsnapshot-read-min-rate = \"100KiB\"", "resource.snapshot-read-min-rate 102400: must be 0 (snapshot reads do not yield) or at least 1MiB"},
		{`protocol = "c"`, "protocol = \"c\"\nsnapshot-read-min-rate = -1", "resource.snapshot-read-min-rate -1"},
		{`admin = "/tmp/a.sock"`, "admin = \"/tmp/a.sock\"\nsnapshot-store = \"/tmp/a.img\"", `node "alpha".snapshot-store: must differ from disk and meta`},
		{`admin = "/tmp/b.sock"`, "admin = \"/tmp/b.sock\"\nsnapshot-store = \"/tmp/a.meta.snap\"", `node "beta".snapshot-store: duplicate "/tmp/a.meta.snap"`},
		{`admin = "/tmp/tie.sock"`, "admin = \"/tmp/tie.sock\"\nsnapshot-store = \"/tmp/tie.snap\"", `node "tie".snapshot-store: a witness`},
	} {
		src := good + witnessNode
		if !strings.Contains(src, c.old) {
			t.Fatalf("fixture lacks %q", c.old)
		}
		_, err := Parse([]byte(strings.Replace(src, c.old, c.new, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.new, err, c.want)
		}
	}
}

// A resource of several nodes authenticates its peers unless the file says
// insecure; the secret file must be a regular file only its owner can
// read or change.
func TestPeerAuthRequired(t *testing.T) {
	plain := strings.Replace(good, "insecure = true\n", "", 1)
	_, err := Parse([]byte(plain))
	for _, want := range []string{"resource r0: 2 nodes and no peer authentication", "chmod 600", `secret-file = "r0.secret"`, "insecure = true"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("no secret, no TLS: err = %v, want it to say %q", err, want)
		}
	}
	// One node has no peer link to protect.
	one := plain[:strings.Index(plain, "\n[[node]]\nname = \"beta\"")]
	if _, err := Parse([]byte(one)); err != nil {
		t.Fatalf("one node without a secret: %v", err)
	}
	// A witness is a peer like any other.
	if _, err := Parse([]byte(one + witnessNode)); err == nil || !strings.Contains(err.Error(), "2 nodes and no peer authentication") {
		t.Fatalf("a data node and a witness without a secret: %v", err)
	}

	dir := t.TempDir()
	load := func(mode os.FileMode, content string) error {
		sp := filepath.Join(dir, "r0.secret")
		os.Remove(sp)
		if mode != 0 {
			if err := os.WriteFile(sp, []byte(content), mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(sp, mode); err != nil { // past the umask
				t.Fatal(err)
			}
		}
		p := filepath.Join(dir, "r0.toml")
		if err := os.WriteFile(p, []byte(strings.Replace(plain, `protocol = "c"`, "protocol = \"c\"\nsecret-file = \"r0.secret\"", 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := Load(p)
		if err != nil {
			return err
		}
		_, err = f.Secret()
		return err
	}
	if err := load(0o600, "a long enough secret\n"); err != nil {
		t.Fatalf("0600 secret: %v", err)
	}
	if err := load(0o400, "a long enough secret\n"); err != nil {
		t.Fatalf("0400 secret: %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602} {
		err := load(mode, "a long enough secret\n")
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("mode %04o", mode)) || !strings.Contains(err.Error(), "chmod 600 "+filepath.Join(dir, "r0.secret")) {
			t.Errorf("secret of mode %04o: err = %v", mode, err)
		}
	}
	if err := load(0, ""); err == nil || !strings.Contains(err.Error(), "resource.secret-file") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing secret file: %v", err)
	}
	if err := load(0o600, "short\n"); err == nil || !strings.Contains(err.Error(), "shorter than 8") {
		t.Errorf("short secret: %v", err)
	}
	// A directory is not a secret.
	os.Remove(filepath.Join(dir, "r0.secret"))
	if err := os.Mkdir(filepath.Join(dir, "r0.secret"), 0o700); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "r0.toml")
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory as secret: %v", err)
	}
}
