package replica

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/repd/repd/api"
	"github.com/repd/repd/nbd"
)

var (
	_ nbd.Device  = (*Node)(nil)
	_ nbd.Trimmer = (*Node)(nil)
	_ nbd.Zeroer  = (*Node)(nil)
	_ nbd.Quick   = (*Node)(nil)
)

// The NBD reader may run a write itself only while no peer receives it (a
// replicated write waits for the network); reads are always local.
func TestQuick(t *testing.T) {
	for _, proto := range []api.Protocol{api.ProtocolC, api.ProtocolA} {
		c := newCluster(t, 2, func(_ int, cfg *Config) { cfg.Protocol = proto })
		alpha := c.bootstrap()
		if alpha.Quick(true, 4096) {
			t.Fatalf("protocol %s: a write with a connected peer reported quick", proto)
		}
		if !alpha.Quick(false, 4096) {
			t.Fatalf("protocol %s: a read reported not quick", proto)
		}
		c.stop(c.nodes[1])
		waitFor(t, 10e9, "alpha stops replicating", func() bool { return alpha.Quick(true, 4096) })
		if err := alpha.WriteAt(context.Background(), make([]byte, 4096), 0, false); err != nil {
			t.Fatal(err)
		}
	}
}

// Trim, write-zeroes and FUA writes replicate; a secondary refuses writes
// with EPERM and an Inconsistent node refuses reads.
func TestDeviceOpsReplicate(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.waitConnected(10e9)
	ctx := context.Background()
	if err := c.nodes[1].n.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read on an Inconsistent node: %v", err)
	}
	if err := c.nodes[0].n.NewCurrentUUID(true); err != nil {
		t.Fatal(err)
	}
	c.waitSynced(10e9)
	alpha := c.nodes[0].n
	if err := alpha.Promote(false); err != nil {
		t.Fatal(err)
	}
	ones := bytes.Repeat([]byte{1}, 3<<20)
	if err := alpha.WriteAt(ctx, ones, 0, true); err != nil { // split into 1 MiB frames
		t.Fatal(err)
	}
	if err := alpha.Trim(ctx, 4096, 8192, false); err != nil {
		t.Fatal(err)
	}
	if err := alpha.WriteZeroes(ctx, 1<<20, 1<<20, true, true); err != nil {
		t.Fatal(err)
	}
	if err := alpha.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(ones)
	clear(want[4096 : 4096+8192])
	clear(want[1<<20 : 2<<20])
	for _, tn := range c.nodes {
		if got := readFileAt(t, tn.path, 0, 3<<20); !bytes.Equal(got, want) {
			t.Fatalf("%s: contents differ after trim/zeroes", tn.cfg.Self.Name)
		}
	}
	got := make([]byte, 4096)
	if err := c.nodes[1].n.ReadAt(ctx, got, 0); err != nil || got[0] != 1 {
		t.Fatalf("read on an UpToDate secondary: %v", err)
	}
	if err := c.nodes[1].n.Trim(ctx, 0, 4096, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("trim on a secondary: %v", err)
	}
	if err := alpha.WriteAt(ctx, ones[:4096], testSize, false); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("write beyond the end: %v", err)
	}
}
