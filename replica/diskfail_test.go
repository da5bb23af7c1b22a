package replica

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/config"
	"github.com/repd/repd/protocol"
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
	if d := beta.meta.Superblock().Disk; d != diskFailed {
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

// faultyMeta fails every write and sync of a meta file once armed.
type faultyMeta struct {
	bitmap.File
	armed atomic.Bool
}

func (f *faultyMeta) WriteAt(p []byte, off int64) (int, error) {
	if f.armed.Load() {
		return 0, syscall.EIO
	}
	return f.File.WriteAt(p, off)
}

func (f *faultyMeta) Sync() error {
	if f.armed.Load() {
		return syscall.EIO
	}
	return f.File.Sync()
}

// A meta file that cannot be written any more detaches the local disk
// whatever on-io-error says (its out-of-sync marks could not be trusted
// after a crash), and the verb that needed the marks durable fails saying
// so: here invalidate on a Secondary, and the disconnect marks of a
// Primary whose peer went away.
func TestMetaWriteFailureDetaches(t *testing.T) {
	metas := make([]*faultyMeta, 2)
	c := newCluster(t, 2, func(i int, cfg *Config) {
		cfg.OnIOError = config.IOErrorPassOn // meta failures detach even so
		cfg.WrapMeta = func(f bitmap.File) bitmap.File {
			metas[i] = &faultyMeta{File: f}
			return metas[i]
		}
	})
	alpha := c.bootstrap()
	beta := c.nodes[1].n
	ctx := context.Background()
	if err := alpha.WriteAt(ctx, bytes.Repeat([]byte{3}, 64<<10), 0, false); err != nil {
		t.Fatal(err)
	}

	metas[1].armed.Store(true)
	err := beta.Invalidate("alpha")
	if err == nil || !strings.Contains(err.Error(), "meta file") || !strings.Contains(err.Error(), "detached") {
		t.Fatalf("invalidate with a broken meta file: %v", err)
	}
	if d := beta.Status().Disk; d != "Failed" {
		t.Fatalf("beta's disk is %s after a meta write failure, want Failed", d)
	}
	if err := beta.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read on a detached node: %v", err)
	}

	// alpha: an activity-log transaction (a write to a cold extent)
	// cannot be written, so alpha detaches; with beta Failed too the
	// write has no copy anywhere and is not acknowledged.
	metas[0].armed.Store(true)
	if err := alpha.WriteAt(ctx, make([]byte, 4096), testSize-4096, false); err == nil {
		t.Fatal("a write with no copy anywhere was acknowledged")
	}
	if d := alpha.Status().Disk; d != "Failed" {
		t.Fatalf("alpha's disk is %s after an activity-log write failure, want Failed", d)
	}
}

// A Primary whose peer drops away with writes unacknowledged marks them;
// when those marks cannot reach the meta file it detaches.
func TestMetaFailureAtDisconnect(t *testing.T) {
	metas := make([]*faultyMeta, 2)
	c := newCluster(t, 2, func(i int, cfg *Config) {
		cfg.WrapMeta = func(f bitmap.File) bitmap.File {
			metas[i] = &faultyMeta{File: f}
			return metas[i]
		}
	})
	alpha := c.bootstrap()
	ctx := context.Background()
	if err := alpha.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil { // the extent is hot now
		t.Fatal(err)
	}
	metas[0].armed.Store(true)
	c.proxy(0, 1).Partition(true)
	// Protocol C: the write waits for beta's ack until beta is dropped,
	// then completes on alpha's copy (marked toward beta).
	if err := alpha.WriteAt(ctx, make([]byte, 4096), 4096, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "alpha detached", func() bool { return alpha.Status().Disk == "Failed" })
}

// A frame the writer refuses (here a control frame larger than any frame
// may be) is not dropped silently: the session ends with the error, and
// the peers connect again.
func TestUnwritableFrameEndsSession(t *testing.T) {
	c := newCluster(t, 2, nil)
	alpha := c.bootstrap()
	p, _ := alpha.peerByName("beta")
	alpha.mu.Lock()
	s := p.sess
	before := p.connects
	alpha.mu.Unlock()
	if s == nil {
		t.Fatal("no session")
	}
	s.queue(ctrlMsg{t: protocol.TypeState, payload: make([]byte, protocol.MaxPayload+1)})
	waitFor(t, 10*time.Second, "a new session", func() bool {
		alpha.mu.Lock()
		defer alpha.mu.Unlock()
		return p.connects > before && p.sess != nil && p.sess != s
	})
	c.logs.mu.Lock()
	logs := c.logs.b.String()
	c.logs.mu.Unlock()
	if !strings.Contains(logs, "write State frame") {
		t.Fatalf("the session did not end with the frame's error; logs:\n%s", logs)
	}
	c.waitSynced(20 * time.Second)
}
