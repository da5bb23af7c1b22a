package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/repd/repd/admin"
	"github.com/repd/repd/api"
)

func cmdSnapshot() *cli.Command {
	return &cli.Command{
		Name:  "snapshot",
		Usage: "take, list and delete point-in-time snapshots (read-only NBD exports RESOURCE@NAME)",
		Description: "A snapshot is a crash-consistent image of the device at a point of the write stream:\n" +
			"every write acknowledged before it is in it, none issued after. It is kept copy-on-write\n" +
			"in the node's snapshot store (resource.snapshot-store-size) and survives restarts.",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "take snapshot NAME on this node (or on --node N[,M] / --node all) and wait until it exists",
				ArgsUsage: "NAME",
				Description: "On the Primary the snapshot is a barrier in its write stream. On a Secondary\n" +
					"connected to a Primary it is asked of the Primary, which inserts it in the stream\n" +
					"the Secondary applies, so a backup can read a Secondary and leave the Primary alone.\n" +
					"A Secondary with no Primary connected takes it at once (nothing is writing).\n" +
					"--node names the nodes that take it at the same point (this node's name for itself),\n" +
					"or \"all\": every connected UpToDate node.\n" +
					"--lazy takes it on this node only, with its copies synced in the background: the\n" +
					"first write into each 64 KiB chunk after it does not wait for the store's fdatasync.\n" +
					"It survives restarts of repd; a power loss or kernel crash within 5-10 s of\n" +
					"its last copy invalidates it. repctl backup takes its snapshots this way.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "node", Usage: "take it on these nodes (comma-separated names, or all) at the same point"},
					&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
					&cli.BoolFlag{Name: "lazy", Usage: "on this node only, copies synced in the background (lost to a power loss)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return usageError("snapshot create takes one snapshot name")
					}
					// Flags may follow the name too (snapshot create NAME --node all).
					node, asJSON, lazy := c.String("node"), c.Bool("json"), c.Bool("lazy")
					rest := c.Args().Tail()
					for len(rest) > 0 {
						switch a := rest[0]; {
						case a == "--json" || a == "-json":
							asJSON = true
						case a == "--lazy" || a == "-lazy":
							lazy = true
						case (a == "--node" || a == "-node") && len(rest) > 1:
							node, rest = rest[1], rest[1:]
						case strings.HasPrefix(a, "--node="):
							node = strings.TrimPrefix(a, "--node=")
						default:
							return usageError("snapshot create takes one snapshot name, then --node, --lazy and --json; not %q", a)
						}
						rest = rest[1:]
					}
					nodes, err := snapshotNodes(node)
					if err != nil {
						return err
					}
					if lazy && len(nodes) > 0 {
						return usageError("--lazy takes the snapshot on the node asked only: leave out --node, and ask each node")
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return runSnapshotCreate(c.Context, cl, c.Args().First(), nodes, lazy, asJSON, os.Stdout)
				},
			},
			{
				Name:  "list",
				Usage: "list this node's snapshots with their age, size and validity",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the admin API's snapshot list as JSON"}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 0 {
						return usageError("snapshot list takes no arguments")
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					l, err := cl.Snapshots(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(os.Stdout, l)
					}
					printSnapshots(os.Stdout, l)
					return nil
				},
			},
			{
				Name:      "delete",
				Usage:     "delete this node's snapshot NAME (valid or not) and free what only it used",
				ArgsUsage: "NAME",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usageError("snapshot delete takes one snapshot name")
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					return cl.DeleteSnapshot(c.Context, c.Args().First())
				},
			},
		},
	}
}

// snapshotNodes parses --node: comma-separated node names, or all.
func snapshotNodes(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var nodes []string
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			return nil, usageError("--node %q: an empty node name; give names separated by commas, or all", s)
		}
		nodes = append(nodes, n)
	}
	if len(nodes) > 1 && strings.Contains(","+s+",", ",all,") {
		return nil, usageError("--node %q: all means every connected UpToDate node; give it alone", s)
	}
	return nodes, nil
}

// runSnapshotCreate takes the snapshot and reports where it was created.
func runSnapshotCreate(ctx context.Context, cl *admin.Client, name string, nodes []string, lazy, asJSON bool, w io.Writer) error {
	snap := cl.Snapshot
	if lazy {
		snap = func(ctx context.Context, name string, _ []string) (api.SnapshotResult, error) {
			return cl.SnapshotLazy(ctx, name)
		}
	}
	res, err := snap(ctx, name, nodes)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(w, res)
	}
	fmt.Fprintf(w, "snapshot %s created on %s\n", res.Name, strings.Join(res.Created, ", "))
	if res.Note != "" {
		fmt.Fprintf(w, "(%s)\n", res.Note)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printSnapshots renders a node's snapshot list as a table.
func printSnapshots(w io.Writer, l api.SnapshotList) {
	if !l.Enabled {
		fmt.Fprintf(w, "snapshots are off on %s (resource.snapshot-store-size = 0)\n", l.Node)
		return
	}
	fmt.Fprintf(w, "%s on %s: store %s of %s used", l.Resource, l.Node, size(l.UsedBytes), size(l.CapacityBytes))
	if l.PrewriteLeftBytes > 0 {
		fmt.Fprintf(w, " (new: %s still to pre-write)", size(l.PrewriteLeftBytes))
	}
	if l.Failed != "" {
		fmt.Fprintf(w, ", FAILED: %s", l.Failed)
	}
	fmt.Fprintln(w)
	if len(l.Snapshots) == 0 {
		fmt.Fprintln(w, "no snapshots")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCREATED\tAGE\tBYTES\tEXCLUSIVE\tSTATE")
	for _, s := range l.Snapshots {
		state := "valid"
		if s.Lazy {
			state = "valid, lazy"
		}
		if !s.Valid {
			state = "INVALID: " + s.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Created.Local().Format(time.DateTime), age(time.Duration(s.AgeSeconds)*time.Second),
			size(s.Bytes), size(s.ExclusiveBytes), state)
	}
	tw.Flush()
}

// age writes a duration as its two largest units: 45s, 3m12s, 5h03m, 2d04h.
func age(d time.Duration) string {
	s := int64(d.Seconds())
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", max(s, 0))
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}
