package main

import (
	"log/slog"
	"testing"

	"github.com/repd/repd/config"
)

// The transport settings of the resource file reach the engine.
func TestReplicaConfigTransport(t *testing.T) {
	f, err := config.Parse([]byte(`
[resource]
name = "r0"
size = "64MiB"
compression = "zstd"
compression-level = 7
dedup-index-size = "16MiB"

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
nbd = "127.0.0.2:10809"
peer = "127.0.0.2:7789"
admin = "/tmp/b.sock"
`))
	if err != nil {
		t.Fatal(err)
	}
	self, _ := f.Node("alpha")
	c := replicaConfig(f, self, []byte("secret-secret"), slog.Default())
	if c.Compression != "zstd" || c.CompressionLevel != 7 || c.DedupIndexBytes != 16<<20 || string(c.Secret) != "secret-secret" {
		t.Fatalf("replica config: compression %q level %d dedup %d", c.Compression, c.CompressionLevel, c.DedupIndexBytes)
	}
}
