// Package admin is repd's control surface: an HTTP+JSON API served on a unix
// socket (mode 0600, or 0660 with a group), used by repctl.
//
//	GET  /v1/status                   → api.Status
//	GET  /v1/events                   → one api.Event JSON object per line, streamed
//	POST /v1/primary     {"force":b}  → promote
//	POST /v1/secondary                → demote
//	POST /v1/connect     {"peer":s,"discard_my_data":b}
//	POST /v1/disconnect  {"peer":s}
//	POST /v1/new-current-uuid {"clear_bitmap":b}
//	POST /v1/invalidate        {"peer":s}  → this node resyncs everything from peer
//	POST /v1/invalidate-remote {"peer":s}  → peer resyncs everything from this node
//	POST /v1/pause-sync        {"peer":s}
//	POST /v1/resume-sync       {"peer":s}
//	POST /v1/verify            {"peer":s}  → online verify (progress in status)
//	POST   /v1/snapshot  {"name":s,"nodes":[s]} → api.SnapshotResult, once taken (nodes: none = this
//	                     node, node names, or ["all"] = every connected UpToDate node; "lazy":true
//	                     takes a lazy snapshot on this node only, see LazySnapshotter)
//	GET    /v1/snapshots                  → api.SnapshotList
//	DELETE /v1/snapshot/NAME              → delete this node's snapshot NAME
//	POST   /v1/backup    api.BackupReport → record a backup's success or failure (repctl backup
//	                     reports the backups it took of this node's snapshots); body at most 8 KiB
//
// Errors come back as {"error": sentence, "kind": "refused"|"bad_request"|"internal"}
// with HTTP 409, 400 or 500.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/replica"
)

// Controller is what the admin API drives: a replica.Node.
type Controller interface {
	Status() api.Status
	Promote(force bool) error
	Demote() error
	Connect(peer string, discardMyData bool) error
	Disconnect(peer string) error
	NewCurrentUUID(clearBitmap bool) error
	Invalidate(peer string) error
	InvalidateRemote(peer string) error
	PauseSync(peer string) error
	ResumeSync(peer string) error
	Verify(peer string) error
	Snapshot(ctx context.Context, name string, nodes []string) (api.SnapshotResult, error)
	SnapshotList() api.SnapshotList
	DeleteSnapshot(name string) error
}

// BackupRecorder is a Controller that also keeps the node's backup record
// (the daemon does, in a file beside the meta file). Without it POST
// /v1/backup is refused.
type BackupRecorder interface {
	RecordBackup(api.BackupReport) error
}

// LazySnapshotter takes lazy snapshots (POST /v1/snapshot with "lazy":
// on the node asked only).
type LazySnapshotter interface {
	SnapshotLazy(ctx context.Context, name string) (api.SnapshotResult, error)
}

// Error kinds in error replies; repctl maps them to exit codes.
const (
	KindRefused    = "refused"
	KindBadRequest = "bad_request"
	KindInternal   = "internal"
)

// ErrorReply is the body of every non-2xx reply.
type ErrorReply struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
}

// Request bodies.
type (
	PrimaryRequest struct {
		Force bool `json:"force"`
	}
	ConnectRequest struct {
		Peer          string `json:"peer"`
		DiscardMyData bool   `json:"discard_my_data"`
	}
	DisconnectRequest struct {
		Peer string `json:"peer"`
	}
	NewCurrentUUIDRequest struct {
		ClearBitmap bool `json:"clear_bitmap"`
	}
	// PeerRequest names a peer ("" for the default: see each verb).
	PeerRequest struct {
		Peer string `json:"peer"`
	}
	// SnapshotRequest takes snapshot Name on Nodes: none for the node
	// asked, node names, or ["all"] for every connected UpToDate node.
	SnapshotRequest struct {
		Name  string   `json:"name"`
		Nodes []string `json:"nodes,omitempty"`
		// Lazy takes it on the node asked only, with its copies synced
		// in the background (LazySnapshotter).
		Lazy bool `json:"lazy,omitempty"`
	}
)

// Request body bounds: a body over the bound is refused unread (HTTP 413).
const (
	maxBody       = 64 << 10
	maxBackupBody = 8 << 10
)

// maxSnapshotNodes bounds the node names of a SnapshotRequest (a resource
// has at most 16 nodes).
const maxSnapshotNodes = 64

