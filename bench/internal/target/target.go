// Package target is what the benchmark measures: the bare file, nbdkit,
// qemu-nbd and repd (standalone, replicated, compressed, over shaped
// links), each started on a fresh backing file and reached by fio.
package target

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/repd/repd/bench/internal/link"
	"github.com/repd/repd/bench/internal/proc"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/harness"
)

// Env is what a target gets to start: its own scratch directory and the
// run's settings.
type Env struct {
	Dir         string // the target's scratch directory, removed after the run
	Size        int64  // backing file size in bytes
	Prealloc    bool   // fallocate the backing file instead of leaving it sparse
	Transport   string // NBD transport: "unix" or "tcp" (loopback)
	LocalEngine string // fio engine for the local reference: libaio or io_uring
	Logf        func(format string, args ...any)
}

// Endpoint is a started target: how fio reaches it and how to stop it.
type Endpoint struct {
	// FioArgs are fio's target options, placed before the job file
	// (--ioengine=nbd --uri=... or --ioengine=libaio --filename=...).
	FioArgs []string
	URI     string   // the NBD URI; "" for a file fio opens itself
	Servers []Server // server processes: RSS is sampled, deaths are noticed
	Notes   []string // shown in the report (fallbacks taken, warnings)
	Stop    func()   // stops every process; safe to call more than once
}

// Server is a process of a target.
type Server interface {
	PID() int // its process id (0 when none runs)
	// Gone says how the server ended (with its log's tail); nil while it
	// runs.
	Gone() error
}

// Alive returns an error if any of the target's servers has exited.
func (e *Endpoint) Alive() error {
	for _, s := range e.Servers {
		if err := s.Gone(); err != nil {
			return err
		}
	}
	return nil
}

