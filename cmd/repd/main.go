// Command repd runs one node of a replicated block device resource.
//
//	repd --config /etc/repd/r0.toml --node alpha
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	keepSysmonAwake()
	app := &cli.App{
		Name:  "repd",
		Usage: "userspace replicated block device daemon (one node of a resource)",
		Description: "repd serves the resource's device over NBD on this node and replicates it to the\n" +
			"other nodes named in the resource file. Drive it with repctl.",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Usage: "resource file (TOML)", Required: true, EnvVars: []string{"REPD_CONFIG"}},
			&cli.StringFlag{Name: "node", Aliases: []string{"n"}, Usage: "this node's name in the resource file (default: the host name)", EnvVars: []string{"REPD_NODE"}},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn, error"},
			&cli.BoolFlag{Name: "pprof", Usage: "also serve /debug/pprof on the node's metrics address (for profiling; keep that address private)"},
		},
		HideHelpCommand: true,
		Action: func(c *cli.Context) error {
			log, err := newLogger(c.String("log-format"), c.String("log-level"))
			if err != nil {
				return cli.Exit(err, 2)
			}
			node := c.String("node")
			if node == "" {
				node, _ = os.Hostname()
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return run(ctx, options{config: c.Path("config"), node: node, log: log, pprof: c.Bool("pprof")})
		},
	}
	if err := app.Run(os.Args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			fmt.Fprintln(os.Stderr, "repd:", err)
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "repd:", err)
		os.Exit(1)
	}
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