// Handler returns the API's HTTP handler over c, streaming events from hub.
func Handler(c Controller, hub *Hub) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.Status())
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		serveEvents(w, r, c, hub)
	})
	mux.HandleFunc("POST /v1/primary", func(w http.ResponseWriter, r *http.Request) {
		var req PrimaryRequest
		if decode(w, r, &req) {
			reply(w, c.Promote(req.Force))
		}
	})
	mux.HandleFunc("POST /v1/secondary", func(w http.ResponseWriter, r *http.Request) {
		reply(w, c.Demote())
	})
	mux.HandleFunc("POST /v1/connect", func(w http.ResponseWriter, r *http.Request) {
		var req ConnectRequest
		if decode(w, r, &req) {
			reply(w, eachPeer(c, req.Peer, func(p string) error { return c.Connect(p, req.DiscardMyData) }))
		}
	})
	mux.HandleFunc("POST /v1/disconnect", func(w http.ResponseWriter, r *http.Request) {
		var req DisconnectRequest
		if decode(w, r, &req) {
			reply(w, eachPeer(c, req.Peer, c.Disconnect))
		}
	})
	mux.HandleFunc("POST /v1/new-current-uuid", func(w http.ResponseWriter, r *http.Request) {
		var req NewCurrentUUIDRequest
		if decode(w, r, &req) {
			reply(w, c.NewCurrentUUID(req.ClearBitmap))
		}
	})
	for path, fn := range map[string]func(string) error{
		"invalidate": c.Invalidate, "invalidate-remote": c.InvalidateRemote,
		"pause-sync": c.PauseSync, "resume-sync": c.ResumeSync, "verify": c.Verify,
	} {
		mux.HandleFunc("POST /v1/"+path, func(w http.ResponseWriter, r *http.Request) {
			var req PeerRequest
			if decode(w, r, &req) {
				reply(w, fn(req.Peer))
			}
		})
	}
	mux.HandleFunc("POST /v1/snapshot", func(w http.ResponseWriter, r *http.Request) {
		var req SnapshotRequest
		if !decode(w, r, &req) {
			return
		}
		if len(req.Nodes) > maxSnapshotNodes {
			writeJSON(w, http.StatusBadRequest, ErrorReply{Error: fmt.Sprintf("%d nodes named: a resource has at most 16", len(req.Nodes)), Kind: KindBadRequest})
			return
		}
		if req.Lazy {
			ls, ok := c.(LazySnapshotter)
			switch {
			case !ok:
				writeJSON(w, http.StatusNotImplemented, ErrorReply{Error: "this node takes no lazy snapshots", Kind: KindInternal})
			case len(req.Nodes) > 0:
				writeJSON(w, http.StatusBadRequest, ErrorReply{Error: "a lazy snapshot is taken on the node asked only: name no nodes", Kind: KindBadRequest})
			default:
				res, err := ls.SnapshotLazy(r.Context(), req.Name)
				replyWith(w, res, err)
			}
			return
		}
		res, err := c.Snapshot(r.Context(), req.Name, req.Nodes)
		replyWith(w, res, err)
	})
	mux.HandleFunc("POST /v1/backup", func(w http.ResponseWriter, r *http.Request) {
		rec, ok := c.(BackupRecorder)
		if !ok {
			writeJSON(w, http.StatusNotImplemented, ErrorReply{Error: "this node keeps no backup record", Kind: KindInternal})
			return
		}
		var req api.BackupReport
		if !decodeLimit(w, r, &req, maxBackupBody) {
			return
		}
		if err := CheckBackupReport(req, time.Now()); err != nil {
			writeJSON(w, http.StatusBadRequest, ErrorReply{Error: err.Error(), Kind: KindBadRequest})
			return
		}
		reply(w, rec.RecordBackup(req))
	})
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.SnapshotList())
	})
	mux.HandleFunc("DELETE /v1/snapshot/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, c.DeleteSnapshot(r.PathValue("name")))
	})
	return mux
}

// eachPeer runs op on the named peer, or on every peer when none is named
// (repctl connect / disconnect without a peer).
func eachPeer(c Controller, peer string, op func(string) error) error {
	if peer != "" {
		return op(peer)
	}
	var errs []error
	for _, p := range c.Status().Peers {
		if err := op(p.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	return decodeLimit(w, r, v, maxBody)
}

// decodeLimit decodes a JSON body of at most limit bytes into v; a longer
// body is refused after reading limit+1 bytes of it.
func decodeLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if int64(len(body)) > limit {
		writeJSON(w, http.StatusRequestEntityTooLarge, ErrorReply{
			Error: fmt.Sprintf("request body over %d bytes: %s %s takes at most that", limit, r.Method, r.URL.Path), Kind: KindBadRequest})
		return false
	}
	if err == nil && len(body) > 0 {
		d := json.NewDecoder(bytes.NewReader(body))
		d.DisallowUnknownFields()
		err = d.Decode(v)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, ErrorReply{Error: fmt.Sprintf("bad request body: %v", err), Kind: KindBadRequest})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, err error) { replyWith(w, struct{}{}, err) }

// replyWith answers v, or the error mapped to its kind.
func replyWith(w http.ResponseWriter, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, v)
	case errors.Is(err, replica.ErrRefused):
		writeJSON(w, http.StatusConflict, ErrorReply{Error: err.Error(), Kind: KindRefused})
	case errors.Is(err, replica.ErrUnknownPeer):
		writeJSON(w, http.StatusBadRequest, ErrorReply{Error: err.Error(), Kind: KindBadRequest})
	default:
		writeJSON(w, http.StatusInternalServerError, ErrorReply{Error: err.Error(), Kind: KindInternal})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Hub fans events out to every streaming subscriber. A subscriber that falls
// behind loses events rather than stalling the node.
type Hub struct {
	mu   sync.Mutex
	subs map[chan api.Event]struct{}
}

// Publish sends e to every subscriber; it never blocks.
func (h *Hub) Publish(e api.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

// Subscribe returns a channel of events and a function that ends the subscription.
func (h *Hub) Subscribe() (<-chan api.Event, func()) {
	ch := make(chan api.Event, 256)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan api.Event]struct{}{}
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

func serveEvents(w http.ResponseWriter, r *http.Request, c Controller, hub *Hub) {
	ch, cancel := hub.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	// Like drbdsetup events2 --now: first the current state, then changes.
	for _, e := range existing(c.Status()) {
		enc.Encode(e)
	}
	if fl != nil {
		fl.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-ch:
			if err := enc.Encode(e); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}

// existing describes the current state as "exists" events, so a consumer
// of the stream needs no separate status call.
func existing(s api.Status) []api.Event {
	now := time.Now()
	evs := []api.Event{
		{Time: now, Kind: "exists", New: s.Role.String(), Message: "role"},
		{Time: now, Kind: "exists", New: s.Disk, Message: "disk"},
	}
	for _, p := range s.Peers {
		evs = append(evs,
			api.Event{Time: now, Kind: "exists", Peer: p.Name, New: p.Connection.String(), Message: "connection"},
			api.Event{Time: now, Kind: "exists", Peer: p.Name, New: p.Replication.String(), Message: "replication"})
	}
	return evs
}
