package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/harness"
	"github.com/repd/repd/internal/ctxtime"
)

// NodeEvent is an event a node reported on `repctl events`, with the tick
// of the History's clock at which it arrived.
type NodeEvent struct {
	Node string
	Tick uint64
	api.Event
}

// Watch follows `repctl events` on some nodes for the length of a
// scenario, and starts it again whenever a node's repd restarts (each
// stream begins with the node's state as "exists" events).
type Watch struct {
	h      *History
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	events []NodeEvent
	notify func(NodeEvent)
}

// WatchEvents starts following the nodes' events; notify, if set, sees
// each event as it arrives. Stop ends it.
func WatchEvents(ctx context.Context, h *History, nodes []*harness.Node, notify func(NodeEvent)) *Watch {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watch{h: h, cancel: cancel, notify: notify}
	for _, n := range nodes {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for ctx.Err() == nil {
				if n.Running() {
					w.follow(ctx, n)
				}
				ctxtime.Sleep(ctx, 100*time.Millisecond)
			}
		}()
	}
	return w
}

// follow runs one `repctl events` on n until it ends or ctx does.
func (w *Watch) follow(ctx context.Context, n *harness.Node) {
	cmd := n.CtlCmd("events")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return
	}
	if err := cmd.Start(); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	defer stop()
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev api.Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		ne := NodeEvent{Node: n.Name, Tick: w.h.tick(), Event: ev}
		w.mu.Lock()
		w.events = append(w.events, ne)
		notify := w.notify
		w.mu.Unlock()
		if notify != nil {
			notify(ne)
		}
	}
	cmd.Wait()
}

// Stop ends the watch and waits for it.
func (w *Watch) Stop() {
	w.cancel()
	w.wg.Wait()
}

// Events are the events seen so far.
func (w *Watch) Events() []NodeEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]NodeEvent(nil), w.events...)
}

// CheckEvents finds in a watch's events what must never happen: a split
// brain reported, and a node that became Primary while its disk was not
// UpToDate (an Inconsistent node elected, say). Each node's stream is in
// the order the node made its changes.
func CheckEvents(evs []NodeEvent) []string {
	var bad []string
	disk := map[string]string{}
	for _, ev := range evs {
		switch {
		case ev.Kind == "split-brain":
			bad = append(bad, fmt.Sprintf("%s reported split brain with %s: %s", ev.Node, ev.Peer, ev.Message))
		case ev.Kind == "disk", ev.Kind == "exists" && ev.Message == "disk":
			disk[ev.Node] = ev.New
		case ev.Kind == "role" && ev.New == api.Primary.String():
			if d := disk[ev.Node]; d != "" && d != "UpToDate" {
				bad = append(bad, fmt.Sprintf("%s became Primary while its disk was %s (%s)", ev.Node, d, ev.Message))
			}
		}
	}
	return bad
}
