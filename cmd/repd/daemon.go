package main

import (
	"context"
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
	"github.com/repd/repd/config"
	"github.com/repd/repd/metrics"
	"github.com/repd/repd/nbd"
	"github.com/repd/repd/replica"
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

	st, err := replica.OpenFileStore(self.Disk, int64(f.Resource.Size))
	if err != nil {
		return fmt.Errorf("node %q.disk: %w", self.Name, err)
	}
	hub := &admin.Hub{}
	rcfg.OnEvent = hub.Publish
	node, err := replica.Open(rcfg, st)
	if err != nil {
		st.Close()
		return err
	}

	network, addr, _ := config.SplitListen(self.NBD)
	if network == "unix" {
		os.Remove(addr)
	}
	nbdL, err := net.Listen(network, addr)
	if err != nil {
		node.Close()
		return fmt.Errorf("node %q.nbd: %w", self.Name, err)
	}
	adminL, err := admin.Listen(self.Admin, f.Resource.AdminGroup, log)
	if err != nil {
		nbdL.Close()
		node.Close()
		return fmt.Errorf("node %q.admin: %w", self.Name, err)
	}

	var metricsL net.Listener
	if self.Metrics != "" {
		if metricsL, err = net.Listen("tcp", self.Metrics); err != nil {
			adminL.Close()
			nbdL.Close()
			node.Close()
			return fmt.Errorf("node %q.metrics: %w", self.Name, err)
		}
	}

	mx := metrics.New(node)
	srv := &nbd.Server{
		Exports:   []nbd.Export{{Name: f.Resource.Name, Description: "repd resource " + f.Resource.Name + " on " + self.Name, Device: node}},
		Logger:    log.With("component", "nbd"),
		OnRequest: mx.ObserveRequest,
	}
	api := &http.Server{Handler: admin.Handler(node, hub), ReadHeaderTimeout: 10 * time.Second}
	mxHandler := mx.Handler()
	if o.pprof {
		mux := http.NewServeMux()
		mux.Handle("/", mxHandler)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mxHandler = mux
	}
	mxSrv := &http.Server{Handler: mxHandler, ReadHeaderTimeout: 10 * time.Second}

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	if metricsL != nil {
		wg.Add(1)
		go func() { defer wg.Done(); errc <- wrap("metrics", httpServe(mxSrv, metricsL)) }()
	}
	wg.Add(3)
	go func() { defer wg.Done(); errc <- wrap("replication", node.Run(runCtx)) }()
	go func() { defer wg.Done(); errc <- wrap("nbd", srv.Serve(runCtx, nbdL)) }()
	go func() { defer wg.Done(); errc <- wrap("admin", httpServe(api, adminL)) }()
	log.Info("repd started", "nbd", self.NBD, "peer", self.Peer, "admin", self.Admin, "metrics", self.Metrics,
		"protocol", f.Resource.Protocol, "size", int64(f.Resource.Size))

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
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("nbd shutdown", "err", err)
	}
	if err := node.Flush(sctx); err != nil {
		log.Warn("final flush", "err", err)
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