// PIDs are the server processes to sample.
func (e *Endpoint) PIDs() []int {
	var pids []int
	for _, s := range e.Servers {
		if pid := s.PID(); pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ErrSkip marks a target that cannot run here (tool missing, does not build).
var ErrSkip = errors.New("skipped")

// Target is one thing fio measures. Start brings it up in env.Dir on a fresh
// backing file; the benchmark calls Endpoint.Stop when done. To add a
// target, add a Target to All (see repd.go for a parameterized one).
type Target struct {
	Name  string
	Desc  string
	Meta  result.TargetMeta
	Start func(ctx context.Context, env Env) (*Endpoint, error)
}

// All is every target, in the order they run.
func All() []Target {
	ts := []Target{
		localTarget(),
		nbdkitTarget(),
		qemuNBDTarget(),
		repdTarget(RepdConfig{Name: result.Standalone, Desc: "repd standalone (one node)", Nodes: []string{"alpha"}, Protocol: "C"}),
		Replicated("C", 1, "none", nil),
		Replicated("A", 1, "none", nil),
		Replicated("C", 2, "none", nil),
		Replicated("C", 1, "zstd", nil),
		Replicated("A", 1, "zstd", nil),
		SmallJournal(),
	}
	for i := range ts {
		ts[i].Meta.Default = ts[i].Name != "qemu-nbd" && ts[i].Name != SmallJournalName
		if ts[i].Meta.Group == "" {
			ts[i].Meta.Group = result.GroupLoopback
		}
		if ts[i].Meta.Kind == "" {
			ts[i].Meta.Kind = "repd"
		}
	}
	ts[0].Meta.Kind, ts[1].Meta.Kind, ts[2].Meta.Kind = "local", "nbdkit", "qemu-nbd"
	for _, l := range link.Profiles {
		for _, proto := range []string{"C", "A"} {
			t := Replicated(proto, 1, "none", &l)
			t.Meta.Default = true
			ts = append(ts, t)
		}
	}
	for _, proto := range []string{"C", "A"} {
		ts = append(ts, replicated(proto, 1, "none", nil, true))
	}
	for _, proto := range []string{"C", "A"} {
		ts = append(ts, pinned(proto))
	}
	ts = append(ts, machine())
	for _, proto := range []string{"C", "A"} {
		ts = append(ts, machines(proto))
	}
	return ts
}

// Replicated is a repd target with peers on this machine: protocol A or C,
// compression, and optionally a shaped link between the nodes.
func Replicated(proto string, peers int, compression string, l *link.Profile) Target {
	return replicated(proto, peers, compression, l, false)
}

// replicated is Replicated, or with insecure its twin without the shared
// secret the harness gives it (RepdConfig.Insecure): no frame MACs on the
// peer links. The insecure twins are not in the default run: name one next
// to its twin (--targets repd-a1,repd-a1-insecure) to see what frame
// authentication costs (issue 17).
func replicated(proto string, peers int, compression string, l *link.Profile, insecure bool) Target {
	nodes := []string{"alpha", "bravo", "charlie", "delta"}[:peers+1]
	name := fmt.Sprintf("repd-%s%d", strings.ToLower(proto), peers)
	desc := fmt.Sprintf("repd protocol %s, %d peer", proto, peers)
	if peers > 1 {
		desc += "s"
	}
	meta := result.TargetMeta{Kind: "repd", Group: result.GroupLoopback, Protocol: proto, Peers: peers, Compression: compression, FrameMAC: !insecure}
	extra := map[string]string{}
	if compression != "none" {
		name += "-" + compression
		desc += ", " + compression
		extra["compression"] = fmt.Sprintf("%q", compression)
		meta.Group = result.GroupCompression
	}
	rc := RepdConfig{Nodes: nodes, Protocol: proto, Extra: extra}
	if l != nil {
		name += "-" + l.Name
		desc += ", link " + l.String()
		meta.Group, meta.Link, meta.LinkRTTms = result.GroupLinks, l.Name, l.RTTms()
		rc.Link, rc.Seed = l, SeedOf(name)
	} else {
		desc += ", loopback"
	}
	if insecure {
		name += "-insecure"
		desc += ", no secret (no frame MACs)"
		rc.Insecure = true
	}
	rc.Name, rc.Desc = name, desc
	t := repdTarget(rc)
	t.Meta = meta
	return t
}

// SmallJournalName is repd-a1 with journal-size = 8 MiB (SmallJournal).
const SmallJournalName = "repd-a1-j8"

// SmallJournal is repd-a1 with journal-size = 8 MiB, for the Primary's
// memory under a small journal (issue 20's check); not in the default run
// (--targets repd-a1-j8).
func SmallJournal() Target {
	t := repdTarget(RepdConfig{Name: SmallJournalName, Desc: "repd protocol A, 1 peer, loopback, journal-size 8 MiB",
		Nodes: []string{"alpha", "bravo"}, Protocol: "A", Extra: map[string]string{"journal-size": "8388608"}})
	t.Meta = result.TargetMeta{Kind: "repd", Group: result.GroupLoopback, Protocol: "A", Peers: 1, FrameMAC: true}
	return t
}

// SeedOf is a fixed seed per target, so a link's jitter repeats run to run.
func SeedOf(name string) int64 {
	h := int64(1469598103934665603 & 0x7fffffffffffffff)
	for _, c := range name {
		h = (h ^ int64(c)) * 1099511628211 & 0x7fffffffffffffff
	}
	return h | 1
}

// makeBacking creates a fresh backing file of size bytes: sparse, or with
// its blocks allocated when prealloc is set.
func makeBacking(path string, size int64, prealloc bool) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if prealloc {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
			return fmt.Errorf("fallocate %s: %w", path, err)
		}
		return nil
	}
	return f.Truncate(size)
}

// nbdAddr is where an NBD server listens.
type nbdAddr struct {
	Network string // "unix" or "tcp"
	Addr    string // socket path or 127.0.0.1:port
}

// newNBDAddr picks a listen address for transport: a socket in dir, or a free
// loopback port.
func newNBDAddr(transport, dir, name string) (nbdAddr, error) {
	switch transport {
	case "unix":
		p := filepath.Join(dir, name+".sock")
		if len(p) >= 108 {
			return nbdAddr{}, fmt.Errorf("socket path %s too long for a unix socket: use a shorter --dir", p)
		}
		return nbdAddr{"unix", p}, nil
	case "tcp":
		port, err := harness.FreePort("127.0.0.1")
		if err != nil {
			return nbdAddr{}, err
		}
		return nbdAddr{"tcp", fmt.Sprintf("127.0.0.1:%d", port)}, nil
	}
	return nbdAddr{}, fmt.Errorf("unknown transport %q (want unix or tcp)", transport)
}

// URI is the NBD URI for an export name.
func (a nbdAddr) URI(export string) string {
	if a.Network == "unix" {
		return "nbd+unix:///" + url.PathEscape(export) + "?socket=" + a.Addr
	}
	return "nbd://" + a.Addr + "/" + url.PathEscape(export)
}

// Port is the TCP port (tcp only).
func (a nbdAddr) Port() string {
	_, port, _ := strings.Cut(a.Addr, ":")
	return port
}

