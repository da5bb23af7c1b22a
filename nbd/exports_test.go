package nbd_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

// exportList is a changing list of exports, as the daemon keeps one while
// snapshots are taken and deleted.
type exportList struct {
	mu   sync.Mutex
	exps []nbd.Export
}

func (l *exportList) get() []nbd.Export {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.exps)
}

func (l *exportList) add(e nbd.Export) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.exps = append(l.exps, e)
}

func (l *exportList) remove(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.exps = slices.DeleteFunc(l.exps, func(e nbd.Export) bool { return e.Name == name })
}

func listNames(t *testing.T, n *nbdtest.Negotiation) []string {
	t.Helper()
	rs, err := n.Option(nbd.OptList, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rs {
		names = append(names, string(r.Data[4:4+binary.BigEndian.Uint32(r.Data)]))
	}
	return names
}

// Snapshots come and go: the list follows, names with '@' work in LIST,
// INFO and GO, and a connection in transmission on an export that left
// the list keeps its Device (which may fail requests once the snapshot is
// gone, failing only those).
func TestExportsComeAndGo(t *testing.T) {
	s1 := snapDevice()
	l := &exportList{exps: []nbd.Export{{Name: "r0", Device: newMem(1 << 20)}}}
	l.add(nbd.Export{Name: "r0@s1", Device: s1, ReadOnly: true})
	addr := serve(t, &nbd.Server{ExportsFunc: l.get})

	c := structuredGo(t, addr, "r0@s1", nbd.ContextBaseAllocation, snap0)
	n := negotiate(t, addr, fixedNoZeroes)
	if got := listNames(t, n); !slices.Equal(got, []string{"r0", "r0@s1"}) {
		t.Fatalf("LIST = %q", got)
	}
	if info, err := n.Info(nbd.OptInfo, "r0@s1", nbd.InfoName); err != nil || info.Name != "r0@s1" || info.Flags&nbd.FlagReadOnly == 0 {
		t.Fatalf("INFO r0@s1: %+v %v", info, err)
	}

	l.remove("r0@s1")
	l.add(nbd.Export{Name: "r0@s2", Device: snapDevice(), ReadOnly: true})
	if got := listNames(t, n); !slices.Equal(got, []string{"r0", "r0@s2"}) {
		t.Fatalf("LIST after the change = %q", got)
	}
	if _, err := n.Info(nbd.OptGo, "r0@s1"); optErr(err) != nbd.RepErrUnknown {
		t.Fatalf("GO to a deleted snapshot: %v, want NBD_REP_ERR_UNKNOWN", err)
	}
	// The connection on r0@s1 goes on.
	buf := make([]byte, 64<<10)
	if err := c.Read(buf, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := c.BlockStatus(0, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	s1.drop(snap0) // the device forgets the bitmap: only status in it fails
	if _, err := c.BlockStatus(0, 1<<20, 0); nbdtest.ErrorCode(err) != nbd.EIO {
		t.Fatalf("status of a dropped bitmap: %v, want EIO", err)
	}
	if err := c.Read(buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Go("r0@s2"); err != nil {
		t.Fatal(err)
	}
}

// Under -race: connections negotiate, list, enter and read while
// snapshots are added and removed.
func TestExportsChurn(t *testing.T) {
	l := &exportList{exps: []nbd.Export{{Name: "r0", Device: newMem(1 << 20)}}}
	addr := serve(t, &nbd.Server{ExportsFunc: l.get})
	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Add(1)
	go func() {
		defer churn.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Two of the four names are listed at any time.
			l.add(nbd.Export{Name: fmt.Sprintf("r0@s%d", i%4), Device: snapDevice(), ReadOnly: true})
			time.Sleep(time.Millisecond)
			l.remove(fmt.Sprintf("r0@s%d", (i+3)%4))
		}
	}()
	var wg sync.WaitGroup
	var entered atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				n, err := nbdtest.Negotiate(rawDial(t, addr), fixedNoZeroes)
				if err != nil {
					t.Error(err)
					return
				}
				n.StructuredReply()
				n.ListMetaContext(fmt.Sprintf("r0@s%d", (g+i)%4))
				n.Option(nbd.OptList, nil)
				// The snapshot may be gone at SET and back at GO: then
				// nothing is selected.
				_, setErr := n.SetMetaContext(fmt.Sprintf("r0@s%d", (g+i)%4), nbd.ContextBaseAllocation, snap0)
				c, err := n.Go(fmt.Sprintf("r0@s%d", (g+i)%4))
				if err != nil {
					n.Conn.Close()
					continue
				}
				entered.Add(1)
				buf := make([]byte, 128<<10)
				if err := c.Read(buf, 0); err != nil {
					t.Errorf("read: %v", err)
				}
				if _, err := c.BlockStatus(0, 4<<20, 0); (err != nil) != (setErr != nil) {
					t.Errorf("block status: %v (SET: %v)", err, setErr)
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(stop)
	churn.Wait()
	t.Logf("%d of 80 connections entered a snapshot", entered.Load())
}

// guardDevice fails the test if it is called after closed is set.
type guardDevice struct {
	*sparseDevice
	t      *testing.T
	closed atomic.Bool
	calls  atomic.Int64
}

func (g *guardDevice) check(what string) {
	g.calls.Add(1)
	if g.closed.Load() {
		g.t.Errorf("%s after CloseExport returned", what)
	}
}

func (g *guardDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	g.check("ReadAt")
	return g.sparseDevice.ReadAt(ctx, p, off)
}

func (g *guardDevice) Allocation(ctx context.Context, off, n int64) ([]nbd.Extent, error) {
	g.check("Allocation")
	return g.sparseDevice.Allocation(ctx, off, n)
}

// CloseExport ends the connections on one export (their in-flight
// requests answered), not the others, and after it returns the export's
// Device is not called again, also by connections that were entering it.
func TestCloseExport(t *testing.T) {
	l := &exportList{}
	live := newMem(1 << 20)
	l.add(nbd.Export{Name: "r0", Device: live})
	srv := &nbd.Server{ExportsFunc: l.get}
	addr := serve(t, srv)
	r0 := dial(t, addr, "r0")

	for i := range 20 {
		name := fmt.Sprintf("r0@s%d", i)
		dev := &guardDevice{sparseDevice: snapDevice(), t: t}
		l.add(nbd.Export{Name: name, Device: dev, ReadOnly: true})
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := nbdtest.Dial("tcp", addr, name)
				if err != nil {
					return // the export was gone already
				}
				defer c.Close()
				buf := make([]byte, 64<<10)
				// Until the connection ends (ESHUTDOWN, closed), or for a
				// while if CloseExport missed it (the guard complains).
				for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
					if err := c.Read(buf, 64<<10); err != nil {
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(i%5) * time.Millisecond)
		l.remove(name)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := srv.CloseExport(ctx, name); err != nil {
			t.Fatal(err)
		}
		cancel()
		dev.closed.Store(true)
		wg.Wait()
	}
	// The live export is untouched.
	if err := r0.Write(pattern(4096, 1), 0, false); err != nil {
		t.Fatal(err)
	}
}

// A Device call that does not return holds CloseExport until its context
// ends; then the connection is closed at once and the Device's context
// cancelled.
func TestCloseExportTimeout(t *testing.T) {
	hold := &holdDevice{memDevice: newMem(1 << 20), hold: map[int64]bool{0: true}, release: make(chan struct{}), entered: make(chan int64, 1)}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "r0@s1", Device: hold}}}
	addr := serve(t, srv)
	c := dial(t, addr, "r0@s1")
	call, err := c.Start(nbdtest.Request{Type: nbd.CmdRead, Length: 4096})
	if err != nil {
		t.Fatal(err)
	}
	<-hold.entered
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := srv.CloseExport(ctx, "r0@s1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CloseExport with a stuck device call: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("CloseExport took %v", d)
	}
	if _, err := call.Wait(); err == nil {
		t.Fatal("the stuck request was answered; want the connection closed")
	}
	waitClosed(t, c, 5*time.Second)
}
