package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/template"
	"time"
)

// RepdConfig describes a repd target: one resource whose nodes all run on
// this machine, each as its own repd process. Nodes[0] is the node fio
// drives; it is promoted to Primary after start.
//
// Replicated variants (two or three nodes, protocol A or C, a link-shaping
// proxy between them) are further RepdConfigs in allTargets: list more
// Nodes, and use PreStart to start a proxy and point the nodes' Peer
// addresses through it (or a Template of your own).
type RepdConfig struct {
	Name     string
	Desc     string
	Nodes    []string
	Protocol string            // "A" or "C"
	Template string            // resource-file template; "" means repdTemplate
	Extra    map[string]string // more [resource] keys for the template, values as TOML
	// PreStart, if set, runs after the addresses are chosen and before the
	// resource file is written: it may edit d and start helpers, which the
	// returned stop function stops.
	PreStart func(ctx context.Context, env Env, d *RepdData) (stop func(), err error)
}

// RepdData is what a resource-file template sees.
type RepdData struct {
	Resource string // also the NBD export name
	Size     int64
	Protocol string
	Dir      string
	Nodes    []RepdNode
	Extra    map[string]string
}

// RepdNode is one node's files and addresses.
type RepdNode struct {
	Name  string
	Disk  string
	Meta  string
	NBD   string  // listen address as the resource file spells it
	Peer  string  // replication address, host:port
	Admin string  // admin socket path
	addr  nbdAddr // NBD address for clients
}

// repdTemplate is a resource file for any number of nodes.
const repdTemplate = `# written by go run ./bench
[resource]
name = {{printf "%q" .Resource}}
size = {{.Size}}
protocol = {{printf "%q" .Protocol}}
{{- range $k, $v := .Extra}}
{{$k}} = {{$v}}
{{- end}}
{{range .Nodes}}
[[node]]
name  = {{printf "%q" .Name}}
disk  = {{printf "%q" .Disk}}
meta  = {{printf "%q" .Meta}}
nbd   = {{printf "%q" .NBD}}
peer  = {{printf "%q" .Peer}}
admin = {{printf "%q" .Admin}}
{{end}}`

// builds caches `go build` of the repd commands: once per run, shared by
// every repd target.
var builds struct {
	sync.Mutex
	done map[string]buildResult
}

type buildResult struct {
	bin string
	err error
}

// goBuild builds ./cmd/<name> into env.BinDir once.
func goBuild(ctx context.Context, env Env, name string) (string, error) {
	builds.Lock()
	defer builds.Unlock()
	if r, ok := builds.done[name]; ok {
		return r.bin, r.err
	}
	if builds.done == nil {
		builds.done = map[string]buildResult{}
	}
	bin := filepath.Join(env.BinDir, name)
	var err error
	if env.Repo == "" {
		err = errors.New("module root not found: run from inside the repd checkout")
	} else {
		env.Logf("building ./cmd/%s", name)
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
		cmd.Dir = env.Repo
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		if e := runGroup(ctx, cmd); e != nil {
			err = fmt.Errorf("go build ./cmd/%s: %v%s", name, e, tail(out.String()))
		}
	}
	builds.done[name] = buildResult{bin, err}
	return bin, err
}

func repdTarget(rc RepdConfig) Target {
	return Target{
		Name: rc.Name,
		Desc: rc.Desc,
		Start: func(ctx context.Context, env Env) (*Endpoint, error) {
			return startRepd(ctx, env, rc)
		},
	}
}

func startRepd(ctx context.Context, env Env, rc RepdConfig) (_ *Endpoint, err error) {
	repd, err := goBuild(ctx, env, "repd")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errSkip, err)
	}
	ep := &Endpoint{}
	var stops []func()
	ep.Stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		stops = nil
	}
	defer func() {
		if err != nil {
			ep.Stop()
		}
	}()

	d := &RepdData{Resource: "bench", Size: env.Size, Protocol: rc.Protocol, Dir: env.Dir, Extra: rc.Extra}
	for _, name := range rc.Nodes {
		n := RepdNode{
			Name:  name,
			Disk:  filepath.Join(env.Dir, name+".img"),
			Meta:  filepath.Join(env.Dir, name+".meta"),
			Admin: filepath.Join(env.Dir, name+".admin.sock"),
		}
		if err := makeBacking(n.Disk, env.Size, env.Prealloc); err != nil {
			return nil, err
		}
		if n.addr, err = newNBDAddr(env.Transport, env.Dir, name+".nbd"); err != nil {
			return nil, err
		}
		n.NBD = n.addr.Addr
		if n.addr.Network == "unix" {
			n.NBD = "unix:" + n.addr.Addr
		}
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		n.Peer = fmt.Sprintf("127.0.0.1:%d", port)
		d.Nodes = append(d.Nodes, n)
	}
	if rc.PreStart != nil {
		stop, err := rc.PreStart(ctx, env, d)
		if err != nil {
			return nil, err
		}
		stops = append(stops, stop)
	}
	text := rc.Template
	if text == "" {
		text = repdTemplate
	}
	conf, err := renderRepdConfig(text, d)
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(env.Dir, "repd.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}

	for _, n := range d.Nodes {
		p, err := StartProc("repd "+n.Name, filepath.Join(env.Dir, "repd-"+n.Name+".log"),
			repd, "--config", confPath, "--node", n.Name)
		if err != nil {
			return nil, err
		}
		stops = append(stops, p.Stop)
		ep.Procs = append(ep.Procs, p)
	}
	for i, n := range d.Nodes {
		if err := waitListen(ctx, ep.Procs[i], n.addr.Network, n.addr.Addr, 30*time.Second); err != nil {
			return nil, err
		}
	}

	primary := d.Nodes[0]
	ep.URI = primary.addr.URI(d.Resource)
	ep.FioArgs = nbdFioArgs(ep.URI)
	ep.Notes = append(ep.Notes, fmt.Sprintf("nodes %s, protocol %s, fio on %s", strings.Join(rc.Nodes, ","), rc.Protocol, primary.Name))
	ep.Notes = append(ep.Notes, promote(ctx, env, ep.Procs[0], primary.Admin))
	return ep, nil
}

// renderRepdConfig executes a resource-file template.
func renderRepdConfig(text string, d *RepdData) (string, error) {
	tmpl, err := template.New("resource").Parse(text)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, d); err != nil {
		return "", err
	}
	return b.String(), nil
}

// promote makes the node Primary with repctl, so that it takes writes. A
// fresh resource needs --force (no UpToDate data yet). It returns a note for
// the report; failure is not fatal here: the write probe reports it.
func promote(ctx context.Context, env Env, p *Proc, admin string) string {
	repctl, err := goBuild(ctx, env, "repctl")
	if err != nil {
		return "not promoted (repctl does not build): " + err.Error()
	}
	if err := waitListen(ctx, p, "unix", admin, 10*time.Second); err != nil {
		return "not promoted (admin socket): " + err.Error()
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.Command(repctl, "--admin", admin, "primary", "--force")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err = runGroup(pctx, cmd)
	msg := strings.TrimSpace(out.String())
	switch {
	case err == nil:
		return "promoted: repctl primary --force"
	case strings.Contains(strings.ToLower(msg), "already"):
		return "already Primary: " + msg
	}
	return fmt.Sprintf("promote failed (repctl primary --force: %v): %s", err, msg)
}
