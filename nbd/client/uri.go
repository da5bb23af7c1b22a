package client

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// DefaultPort is the IANA port for NBD.
const DefaultPort = "10809"

// Target is what an NBD URI names: where to connect, which export, and
// whether TLS is required.
type Target struct {
	Network string // "tcp" or "unix"
	Address string // host:port, or the socket's path
	Export  string
	TLS     bool // nbds: the connection must be upgraded to TLS
}

// ParseURI parses an NBD URI as QEMU and libnbd write them:
//
//	nbd://HOST[:PORT][/EXPORT]             TCP (port 10809 by default)
//	nbd+unix:///[EXPORT]?socket=PATH       unix socket
//	nbds://... , nbds+unix://...           the same, TLS required
//
// The export name is the path without its leading slash, percent-decoded
// (RESOURCE@SNAPSHOT needs no escaping).
func ParseURI(s string) (Target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Target{}, fmt.Errorf("nbd URI %q: %v", s, err)
	}
	var t Target
	scheme := u.Scheme
	if strings.HasPrefix(scheme, "nbds") {
		t.TLS = true
		scheme = "nbd" + strings.TrimPrefix(scheme, "nbds")
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return Target{}, fmt.Errorf("nbd URI %q: user, fragment or opaque part not supported; write nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH", s)
	}
	t.Export = strings.TrimPrefix(u.Path, "/")
	if len(t.Export) > maxStringLen {
		return Target{}, fmt.Errorf("nbd URI %q: export name longer than %d bytes", s, maxStringLen)
	}
	q := u.Query()
	switch scheme {
	case "nbd", "nbd+tcp":
		if len(q) != 0 {
			return Target{}, fmt.Errorf("nbd URI %q: a TCP URI takes no query (socket= is for nbd+unix://)", s)
		}
		if u.Host == "" {
			return Target{}, fmt.Errorf("nbd URI %q: no host; write nbd://HOST[:PORT]/EXPORT", s)
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = DefaultPort
		}
		t.Network, t.Address = "tcp", net.JoinHostPort(host, port)
	case "nbd+unix":
		if u.Host != "" {
			return Target{}, fmt.Errorf("nbd URI %q: a unix URI has no host; write nbd+unix:///EXPORT?socket=PATH", s)
		}
		sock := q.Get("socket")
		if sock == "" || len(q["socket"]) != 1 {
			return Target{}, fmt.Errorf("nbd URI %q: say the socket once: nbd+unix:///EXPORT?socket=PATH", s)
		}
		for k := range q {
			if k != "socket" {
				return Target{}, fmt.Errorf("nbd URI %q: unknown query parameter %q (only socket=)", s, k)
			}
		}
		t.Network, t.Address = "unix", sock
	default:
		return Target{}, fmt.Errorf("nbd URI %q: scheme %q not supported; use nbd://, nbd+unix://, nbds:// or nbds+unix://", s, u.Scheme)
	}
	return t, nil
}

// String writes t back as a URI.
func (t Target) String() string {
	scheme := "nbd"
	if t.TLS {
		scheme = "nbds"
	}
	path := "/" + (&url.URL{Path: t.Export}).EscapedPath()
	if t.Network == "unix" {
		return scheme + "+unix://" + path + "?socket=" + strings.ReplaceAll(url.QueryEscape(t.Address), "%2F", "/")
	}
	return scheme + "://" + t.Address + path
}
