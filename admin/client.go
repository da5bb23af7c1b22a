package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"

	"github.com/repd/repd/api"
)

// Client talks to a daemon's admin socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the admin socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression: true,
	}
	return &Client{Socket: path, http: &http.Client{Transport: tr}}
}

// APIError is an error reply from the daemon.
type APIError struct {
	Kind    string
	Message string
}

func (e *APIError) Error() string { return e.Message }

// ErrUnreachable wraps failures to reach the daemon at all.
var ErrUnreachable = errors.New("cannot reach repd")

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://repd"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w on %s: %v (is the daemon running, and are you root?)", ErrUnreachable, c.Socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%w: reading reply: %v", ErrUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorReply
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
				return &APIError{Kind: KindInternal, Message: fmt.Sprintf("the daemon does not serve %s %s (%s): is it an older repd? upgrade it", method, path, resp.Status)}
			}
			return &APIError{Kind: KindInternal, Message: fmt.Sprintf("daemon answered %s", resp.Status)}
		}
		return &APIError{Kind: e.Kind, Message: e.Error}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Status returns the node's status.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var s api.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Primary promotes the node.
func (c *Client) Primary(ctx context.Context, force bool) error {
	return c.do(ctx, http.MethodPost, "/v1/primary", PrimaryRequest{Force: force}, nil)
}

// Secondary demotes the node.
func (c *Client) Secondary(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/secondary", struct{}{}, nil)
}

// Connect (re)connects to a peer, or to all peers when peer is "".
func (c *Client) Connect(ctx context.Context, peer string, discardMyData bool) error {
	return c.do(ctx, http.MethodPost, "/v1/connect", ConnectRequest{Peer: peer, DiscardMyData: discardMyData}, nil)
}

// Disconnect drops a peer (or all when "") and keeps it StandAlone.
func (c *Client) Disconnect(ctx context.Context, peer string) error {
	return c.do(ctx, http.MethodPost, "/v1/disconnect", DisconnectRequest{Peer: peer}, nil)
}

// NewCurrentUUID starts a new data generation; with clearBitmap it declares
// the peers in sync (brand-new empty disks skip the initial sync).
func (c *Client) NewCurrentUUID(ctx context.Context, clearBitmap bool) error {
	return c.do(ctx, http.MethodPost, "/v1/new-current-uuid", NewCurrentUUIDRequest{ClearBitmap: clearBitmap}, nil)
}

// Events streams events to fn until ctx ends, fn returns an error, or the
// daemon goes away.
func (c *Client) Events(ctx context.Context, fn func(api.Event) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://repd/v1/events", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w on %s: %v", ErrUnreachable, c.Socket, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var e api.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("bad event from daemon: %w", err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: event stream ended (daemon stopped?)", ErrUnreachable)
}

// Invalidate makes the node a sync target of a full resync from peer ("":
// the first connected UpToDate peer).
func (c *Client) Invalidate(ctx context.Context, peer string) error {
	return c.do(ctx, http.MethodPost, "/v1/invalidate", PeerRequest{Peer: peer}, nil)
}

// InvalidateRemote makes peer ("": the first connected one) the sync target
// of a full resync from the node.
func (c *Client) InvalidateRemote(ctx context.Context, peer string) error {
	return c.do(ctx, http.MethodPost, "/v1/invalidate-remote", PeerRequest{Peer: peer}, nil)
}

// PauseSync pauses the resync toward peer ("": every peer).
func (c *Client) PauseSync(ctx context.Context, peer string) error {
	return c.do(ctx, http.MethodPost, "/v1/pause-sync", PeerRequest{Peer: peer}, nil)
}

// ResumeSync resumes a paused resync toward peer ("": every peer).
func (c *Client) ResumeSync(ctx context.Context, peer string) error {
	return c.do(ctx, http.MethodPost, "/v1/resume-sync", PeerRequest{Peer: peer}, nil)
}

// Snapshot takes snapshot name on nodes (nil: the node asked; node names;
// or ["all"]: every connected UpToDate node) and returns once it is taken.
func (c *Client) Snapshot(ctx context.Context, name string, nodes []string) (api.SnapshotResult, error) {
	var res api.SnapshotResult
	err := c.do(ctx, http.MethodPost, "/v1/snapshot", SnapshotRequest{Name: name, Nodes: nodes}, &res)
	return res, err
}

// SnapshotLazy takes lazy snapshot name on the node asked (see
// LazySnapshotter).
func (c *Client) SnapshotLazy(ctx context.Context, name string) (api.SnapshotResult, error) {
	var res api.SnapshotResult
	err := c.do(ctx, http.MethodPost, "/v1/snapshot", SnapshotRequest{Name: name, Lazy: true}, &res)
	return res, err
}

// Snapshots lists the node's snapshots.
func (c *Client) Snapshots(ctx context.Context) (api.SnapshotList, error) {
	var l api.SnapshotList
	err := c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &l)
	return l, err
}

// DeleteSnapshot deletes the node's snapshot name.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshot/"+url.PathEscape(name), nil, nil)
}

// Verify starts an online verify toward peer ("": the first connected one).
func (c *Client) Verify(ctx context.Context, peer string) error {
	return c.do(ctx, http.MethodPost, "/v1/verify", PeerRequest{Peer: peer}, nil)
}

// Backup reports a backup's success or failure to the node, which keeps it
// in its backup record (status, metrics).
func (c *Client) Backup(ctx context.Context, r api.BackupReport) error {
	return c.do(ctx, http.MethodPost, "/v1/backup", r, nil)
}
