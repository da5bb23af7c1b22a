package harness

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/internal/ctxtime"
)

// WaitFor polls cond every 50 ms until it holds, d passes or ctx ends.
func WaitFor(ctx context.Context, what string, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		if err := ctxtime.Sleep(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
	}
	return nil
}

// Connected holds for a peer that is Connected.
func Connected(p api.PeerStatus) bool { return p.Connection == api.Connected }

// InSync holds for a peer that is Connected, Established and UpToDate with
// nothing out of sync, and for a witness peer (which holds no data) that is
// Connected.
func InSync(p api.PeerStatus) bool {
	if p.Witness {
		return p.Connection == api.Connected
	}
	return p.Connection == api.Connected && p.Replication == api.Established && p.Disk == "UpToDate" && p.OutOfSyncKiB == 0
}

// WaitPeers polls the node's status every 20 ms until it has peers and
// every one satisfies ok. It fails early when repd exits, with its log's
// tail; the timeout's error shows the peers' last states.
func (n *Node) WaitPeers(ctx context.Context, d time.Duration, ok func(api.PeerStatus) bool) error {
	deadline := time.Now().Add(d)
	var last string
	for {
		st, err := n.Status(ctx)
		if err == nil {
			all := len(st.Peers) > 0
			var parts []string
			for _, p := range st.Peers {
				all = all && ok(p)
				parts = append(parts, fmt.Sprintf("%s %s/%s/%s oos=%dKiB", p.Name, p.Connection, p.Replication, p.Disk, p.OutOfSyncKiB))
			}
			if all {
				return nil
			}
			last = strings.Join(parts, ", ")
		} else {
			last = err.Error()
		}
		if p := n.current(); p != nil && p.exited() {
			return fmt.Errorf("repd %s exited (%v): %s", n.Name, p.err, n.LogTail(1000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s's peers after %s: %s", n.Name, d, last)
		}
		if err := ctxtime.Sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// WaitDisk waits until the node reports disk state want in its own status.
func (n *Node) WaitDisk(ctx context.Context, d time.Duration, want string) error {
	return waitDisk(ctx, d, want, []*Node{n})
}
