// Command linkproxy forwards TCP connections through a faultnet.Proxy,
// adding delay, jitter, a bandwidth cap, loss and corruption, and lets a
// benchmark or a demo partition, stall and cut the link while it runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/repd/repd/faultnet"
)

const usage = `Usage: linkproxy --listen ADDR --target ADDR [flags]

Forwards every TCP connection accepted on --listen to --target, shaping each
direction (up = client→target, down = target→client). --delay, --jitter,
--bandwidth, --corrupt, --loss and --loss-penalty apply to both directions;
--up and --down override them for one, as a list such as
"delay=10ms,bandwidth=50MiB". Runs until SIGINT or SIGTERM.

Sizes: B, K/KiB, M/MiB, G/GiB (1024), KB, MB, GB (1000), kbit, Mbit, Gbit
(bits, 1000); a trailing "/s" is allowed; 0 is unlimited.

Control while running:
  SIGUSR1                toggle partition (blackhole both ways, nothing closed)
  SIGUSR2                toggle stall (stop reading both sides)
  --control ADDR         HTTP on a loopback address, any method:
    /partition /heal       start or end a partition
    /stall /unstall        start or end a stall
    /cut                   reset every current connection
    /link?dir=up|down|both&delay=5ms&...   change shaping live (keys as in --up)
    /stats                 counters and state as JSON
  e.g. curl -s http://127.0.0.1:7002/partition

Flags:
`

type options struct {
	listen, target string
	control        string
	seed           int64
	up, down       faultnet.Link
	statsEvery     time.Duration
}

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "linkproxy:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, opts, log, nil); err != nil {
		fmt.Fprintln(os.Stderr, "linkproxy:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, out io.Writer) (options, error) {
	var (
		o                  options
		both               faultnet.Link
		bandwidth, up, dwn string
	)
	fs := flag.NewFlagSet("linkproxy", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7001", "address to accept connections on")
	fs.StringVar(&o.target, "target", "", "address to forward connections to (required)")
	fs.StringVar(&o.control, "control", "", "loopback address for the HTTP control (off if empty)")
	fs.Int64Var(&o.seed, "seed", 0, "seed of the randomness (0: from the clock; the seed is logged)")
	fs.DurationVar(&o.statsEvery, "stats", 0, "log counters this often (0: only at exit)")
	fs.DurationVar(&both.Delay, "delay", 0, "one-way delay added to each direction")
	fs.DurationVar(&both.Jitter, "jitter", 0, "uniform random extra delay 0..jitter (never reorders)")
	fs.StringVar(&bandwidth, "bandwidth", "0", "bytes per second each way, e.g. 100MiB (0: unlimited)")
	fs.Float64Var(&both.CorruptProb, "corrupt", 0, "probability per chunk of flipping one bit")
	fs.Float64Var(&both.LossProb, "loss", 0, "probability per chunk of a loss (the stream stalls --loss-penalty)")
	fs.DurationVar(&both.LossPenalty, "loss-penalty", faultnet.DefaultLossPenalty, "stall of a lost chunk")
	fs.StringVar(&up, "up", "", "shaping of client→target overriding the above, e.g. delay=5ms,bandwidth=1GiB")
	fs.StringVar(&dwn, "down", "", "shaping of target→client overriding the above")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.target == "" {
		return o, errors.New("--target is required")
	}
	bw, err := parseSize(bandwidth)
	if err != nil {
		return o, fmt.Errorf("--bandwidth: %w", err)
	}
	both.Bandwidth = bw
	if err := checkLink(both); err != nil {
		return o, err
	}
	o.up, o.down = both, both
	for _, d := range []struct {
		name, spec string
		l          *faultnet.Link
	}{{"--up", up, &o.up}, {"--down", dwn, &o.down}} {
		if err := applySpec(d.l, d.spec); err != nil {
			return o, fmt.Errorf("%s: %w", d.name, err)
		}
	}
	if o.control != "" {
		if err := checkLoopback(o.control); err != nil {
			return o, fmt.Errorf("--control: %w", err)
		}
	}
	return o, nil
}

// run runs the proxy (and the control server) until ctx is done. ready, if
// not nil, is called with the listening addresses once both listen.
func run(ctx context.Context, o options, log *slog.Logger, ready func(proxy, control string)) error {
	p, err := faultnet.NewProxy(o.listen, o.target, o.seed)
	if err != nil {
		return err
	}
	p.Logger = log
	p.SetLink(o.up, o.down)
	if err := p.Start(); err != nil {
		return err
	}
	defer func() {
		p.Close()
		log.Info("linkproxy stopped", "stats", fmt.Sprintf("%+v", p.Stats()))
	}()
	log.Info("linkproxy", "listen", p.Addr(), "target", o.target, "seed", p.Seed(),
		"up", formatLink(o.up), "down", formatLink(o.down))

	controlAddr := ""
	if o.control != "" {
		ln, err := net.Listen("tcp", o.control)
		if err != nil {
			return fmt.Errorf("control: %w", err)
		}
		srv := &http.Server{Handler: controlHandler(p, log), ReadHeaderTimeout: 5 * time.Second}
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(ln)
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			<-done
		}()
		controlAddr = ln.Addr().String()
		log.Info("linkproxy control", "addr", "http://"+controlAddr)
	}
	if ready != nil {
		ready(p.Addr(), controlAddr)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sig)
	var tick <-chan time.Time
	if o.statsEvery > 0 {
		t := time.NewTicker(o.statsEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-sig:
			switch s {
			case syscall.SIGUSR1:
				p.Partition(!p.Partitioned())
				log.Info("linkproxy", "partitioned", p.Partitioned())
			case syscall.SIGUSR2:
				p.Stall(!p.Stalled())
				log.Info("linkproxy", "stalled", p.Stalled())
			}
		case <-tick:
			log.Info("linkproxy", "stats", fmt.Sprintf("%+v", p.Stats()))
		}
	}
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s is not a loopback address", addr)
	}
	return nil
}
