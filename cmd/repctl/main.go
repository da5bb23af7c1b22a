// Command repctl drives a repd node over its admin socket.
//
// Exit codes: 0 success; 1 other error; 2 bad usage; 3 refused by the node
// (the message says why and what to do); 4 the daemon cannot be reached;
// 5 timed out waiting.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/config"
)

// Exit codes.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitRefused     = 3
	exitUnreachable = 4
	exitTimeout     = 5
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	app := newApp()
	unknown := ""
	app.CommandNotFound = func(_ *cli.Context, name string) { unknown = name }
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := app.RunContext(ctx, args)
	if unknown != "" {
		fmt.Fprintf(os.Stderr, "repctl: unknown command %q; see repctl --help\n", unknown)
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(os.Stderr, "repctl:", err)
	return exitCode(err)
}

// exitCode is the one place errors become exit codes.
func exitCode(err error) int {
	var api *admin.APIError
	var ec cli.ExitCoder
	switch {
	case errors.As(err, &api) && api.Kind == admin.KindRefused:
		return exitRefused
	case errors.As(err, &api) && api.Kind == admin.KindBadRequest:
		return exitUsage
	case errors.Is(err, admin.ErrUnreachable):
		return exitUnreachable
	case errors.Is(err, context.DeadlineExceeded):
		return exitTimeout
	case errors.As(err, &ec):
		return ec.ExitCode()
	}
	return exitError
}

func usageError(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf(format, a...), exitUsage)
}

func newApp() *cli.App {
	app := &cli.App{
		Name:  "repctl",
		Usage: "control a repd node (status, roles, connections)",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "admin", Aliases: []string{"s"}, Usage: "the node's admin socket", EnvVars: []string{"REPD_ADMIN"}},
			&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Usage: "resource file: find the admin socket of --node in it", EnvVars: []string{"REPD_CONFIG"}},
			&cli.StringFlag{Name: "node", Aliases: []string{"n"}, Usage: "node name in --config (default: the host name)", EnvVars: []string{"REPD_NODE"}},
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return cli.Exit(err.Error(), exitUsage)
		},
		Commands: []*cli.Command{
			cmdStatus(),
			cmdEvents(),
			cmdPrimary(),
			cmdSecondary(),
			cmdConnect(),
			cmdDisconnect(),
			cmdNewCurrentUUID(),
			cmdWaitConnect(),
			cmdWaitSync(),
			cmdInvalidate(),
			cmdInvalidateRemote(),
			cmdPauseSync(),
			cmdResumeSync(),
			cmdVerify(),
			cmdCreateMD(),
			cmdCheckConfig(),
			cmdBackup(),
			cmdRestore(),
			cmdBackups(),
			cmdSnapshot(),
		},
	}
	for _, c := range app.Commands {
		usageExits(c, c.Name)
	}
	return app
}

// usageExits makes a verb's bad flag a usage error (exit 2), as the
// global flags' are, for c and its subcommands.
func usageExits(c *cli.Command, path string) {
	if c.OnUsageError == nil {
		c.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return cli.Exit(fmt.Sprintf("%s: %v (see repctl %s --help)", path, err, path), exitUsage)
		}
	}
	for _, sc := range c.Subcommands {
		usageExits(sc, path+" "+sc.Name)
	}
}

// client finds the admin socket from the global flags.
func client(c *cli.Context) (*admin.Client, error) {
	if s := c.Path("admin"); s != "" {
		return admin.NewClient(s), nil
	}
	if p := c.Path("config"); p != "" {
		f, err := config.Load(p)
		if err != nil {
			return nil, cli.Exit(err.Error(), exitUsage)
		}
		name := globalString(c, "node")
		if name == "" {
			name, _ = os.Hostname()
		}
		n, err := f.Node(name)
		if err != nil {
			return nil, cli.Exit(err.Error()+"; pass --node", exitUsage)
		}
		return admin.NewClient(n.Admin), nil
	}
	return nil, usageError("say which node: --admin SOCKET, or --config FILE [--node NAME]")
}

// globalString is the value of a global flag, even where a verb has a flag
// of the same name (snapshot create --node): the outermost flag set that
// defines it wins.
func globalString(c *cli.Context, name string) string {
	lin := c.Lineage()
	for i := len(lin) - 1; i >= 0; i-- {
		if lin[i].Command == nil {
			continue
		}
		for _, f := range lin[i].Command.Flags {
			if slices.Contains(f.Names(), name) {
				return lin[i].String(name)
			}
		}
	}
	return c.String(name)
}
