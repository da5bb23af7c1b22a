package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/testtool"
)

// snapshotList is `repctl snapshot list --json` of n.
func snapshotList(t *testing.T, n *node) api.SnapshotList {
	t.Helper()
	var l api.SnapshotList
	out := n.mustCtl("snapshot", "list", "--json")
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("snapshot list --json of %s: %v\n%s", n.name, err, out)
	}
	return l
}

func snapshotNames(l api.SnapshotList) string {
	var names []string
	for _, s := range l.Snapshots {
		names = append(names, s.Name)
	}
	return strings.Join(names, ",")
}

// repctl snapshot create/list/delete against real daemons: the Primary
// takes a snapshot for every node at one point while qemu-io writes, a
// Secondary asks the Primary for its own, the store's bytes grow as the
// device is overwritten, snapshots survive a clean restart and a SIGKILL,
// refusals exit 3 with the reason, and events and metrics report them.
func TestSnapshotVerbsOnDaemons(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB", extra: `snapshot-store-size = "8MiB"`})
	p := upCluster(t, c)
	s := c.nodes[1]
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x11 0 4M", p.uri())

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	events := make(chan api.Event, 64)
	go admin.NewClient(p.admin).Events(ctx, func(e api.Event) error {
		if e.Kind == "snapshot" {
			events <- e
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // the stream is open

	// A writer runs while the snapshot is taken on both nodes.
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x22 4M 4M", p.uri())
	}()
	out := p.mustCtl("snapshot", "create", "both", "--node", "all")
	if !strings.Contains(out, "snapshot both created on alpha, beta") {
		t.Fatalf("create --node all:\n%s", out)
	}
	<-done
	select {
	case e := <-events:
		if e.Snapshot != "both" || e.New != "created" {
			t.Fatalf("event %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot event")
	}

	// beta asks alpha for a snapshot of its own.
	out = s.mustCtl("snapshot", "create", "beta-only")
	if !strings.Contains(out, "created on beta") || !strings.Contains(out, "write stream of the Primary alpha") {
		t.Fatalf("create on the Secondary:\n%s", out)
	}
	var res api.SnapshotResult
	if err := json.Unmarshal([]byte(s.mustCtl("snapshot", "create", "--json", "beta-2")), &res); err != nil || res.Created[0] != "beta" {
		t.Fatalf("create --json: %+v %v", res, err)
	}
	if got := snapshotNames(snapshotList(t, p)); got != "both" {
		t.Fatalf("alpha has %q", got)
	}
	if got := snapshotNames(snapshotList(t, s)); got != "both,beta-only,beta-2" {
		t.Fatalf("beta has %q", got)
	}

	// Overwriting the device fills alpha's store with what "both" holds.
	before := snapshotList(t, p).UsedBytes
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x33 0 2M", p.uri())
	l := snapshotList(t, p)
	if l.UsedBytes < before+2<<20 || l.Snapshots[0].Bytes < 2<<20 || !l.Snapshots[0].Valid || l.CapacityBytes != 8<<20 {
		t.Fatalf("after overwriting 2 MiB: %+v (used before %d)", l, before)
	}
	human := p.mustCtl("snapshot", "list")
	if !strings.Contains(human, "both") || !strings.Contains(human, "valid") || !strings.Contains(human, "of 8.0MiB used") {
		t.Fatalf("snapshot list:\n%s", human)
	}

	// Refusals: a taken name, a bad name, a snapshot that is not there.
	for _, args := range [][]string{{"snapshot", "create", "both"}, {"snapshot", "create", "a/b"}, {"snapshot", "delete", "nope"}} {
		msg, err := p.ctl(args...)
		if code := exitCodeOf(err); code != 3 || !strings.Contains(msg, "refused") {
			t.Fatalf("%v: exit %d\n%s", args, code, msg)
		}
	}

	// Status and metrics count them.
	var st api.Status
	if err := json.Unmarshal([]byte(p.mustCtl("status", "--json")), &st); err != nil || st.Snapshots != 1 || st.SnapshotStoreCapacity != 8<<20 {
		t.Fatalf("status: %+v %v", st, err)
	}
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "repd_snapshots 1") || !strings.Contains(string(body), "repd_snapshot_store_capacity_bytes 8.388608e+06") {
		t.Fatalf("metrics lack the snapshot store:\n%s", body)
	}

	// They survive a clean restart and a crash.
	if err := s.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.start()
	if got := snapshotNames(snapshotList(t, s)); got != "both,beta-only,beta-2" {
		t.Fatalf("beta after a restart has %q", got)
	}
	s.stop(syscall.SIGKILL)
	s.start()
	l = snapshotList(t, s)
	if snapshotNames(l) != "both,beta-only,beta-2" || !l.Snapshots[0].Valid || l.Snapshots[0].Created.IsZero() {
		t.Fatalf("beta after SIGKILL: %+v", l)
	}
	s.mustCtl("snapshot", "delete", "beta-only")
	if got := snapshotNames(snapshotList(t, s)); got != "both,beta-2" {
		t.Fatalf("beta after delete has %q", got)
	}
}

// repctl snapshot create --lazy on real daemons: taken on the Secondary
// asked only, listed as lazy, its image kept while the Primary overwrites
// it (beta's copies skip their fdatasync), and still valid, with the same
// image, after beta is SIGKILLed before the store's flush (the system's
// page cache held the copies: same boot). The flush runs every 5 s, so a
// kill may come after one: then the story is tried again.
func TestLazySnapshotOnDaemons(t *testing.T) {
	qemuIO := testtool.Require(t, "qemu-io")
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB", extra: `snapshot-store-size = "8MiB"`})
	p := upCluster(t, c)
	s := c.nodes[1]

	msg, err := s.ctl("snapshot", "create", "lz", "--lazy", "--node", "all")
	if code := exitCodeOf(err); code != 2 || !strings.Contains(msg, "--lazy takes the snapshot on the node asked only") {
		t.Fatalf("--lazy --node all: exit %d\n%s", code, msg)
	}
	logged := func() int {
		b, err := os.ReadFile(s.logPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "lazy copies were not synced")
	}
	for try := 1; ; try++ {
		name, pat := fmt.Sprintf("lz%d", try), 0x10+try
		run(t, time.Minute, qemuIO, "-f", "raw", "-c", fmt.Sprintf("write -P %#x 0 4M", pat), p.uri())
		out := s.mustCtl("snapshot", "create", name, "--lazy")
		if !strings.Contains(out, "created on beta") {
			t.Fatalf("create --lazy on the Secondary:\n%s", out)
		}
		before := logged()
		run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x33 0 2M", p.uri())
		s.stop(syscall.SIGKILL)
		s.start()
		l := snapshotList(t, s)
		last := l.Snapshots[len(l.Snapshots)-1]
		if last.Name != name || !last.Lazy || !last.Valid || last.Bytes < 2<<20 {
			t.Fatalf("beta after 2 MiB overwritten and a SIGKILL: %+v", l)
		}
		if human := s.mustCtl("snapshot", "list"); !strings.Contains(human, "valid, lazy") {
			t.Fatalf("snapshot list:\n%s", human)
		}
		run(t, time.Minute, qemuIO, "-r", "-f", "raw", "-c", fmt.Sprintf("read -P %#x 0 4M", pat), s.uri()+"@"+name)
		if logged() > before {
			break // it found the copies unsynced, and they were all there
		}
		if try == 3 {
			t.Fatal("three times the store's flush came before the kill: the unsynced case was never tried")
		}
	}
	if got := snapshotNames(snapshotList(t, p)); got != "" {
		t.Fatalf("alpha has %q", got)
	}
}
