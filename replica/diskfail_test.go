package replica

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
)

// faultyStore fails every write, zeroes, trim and flush with err once armed
// (a full or broken disk keeps failing).
type faultyStore struct {
	Store
	armed  atomic.Bool
	err    error
	failed atomic.Int64
}

func (f *faultyStore) fail() error {
	if f.armed.Load() {
		f.failed.Add(1)
		return f.err
	}
	return nil
}

func (f *faultyStore) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.WriteAt(ctx, p, off, fua)
}

func (f *faultyStore) Trim(ctx context.Context, off, n int64, fua bool) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Trim(ctx, off, n, fua)
}

func (f *faultyStore) WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.WriteZeroes(ctx, off, n, noHole, fua)
}

func (f *faultyStore) Flush(ctx context.Context) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Flush(ctx)
}

// faultyCluster is a k-node cluster whose stores can be made to fail.
func faultyCluster(t *testing.T, k int, errno error, mod func(i int, c *Config)) (*cluster, []*faultyStore) {
	fs := make([]*faultyStore, k)
	c := newClusterWrap(t, k, mod, func(i int, s Store) Store {
		fs[i] = &faultyStore{Store: s, err: &wrapErr{errno}}
		return fs[i]
	})
	return c, fs
}

type wrapErr struct{ errno error }

func (w *wrapErr) Error() string { return "pwrite: " + w.errno.Error() }
func (w *wrapErr) Unwrap() error { return w.errno }

// A Secondary's disk fills up: it detaches (Failed), the Primary goes on
// without errors, marks its bitmap and stops shipping; the connection stays
// up (no reconnect storm).
func TestSecondaryDiskFailureDetaches(t *testing.T) {
	c, fs := faultyCluster(t, 2, syscall.ENOSPC, nil)
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	ctx := context.Background()
	buf := bytes.Repeat([]byte{7}, 8192)
	for i := range 20 {
		if err := alpha.WriteAt(ctx, buf, int64(i)*8192, false); err != nil {
			t.Fatal(err)
		}
	}
	fs[1].armed.Store(true)
	start := time.Now()
	for i := range 200 {
		if err := alpha.WriteAt(ctx, buf, int64(i%100)*8192, i%10 == 0); err != nil {
			t.Fatalf("write %d on the Primary failed with the Secondary's disk full: %v", i, err)
		}
	}
	if err := alpha.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Fatalf("200 writes took %v (waited for the failed peer?)", d)
	}
	waitFor(t, 5*time.Second, "beta Failed, seen by alpha", func() bool {
		ps := peerState(alpha, "beta")
		return beta.Status().Disk == "Failed" && ps.Disk == "Failed" && ps.Replication == api.ReplOff
	})
	if fs[1].failed.Load() == 0 {
		t.Fatal("the faulty store never failed")
	}
	if d := beta.meta.Superblock().Disk; d != Failed {
		t.Fatalf("beta's meta superblock says %v", d)
	}
	time.Sleep(1500 * time.Millisecond) // > Timeout: no ack timeout, no reconnect
	for i := range 50 {
		if err := alpha.WriteAt(ctx, buf, int64(i)*8192, false); err != nil {
			t.Fatal(err)
		}
	}
	ps := peerState(alpha, "beta")
	if ps.Connection != api.Connected || ps.Connects != 1 || ps.OutOfSyncKiB == 0 {
		t.Fatalf("alpha's view of beta: %+v (want Connected once, out of sync marked)", ps)
	}
	if n := fs[1].failed.Load(); n > 20 {
		t.Fatalf("beta's store was tried %d times after failing", n)
	}
	if err := beta.Promote(false); !errors.Is(err, ErrRefused) {
		t.Fatalf("promote on a Failed disk: %v", err)
	}
	// A restart with a working disk attaches it Outdated and resyncs.
	fs[1].armed.Store(false)
	c.stop(c.nodes[1])
	c.start(c.nodes[1])
	c.waitSynced(10 * time.Second)
	c.assertEqualStores()
}

// The Primary's disk fails under protocol C with an UpToDate peer connected:
// the write succeeds (the peer has it), the local disk is Failed, reads are
// refused with EIO; once the peer is gone, writes fail.
func TestPrimaryDiskFailureDetaches(t *testing.T) {
	c, fs := faultyCluster(t, 2, syscall.EIO, nil)
	alpha := c.bootstrap()
	ctx := context.Background()
	fs[0].armed.Store(true)
	data := bytes.Repeat([]byte("detached"), 4096/8)
	for i := range 10 {
		if err := alpha.WriteAt(ctx, data, int64(i)*4096, i == 5); err != nil {
			t.Fatalf("write %d with the local disk failing and an UpToDate peer: %v", i, err)
		}
	}
	if err := alpha.Flush(ctx); err != nil {
		t.Fatalf("flush on a detached Primary with a peer: %v", err)
	}
	if got := readFileAt(t, c.nodes[1].path, 9*4096, 4096); !bytes.Equal(got, data) {
		t.Fatal("the acknowledged write is not on the peer")
	}
	if d := alpha.Status().Disk; d != "Failed" {
		t.Fatalf("alpha's disk is %s", d)
	}
	waitFor(t, 5*time.Second, "beta sees alpha Failed", func() bool { return peerState(c.nodes[1].n, "alpha").Disk == "Failed" })
	if err := alpha.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read on a detached Primary: %v", err)
	}
	if err := alpha.Disconnect("beta"); err != nil {
		t.Fatal(err)
	}
	err := alpha.WriteAt(ctx, data, 0, false)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("write with no copy anywhere: %v", err)
	}
	t.Logf("no copy: %v", err)
}

// With no peer connected the failing write returns the disk's error
// (ENOSPC here, which NBD reports as ENOSPC). With on-io-error pass-on the
// error goes to the caller and the disk stays UpToDate.
func TestPrimaryDiskFailureNoPeer(t *testing.T) {
	for _, policy := range []config.IOErrorPolicy{config.IOErrorDetach, config.IOErrorPassOn} {
		t.Run(policy.String(), func(t *testing.T) {
			c, fs := faultyCluster(t, 2, syscall.ENOSPC, func(i int, cfg *Config) { cfg.OnIOError = policy })
			alpha := c.bootstrap()
			ctx := context.Background()
			if err := alpha.Disconnect("beta"); err != nil {
				t.Fatal(err)
			}
			fs[0].armed.Store(true)
			err := alpha.WriteAt(ctx, make([]byte, 4096), 0, false)
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write: %v", err)
			}
			want := "Failed"
			if policy == config.IOErrorPassOn {
				want = "UpToDate"
			}
			if d := alpha.Status().Disk; d != want {
				t.Fatalf("disk %s, want %s", d, want)
			}
			t.Logf("%s: %v", policy, err)
		})
	}
}
