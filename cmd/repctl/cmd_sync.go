package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
	"github.com/repd/repd/config"
	"github.com/repd/repd/replica"
)

// peerVerb is a verb that takes at most one peer name and calls fn.
func peerVerb(name string, aliases []string, usage, desc string, fn func(*admin.Client, context.Context, string) error) *cli.Command {
	return &cli.Command{
		Name:        name,
		Aliases:     aliases,
		Usage:       usage,
		Description: desc,
		ArgsUsage:   "[PEER]",
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageError("%s takes at most one peer name", name)
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			return fn(cl, c.Context, c.Args().First())
		},
	}
}

func cmdInvalidate() *cli.Command {
	return peerVerb("invalidate", []string{"resync"},
		"throw this node's data away: full resync from a connected UpToDate peer (refused on a Primary)",
		"This node becomes SyncTarget and stays Inconsistent until the resync is done.\n"+
			"Without PEER the first connected UpToDate peer is the source.",
		(*admin.Client).Invalidate)
}

func cmdInvalidateRemote() *cli.Command {
	return peerVerb("invalidate-remote", nil,
		"make the peer (the first connected one when none is named) resync everything from this node",
		"This node must be UpToDate; the peer must not be Primary.",
		(*admin.Client).InvalidateRemote)
}

func cmdPauseSync() *cli.Command {
	return peerVerb("pause-sync", nil,
		"pause the resync toward the peer (every peer when none is named); run it on the sync source",
		"The replication state becomes PausedSync and status shows sync_paused_by_user;\n"+
			"the blocks stay marked out of sync until resume-sync.",
		(*admin.Client).PauseSync)
}

func cmdResumeSync() *cli.Command {
	return peerVerb("resume-sync", nil,
		"resume a resync paused with pause-sync (every peer when none is named)", "",
		(*admin.Client).ResumeSync)
}

func cmdVerify() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "online verify: compare block hashes with the peer (the first connected one) without stopping I/O",
		ArgsUsage: "[PEER]",
		Description: "Blocks that differ are marked out of sync on both nodes and logged with their ranges;\n" +
			"status counts them (verify_mismatches_kib). When one of the two nodes is Primary the\n" +
			"repair (a resync of the marked blocks from the Primary) starts by itself; between two\n" +
			"Secondaries run `repctl invalidate` on the node with the bad copy. Run verify on the\n" +
			"Primary when there is one. --wait waits for the end and prints the result.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "wait", Usage: "wait until the verify is done and print what it found"},
			&cli.DurationFlag{Name: "timeout", Usage: "with --wait: give up after this long (exit 5)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageError("verify takes at most one peer name")
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			peer := c.Args().First()
			if err := cl.Verify(c.Context, peer); err != nil {
				return err
			}
			if !c.Bool("wait") {
				return nil
			}
			if peer == "" {
				st, err := cl.Status(c.Context)
				if err != nil {
					return err
				}
				for _, p := range st.Peers {
					if p.Replication == api.VerifySource {
						peer = p.Name
					}
				}
			}
			ctx := c.Context
			if d := c.Duration("timeout"); d > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			tty := isTerminal(os.Stdout)
			last := ""
			for {
				st, err := cl.Status(ctx)
				if err != nil {
					return err
				}
				for _, p := range st.Peers {
					if p.Name != peer && peer != "" {
						continue
					}
					if p.Replication != api.VerifySource {
						if tty {
							fmt.Println()
						}
						fmt.Printf("verify with %s done: %s differ, %s out of sync\n", p.Name, kib(p.VerifyMismatchKiB), kib(p.OutOfSyncKiB))
						return nil
					}
					report(os.Stdout, tty, verifyLine(p), &last)
				}
				select {
				case <-ctx.Done():
					if errors.Is(ctx.Err(), context.DeadlineExceeded) {
						return fmt.Errorf("timed out waiting for the verify (%s): %w", last, context.DeadlineExceeded)
					}
					return ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
			}
		},
	}
}

func verifyLine(p api.PeerStatus) string {
	s := p.Name + ":" + p.Replication.String()
	if p.VerifyPercent != nil {
		s += " " + bar(*p.VerifyPercent)
	}
	if p.VerifyRateBytesSec > 0 {
		s += fmt.Sprintf(" %s/s", kib(p.VerifyRateBytesSec/1024))
	}
	return s + " differ:" + kib(p.VerifyMismatchKiB)
}

// syncProgress renders a resync's progress: done:xx.x% left, rate, ETA.
func syncProgress(p api.PeerStatus) string {
	if p.SyncPercent == nil {
		return ""
	}
	parts := []string{fmt.Sprintf("done:%.1f%%", *p.SyncPercent), "left:" + kib(p.SyncLeftBytes/1024)}
	if p.SyncRateBytesPerSec > 0 {
		parts = append(parts, fmt.Sprintf("rate:%s/s", kib(p.SyncRateBytesPerSec/1024)))
	}
	if p.SyncETASeconds > 0 {
		parts = append(parts, "eta:"+(time.Duration(p.SyncETASeconds)*time.Second).String())
	}
	if p.SyncPausedByUser {
		parts = append(parts, "paused-by-user")
	}
	return strings.Join(parts, " ")
}

func cmdCreateMD() *cli.Command {
	return &cli.Command{
		Name:  "create-md",
		Usage: "initialize this node's meta file (offline: the daemon must not run)",
		Description: "Needs --config FILE --node NAME (the meta path, size, block size and node id come from\n" +
			"the resource file). Refuses to overwrite a valid meta file without --force, and always\n" +
			"refuses while repd holds the file (it is locked).",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "overwrite an existing meta file (its bitmaps and generation identifiers are lost)"},
			// Also accepted after the verb, as the README writes it.
			&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Usage: "resource file"},
			&cli.StringFlag{Name: "node", Aliases: []string{"n"}, Usage: "node name (default: the host name)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("create-md takes no arguments")
			}
			conf, node := c.Path("config"), c.String("node")
			for _, a := range c.Lineage()[1:] { // global flags before the verb
				if conf == "" {
					conf = a.Path("config")
				}
				if node == "" {
					node = a.String("node")
				}
			}
			return runCreateMD(conf, node, c.Bool("force"))
		},
	}
}

func runCreateMD(conf, name string, force bool) error {
	if conf == "" {
		return usageError("create-md needs --config FILE --node NAME")
	}
	f, err := config.Load(conf)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	if name == "" {
		name, _ = os.Hostname()
	}
	n, err := f.Node(name)
	if err != nil {
		return cli.Exit(err.Error()+"; pass --node", exitUsage)
	}
	cfg, err := replica.FromFile(f, n.Name)
	if err != nil {
		return cli.Exit(err.Error(), exitUsage)
	}
	if err := replica.CreateMeta(cfg, force); err != nil {
		if errors.Is(err, replica.ErrMetaExists) {
			return cli.Exit(fmt.Sprintf("meta file %s exists; use --force to overwrite it (its bitmaps and generation identifiers are lost)", n.Meta), exitRefused)
		}
		return cli.Exit(err.Error(), exitRefused)
	}
	fmt.Printf("initialized meta file %s for node %s of resource %s\n", n.Meta, n.Name, f.Resource.Name)
	return nil
}
