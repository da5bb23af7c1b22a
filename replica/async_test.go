package replica

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/nbd"
)

var _ nbd.AsyncWriter = (*Node)(nil)

// asyncResult records one StartWrite's completion.
type asyncResult struct {
	mu    sync.Mutex
	calls int
	err   error
	at    time.Time
	check func() // run in done, as the NBD server queues the reply there
	ch    chan struct{}
}

func newAsyncResult() *asyncResult { return &asyncResult{ch: make(chan struct{})} }

func (r *asyncResult) done(err error) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.err, r.at = err, time.Now()
	if r.check != nil {
		r.check()
	}
	if r.calls == 1 {
		close(r.ch)
	}
	return nil
}

func (r *asyncResult) wait(t *testing.T, what string) error {
	t.Helper()
	select {
	case <-r.ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not completed after 10s", what)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// StartWrite under protocol C completes in the goroutine that receives the
// peer's ack, once: by then the peer has the data. Under protocol A it
// completes at once, after the local write. FUA writes, writes larger than
// a frame and writes on a Secondary are declined (the server uses WriteAt).
func TestStartWrite(t *testing.T) {
	for _, proto := range []api.Protocol{api.ProtocolC, api.ProtocolA} {
		c := newCluster(t, 2, func(_ int, cfg *Config) { cfg.Protocol = proto })
		alpha := c.bootstrap()
		beta := c.nodes[1].n
		ctx := context.Background()
		var started []*asyncResult
		for i := range 8 {
			data := bytes.Repeat([]byte{byte(i + 1)}, 4096)
			want := bytes.Clone(data)
			off := int64(i) * 8192
			r := newAsyncResult()
			r.check = func() {
				if proto == api.ProtocolC {
					got := make([]byte, 4096)
					if err := beta.st.ReadAt(ctx, got, off); err != nil || !bytes.Equal(got, want) {
						t.Errorf("protocol C: write %d completed before beta had it (read err %v)", i, err)
					}
				}
				// The caller's buffer is free once done is called (under
				// protocol C the journal ships it from there until then).
				clear(data)
			}
			if !alpha.StartWrite(ctx, data, off, false, i == 7, r.done) {
				t.Fatalf("protocol %s: StartWrite declined a 4 KiB write on the Primary", proto)
			}
			started = append(started, r)
			if proto == api.ProtocolA {
				// Done once local: before StartWrite returned.
				select {
				case <-r.ch:
				default:
					t.Fatalf("protocol A: write %d not completed after the local write", i)
				}
			}
		}
		// The last write kicked them all (no Kick call).
		for i, r := range started {
			if err := r.wait(t, "write"); err != nil {
				t.Fatalf("protocol %s: write %d: %v", proto, i, err)
			}
		}
		time.Sleep(50 * time.Millisecond) // a second report would show here
		for i, r := range started {
			r.mu.Lock()
			if r.calls != 1 {
				t.Errorf("protocol %s: write %d completed %d times", proto, i, r.calls)
			}
			r.mu.Unlock()
		}
		c.waitSynced(10 * time.Second)
		c.assertEqualStores()

		never := func(err error) func() {
			t.Errorf("protocol %s: a declined write completed (%v)", proto, err)
			return nil
		}
		if alpha.StartWrite(ctx, make([]byte, 4096), 0, true, true, never) {
			t.Errorf("protocol %s: a FUA write was started asynchronously", proto)
		}
		if alpha.StartWrite(ctx, make([]byte, 2<<20), 0, false, true, never) {
			t.Errorf("protocol %s: a write larger than a frame was started asynchronously", proto)
		}
		if beta.StartWrite(ctx, make([]byte, 4096), 0, false, true, never) {
			t.Errorf("protocol %s: a Secondary started a write", proto)
		}
	}
}

// An asynchronous write never waits for room in the journal (its caller's
// unkicked writes may hold it): with the peer cut off and the journal
// full, StartWrite declines; once the peer is dropped every write started
// completes, once, without error.
func TestStartWriteJournalFull(t *testing.T) {
	c := newCluster(t, 2, func(_ int, cfg *Config) { cfg.JournalBytes = 1 << 20 })
	alpha := c.bootstrap()
	c.isolate(1, true)
	ctx := context.Background()
	var started []*asyncResult
	var calls atomic.Int64
	declined := false
	for i := range 64 {
		r := newAsyncResult()
		done := func(err error) func() { calls.Add(1); return r.done(err) }
		if !alpha.StartWrite(ctx, make([]byte, 64<<10), int64(i)<<16, false, false, done) {
			declined = true
			break
		}
		started = append(started, r)
	}
	alpha.Kick()
	if !declined {
		t.Fatalf("64 writes of 64 KiB started into a 1 MiB journal without a decline")
	}
	if len(started) == 0 {
		t.Fatal("no write started into the empty journal")
	}
	for i, r := range started {
		if err := r.wait(t, "write after the peer is dropped"); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if n := calls.Load(); n != int64(len(started)) {
		t.Fatalf("%d completions for %d writes", n, len(started))
	}
	c.isolate(1, false)
}

// A write whose range a snapshot still needs copied is declined (the
// server writes it with WriteAt, where concurrent copies share their
// fdatasyncs, instead of copying in the NBD reader); once its chunk is
// preserved, writes there start asynchronously again.
func TestStartWriteDeclinesSnapshotCopies(t *testing.T) {
	c := snapCluster(t, 2, 8<<20, nil)
	alpha := c.bootstrap()
	ctx := context.Background()
	if _, err := alpha.Snapshot(ctx, "s", nil); err != nil {
		t.Fatal(err)
	}
	never := func(err error) func() {
		t.Errorf("a declined write completed (%v)", err)
		return nil
	}
	if alpha.StartWrite(ctx, make([]byte, 4096), 0, false, true, never) {
		t.Fatal("a write that needs a snapshot copy was started in the caller's goroutine")
	}
	if err := alpha.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	r := newAsyncResult()
	if !alpha.StartWrite(ctx, bytes.Repeat([]byte{8}, 4096), 4096, false, true, r.done) {
		t.Fatal("a write to a chunk already preserved was declined")
	}
	if err := r.wait(t, "write"); err != nil {
		t.Fatal(err)
	}
}
