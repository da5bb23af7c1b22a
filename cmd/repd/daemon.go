package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"time"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
	"github.com/repd/repd/metrics"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/replica"
	"github.com/repd/repd/sockfile"
)

type options struct {
	config string
	node   string
	log    *slog.Logger
	pprof  bool
}

// shutdownGrace bounds how long a clean shutdown waits for in-flight NBD
// requests before closing connections anyway.
const shutdownGrace = 30 * time.Second

// run runs one node until ctx ends, then shuts down cleanly: stop accepting,
// finish in-flight requests, flush, close.
func run(ctx context.Context, o options) error {
	f, err := config.Load(o.config)
	if err != nil {
		return err
	}
	self, err := f.Node(o.node)
	if err != nil {
		return err
	}
	rcfg, err := replica.FromFile(f, self.Name)
	if err != nil {
		return err
	}
	rcfg.Logger = o.log // the engine names resource and node itself
	log := o.log.With("resource", f.Resource.Name, "node", self.Name)
	setMemoryLimit(&rcfg, log)
	if err := pinCPUs(f.NodeCPUMask(self), log); err != nil {
		return err
	}
	adaptProcs(ctx, log)

	// A witness (disk = "none") has no store and serves no NBD: it votes.
	witness := self.Witness()
	var nbdTLS *tls.Config
	var nbdMode nbd.TLSMode
	if !witness {
		if nbdTLS, nbdMode, err = nbdTLSConfig(f, self, log); err != nil {
			return err
		}
	}
	var st replica.Store
	var fs *replica.FileStore
	if !witness {
		if fs, err = replica.OpenFileStore(self.Disk, int64(f.Resource.Size)); err != nil {
			return fmt.Errorf("node %q.disk: %w", self.Name, err)
		}
		st = fs
	}
	hub := &admin.Hub{}
	var closer *exportCloser // set before the node runs; nil on a witness
	rcfg.OnEvent = func(e api.Event) {
		hub.Publish(e)
		if closer != nil {
			closer.onEvent(e)
		}
	}
	node, err := replica.Open(rcfg, st)
	if err != nil {
		if st != nil {
			st.Close()
		}
		if fs != nil && fs.Created() {
			// Created by this start and empty: gone again, so that the
			// next start finds what this one found (ErrDataGone).
			os.Remove(self.Disk)
		}
		return err
	}

	backups, err := openBackupRecord(backupRecordPath(self.Meta))
	if err != nil {
		log.Warn("backup record", "err", err)
	}
	served := recordingNode{Node: node, backups: backups, log: log.With("component", "backup"), publish: hub.Publish}

	var nbdL net.Listener
	if !witness {
		if nbdL, err = listenNBD(self.NBD); err != nil {
			node.Close()
			return fmt.Errorf("node %q.nbd: %w", self.Name, err)
		}
	}
	closeNBD := func() {
		if nbdL != nil {
			nbdL.Close()
		}
	}
	adminL, err := admin.Listen(self.Admin, f.Resource.AdminGroup, log)
	if err != nil {
		closeNBD()
		node.Close()
		return fmt.Errorf("node %q.admin: %w", self.Name, err)
	}

	var metricsL net.Listener
	if self.Metrics != "" {
		if metricsL, err = net.Listen("tcp", self.Metrics); err != nil {
			adminL.Close()
			closeNBD()
			node.Close()
			return fmt.Errorf("node %q.metrics: %w", self.Name, err)
		}
	}

	mx := metrics.New(served)
	exps := newExports(node, f.Resource.Name, self.Name, 0)
	srv := &nbd.Server{
		ExportsFunc:  exps.list,
		Logger:       log.With("component", "nbd"),
		OnRequest:    mx.ObserveRequest,
		MaxConns:     f.Resource.NBDMaxConnections,
		WriteTimeout: time.Duration(f.Resource.NBDWriteTimeout),
		TLS:          nbdTLS,
		TLSMode:      nbdMode,
	}
	api := &http.Server{Handler: admin.Handler(served, hub), ReadHeaderTimeout: 10 * time.Second}
	mxHandler := mx.Handler()
	if o.pprof {
		mux := http.NewServeMux()
		mux.Handle("/", mxHandler)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mxHandler = mux
	}
	lim := metricsLimits
	if o.pprof {
		lim.write = pprofWriteTimeout // /debug/pprof/profile writes for 30s by default
	}
	mxSrv := metricsServer(mxHandler, lim)
	if !witness {
		closer = newExportCloser(srv, exps, log.With("component", "nbd"))
	}

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Admin requests run under runCtx: an open events stream (repctl
	// events) ends when the node stops instead of holding the shutdown
	// for its whole grace period.
	api.BaseContext = func(net.Listener) context.Context { return runCtx }
	var wg sync.WaitGroup
	errc := make(chan error, 5)
	if metricsL != nil {
		wg.Add(1)
		ml := newLimitListener(metricsL, lim.maxConns, log.With("component", "metrics"))
		go func() { defer wg.Done(); errc <- wrap("metrics", ml.serve(mxSrv)) }()
	}
	wg.Add(2)
	go func() { defer wg.Done(); errc <- wrap("replication", node.Run(runCtx)) }()
	go func() { defer wg.Done(); errc <- wrap("admin", httpServe(api, adminL)) }()
	if !witness {
		wg.Add(2)
		go func() { defer wg.Done(); errc <- wrap("nbd", srv.Serve(runCtx, nbdL)) }()
		go func() { defer wg.Done(); errc <- wrap("snapshot exports", closer.Run(runCtx)) }()
	} else {
		log.Info("witness: no data, no NBD; votes only")
	}
	log.Info("repd started", "nbd", self.NBD, "nbd_tls", nbdMode, "nbd_mutual_tls", nbdTLS != nil && nbdTLS.ClientCAs != nil,
		"nbd_max_connections", f.Resource.NBDMaxConnections, "peer", self.Peer, "admin", self.Admin, "metrics", self.Metrics,
		"protocol", f.Resource.Protocol, "size", int64(f.Resource.Size))
	if r := f.Resource; len(f.Nodes) > 1 && r.SecretFile == "" && r.TLSCert == "" {
		log.Warn("peer links are NOT authenticated (insecure = true): whoever reaches a peer port can write to the device; "+
			"set secret-file or TLS (see SECURITY.md)", "peer", self.Peer)
	}
	if !witness && nbdMode == nbd.TLSOff && !privateNBD(self.NBD) {
		log.Warn("NBD is served in plain text on a non-loopback address: whoever reaches it can read and write the device; "+
			"bind it to a private address or set nbd-tls (see SECURITY.md)", "nbd", self.NBD)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		if runErr != nil {
			log.Error("stopping after failure", "err", runErr)
		}
	}
	sctx, scancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer scancel()
	if !witness {
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("nbd shutdown", "err", err)
		}
		// Best effort, bounded: a Primary that lost quorum would wait
		// for its lease; Close flushes the local store in any case.
		fctx, fcancel := context.WithTimeout(sctx, 2*time.Duration(f.Resource.Timeout))
		if err := node.Flush(fctx); err != nil {
			log.Warn("final flush through the peers did not complete (peers gone or quorum lost); the local disk is still flushed at close", "err", err)
		}
		fcancel()
	}
	cancel()
	api.Shutdown(sctx)
	mxSrv.Shutdown(sctx)
	wg.Wait()
	if err := node.Close(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr == nil {
		log.Info("stopped cleanly")
	}
	return runErr
}

// listenNBD listens on a node's nbd address: TCP, or a unix socket (mode
// 0600: root and the daemon's user) placed as safely as the admin socket.
func listenNBD(address string) (net.Listener, error) {
	network, addr, err := config.SplitListen(address)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		l, err := sockfile.Listen(addr, 0o600)
		if err != nil {
			return nil, err
		}
		return l, nil
	}
	return net.Listen(network, addr)
}

