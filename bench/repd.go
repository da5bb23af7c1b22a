package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"text/template"
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
	Name string
	Disk string
	Meta string
	NBD  string // listen address as the resource file spells it
	Peer string // replication address the others dial, host:port
	// PeerListen, if set, is where the node really listens for peers (a
	// link-shaping proxy forwards Peer to it).
	PeerListen string
	Admin      string  // admin socket path
	addr       nbdAddr // NBD address for clients
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
{{- if .PeerListen}}
peer-listen = {{printf "%q" .PeerListen}}
{{- end}}
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

func startRepd(ctx context.Context, env Env, rc RepdConfig) (*Endpoint, error) {
	c, err := startCluster(ctx, env, rc)
	if err != nil {
		return nil, err
	}
	return c.Endpoint(), nil
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