// FioArgs are fio's options for an NBD URI.
func FioArgs(uri string) []string {
	return []string{"--ioengine=nbd", "--uri=" + uri}
}

func need(tool string) error {
	if _, err := exec.LookPath(tool); err != nil {
		return fmt.Errorf("%w: %s not installed", ErrSkip, tool)
	}
	return nil
}

// localTarget is the reference: fio on the backing file itself, O_DIRECT.
func localTarget() Target {
	return Target{
		Name: "local",
		Desc: "fio directly on the backing file (direct=1)",
		Start: func(ctx context.Context, env Env) (*Endpoint, error) {
			file := filepath.Join(env.Dir, "disk.img")
			if err := makeBacking(file, env.Size, env.Prealloc); err != nil {
				return nil, err
			}
			return &Endpoint{
				FioArgs: []string{"--ioengine=" + env.LocalEngine, "--filename=" + file, "--direct=1"},
				Notes:   []string{"ioengine=" + env.LocalEngine},
				Stop:    func() {},
			}, nil
		},
	}
}

// nbdkitTarget is nbdkit's file plugin. It does not open the file O_DIRECT:
// writes land in the page cache.
func nbdkitTarget() Target {
	return Target{
		Name: "nbdkit",
		Desc: "nbdkit file plugin (page cache)",
		Start: func(ctx context.Context, env Env) (*Endpoint, error) {
			if err := need("nbdkit"); err != nil {
				return nil, err
			}
			file := filepath.Join(env.Dir, "disk.img")
			if err := makeBacking(file, env.Size, env.Prealloc); err != nil {
				return nil, err
			}
			a, err := newNBDAddr(env.Transport, env.Dir, "nbd")
			if err != nil {
				return nil, err
			}
			argv := []string{"nbdkit", "--exit-with-parent", "-f"}
			if a.Network == "unix" {
				argv = append(argv, "-U", a.Addr)
			} else {
				argv = append(argv, "-i", "127.0.0.1", "-p", a.Port())
			}
			argv = append(argv, "file", file)
			p, err := proc.Start("nbdkit", filepath.Join(env.Dir, "nbdkit.log"), argv...)
			if err != nil {
				return nil, err
			}
			if err := proc.WaitListen(ctx, p, a.Network, a.Addr, 10*time.Second); err != nil {
				p.Stop()
				return nil, err
			}
			uri := a.URI("")
			return &Endpoint{FioArgs: FioArgs(uri), URI: uri, Servers: []Server{p}, Stop: p.Stop}, nil
		},
	}
}

// qemuNBDTarget is qemu-nbd with O_DIRECT and Linux native AIO when this
// qemu-nbd has it, else its thread pool.
func qemuNBDTarget() Target {
	return Target{
		Name: "qemu-nbd",
		Desc: "qemu-nbd --cache=none (O_DIRECT)",
		Start: func(ctx context.Context, env Env) (*Endpoint, error) {
			if err := need("qemu-nbd"); err != nil {
				return nil, err
			}
			file := filepath.Join(env.Dir, "disk.img")
			if err := makeBacking(file, env.Size, env.Prealloc); err != nil {
				return nil, err
			}
			var firstErr error
			for _, aio := range []string{"native", "threads"} {
				a, err := newNBDAddr(env.Transport, env.Dir, "nbd")
				if err != nil {
					return nil, err
				}
				// -t: stay up between clients (fio connects more than once).
				argv := []string{"qemu-nbd", "-t", "-f", "raw", "--cache=none", "--aio=" + aio, "--shared=8"}
				if a.Network == "unix" {
					argv = append(argv, "-k", a.Addr)
				} else {
					argv = append(argv, "-b", "127.0.0.1", "-p", a.Port())
				}
				argv = append(argv, file)
				p, err := proc.Start("qemu-nbd", filepath.Join(env.Dir, "qemu-nbd-"+aio+".log"), argv...)
				if err != nil {
					return nil, err
				}
				if err := proc.WaitListen(ctx, p, a.Network, a.Addr, 10*time.Second); err != nil {
					p.Stop()
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				ep := &Endpoint{FioArgs: FioArgs(a.URI("")), URI: a.URI(""), Servers: []Server{p}, Stop: p.Stop}
				ep.Notes = append(ep.Notes, "aio="+aio)
				if firstErr != nil {
					ep.Notes = append(ep.Notes, "aio=native failed: "+firstErr.Error())
				}
				return ep, nil
			}
			return nil, firstErr
		},
	}
}
