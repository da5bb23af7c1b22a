package main

import (
	"github.com/urfave/cli/v2"
)

func cmdPrimary() *cli.Command {
	return &cli.Command{
		Name:    "primary",
		Aliases: []string{"promote"},
		Usage:   "make this node Primary: it serves NBD writes",
		Description: "Refused while a connected peer is Primary, or when the local disk is not UpToDate.\n" +
			"--force promotes an Inconsistent or Outdated disk anyway (the first promote of a new\n" +
			"resource needs it: that node's data becomes the reference the peers sync from).",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "promote even if the local disk is not UpToDate"}},
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			return cl.Primary(c.Context, c.Bool("force"))
		},
	}
}

func cmdSecondary() *cli.Command {
	return &cli.Command{
		Name:    "secondary",
		Aliases: []string{"demote"},
		Usage:   "make this node Secondary: finish and flush in-flight writes, then refuse NBD writes",
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			return cl.Secondary(c.Context)
		},
	}
}

func cmdConnect() *cli.Command {
	return &cli.Command{
		Name:      "connect",
		Usage:     "connect to a peer (all peers when none is named) after disconnect or split brain",
		ArgsUsage: "[PEER]",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "discard-my-data",
			Usage: "split-brain recovery on the victim: throw away this node's changes and resync from the peer"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageError("connect takes at most one peer name")
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			return cl.Connect(c.Context, c.Args().First(), c.Bool("discard-my-data"))
		},
	}
}

func cmdDisconnect() *cli.Command {
	return &cli.Command{
		Name:      "disconnect",
		Usage:     "drop the connection to a peer (all peers when none is named) and stay StandAlone",
		ArgsUsage: "[PEER]",
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageError("disconnect takes at most one peer name")
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			return cl.Disconnect(c.Context, c.Args().First())
		},
	}
}

func cmdNewCurrentUUID() *cli.Command {
	return &cli.Command{
		Name:  "new-current-uuid",
		Usage: "start a new data generation; with --clear-bitmap skip the initial sync of brand-new empty disks",
		Description: "On a fresh resource whose disks are all empty (or identical), run\n" +
			"  repctl new-current-uuid --clear-bitmap\n" +
			"on one node while all nodes are connected and Secondary: every node becomes UpToDate\n" +
			"without copying a byte. Never use it on disks with different contents.",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "clear-bitmap", Usage: "declare the connected peers in sync (no initial sync)"}},
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			return cl.NewCurrentUUID(c.Context, c.Bool("clear-bitmap"))
		},
	}
}
