package replica

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/config"
	"github.com/repd/repd/protocol"
)

// The resource file's settings reach the engine as the typed values the
// config package parsed, and al-extents reaches the meta file, whether the
// daemon creates it (Open) or repctl create-md does (CreateMeta).
func TestFromFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "r0.secret"), []byte("secret-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := `
[resource]
name = "r0"
size = "64MiB"
protocol = "A"
secret-file = "r0.secret"
compression = "zstd"
compression-level = 7
dedup-index-size = "16MiB"
on-congestion = "pull-ahead"
on-io-error = "pass-on"
after-sb-0pri = "discard-zero-changes"
al-extents = 31

[[node]]
name = "alpha"
disk = "DIR/a.img"
meta = "DIR/a.meta"
nbd = "127.0.0.1:10809"
peer = "127.0.0.1:7789"
admin = "DIR/a.sock"

[[node]]
name = "beta"
disk = "DIR/b.img"
meta = "DIR/b.meta"
nbd = "127.0.0.2:10809"
peer = "127.0.0.2:7789"
admin = "DIR/b.sock"
`
	path := filepath.Join(dir, "r0.toml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(src, "DIR", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := FromFile(f, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if c.Compression != protocol.CodecZstd || c.CompressionLevel != 7 || c.DedupIndexBytes != 16<<20 || string(c.Secret) != "secret-secret" ||
		c.OnCongestion != config.CongestionPullAhead || c.OnIOError != config.IOErrorPassOn || c.AfterSB0Pri != config.SplitBrainDiscardZeroChanges ||
		c.ALExtents != 31 || c.Protocol != 'A' || len(c.Peers) != 1 || c.Peers[0].Name != "beta" || c.Self.Addr != "127.0.0.1:7789" {
		t.Fatalf("config from file: %+v", c)
	}
	if _, err := FromFile(f, "gamma"); err == nil {
		t.Fatal("an unknown node was accepted")
	}

	// Open creates the meta file with the configured activity-log size.
	st, err := OpenFileStore(filepath.Join(dir, "a.img"), c.Size)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(c, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if got := metaALExtents(t, c); got != 31 {
		t.Fatalf("meta file made by Open has %d AL extents, want 31", got)
	}

	// So does CreateMeta (repctl create-md), which refuses to overwrite
	// without force.
	b, err := FromFile(f, "beta")
	if err != nil {
		t.Fatal(err)
	}
	if err := CreateMeta(b, false); err != nil {
		t.Fatal(err)
	}
	if got := metaALExtents(t, b); got != 31 {
		t.Fatalf("meta file made by CreateMeta has %d AL extents, want 31", got)
	}
	if err := CreateMeta(b, false); err == nil {
		t.Fatal("CreateMeta overwrote an existing meta file without force")
	}
	if err := CreateMeta(b, true); err != nil {
		t.Fatal(err)
	}
}

func metaALExtents(t *testing.T, c Config) int {
	t.Helper()
	c, err := c.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	m, err := bitmap.Open(c.MetaPath, c.identity())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return m.Superblock().ALExtents
}