// privateNBD reports whether an nbd address is reachable only from this
// machine: a unix socket or a loopback address.
func privateNBD(address string) bool {
	network, addr, err := config.SplitListen(address)
	if err != nil || network == "unix" {
		return err == nil
	}
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// nbdTLSConfig is the NBD server's TLS mode and configuration from the
// resource file (nil in mode off). A certificate that does not name the
// node's NBD host is only warned about: clients may dial a DNS name.
func nbdTLSConfig(f *config.File, self *config.Node, log *slog.Logger) (*tls.Config, nbd.TLSMode, error) {
	var mode nbd.TLSMode
	switch f.Resource.NBDTLS {
	case config.NBDTLSOff:
		return nil, nbd.TLSOff, nil
	case config.NBDTLSAllow:
		mode = nbd.TLSAllow
	case config.NBDTLSRequire:
		mode = nbd.TLSRequire
	default:
		return nil, 0, fmt.Errorf("resource.nbd-tls: %v", f.Resource.NBDTLS)
	}
	cert, clientCAs, err := f.LoadNBDTLS()
	if err != nil {
		return nil, 0, err
	}
	if network, addr, err := config.SplitListen(self.NBD); err == nil && network == "tcp" {
		host, _, _ := net.SplitHostPort(addr)
		ip := net.ParseIP(host)
		if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil && (ip == nil || !ip.IsUnspecified()) {
			if err := leaf.VerifyHostname(host); err != nil {
				log.Warn("resource.nbd-tls-cert does not name this node's NBD host: clients that dial it by that address will refuse the certificate",
					"nbd", self.NBD, "err", err)
			}
		}
	}
	return nbd.TLSConfig(cert, clientCAs), mode, nil
}

// httpLimits bounds what one client of the metrics/health server can hold.
type httpLimits struct {
	readHeader, read, write, idle time.Duration
	maxHeaderBytes                int
	maxConns                      int // served at once (limitListener)
}

// metricsLimits: a scrape or a health probe takes milliseconds; a client
// that keeps a connection idle, or sends or reads slowly, is cut.
var metricsLimits = httpLimits{
	readHeader:     5 * time.Second,
	read:           10 * time.Second,
	write:          30 * time.Second,
	idle:           60 * time.Second,
	maxHeaderBytes: 16 << 10,
	maxConns:       64,
}

// pprofWriteTimeout replaces the write timeout with --pprof: a CPU profile
// or trace streams for as many seconds as asked (default 30).
const pprofWriteTimeout = 5 * time.Minute

func metricsServer(h http.Handler, lim httpLimits) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.readHeader,
		ReadTimeout:       lim.read,
		WriteTimeout:      lim.write,
		IdleTimeout:       lim.idle,
		MaxHeaderBytes:    lim.maxHeaderBytes,
	}
}

func httpServe(s *http.Server, l net.Listener) error {
	if err := s.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func wrap(what string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) || errors.Is(err, nbd.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}
