package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/repd/repd/backup"
)

func cmdRestore() *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "write a backup point to a file or block device",
		Description: "POINT is a file name in DIR, its time prefix, its snapshot name, or latest.\n" +
			"A new file is written sparse; an existing file or a block device only with --force.\n" +
			"Onto an NBD export (a repd device), use qemu-img, which reads the chain:\n" +
			"  qemu-img convert -n -O raw DIR/POINT.qcow2 nbd://HOST:PORT/EXPORT",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "from", Usage: "backup directory", Required: true},
			&cli.StringFlag{Name: "point", Value: "latest", Usage: "which point"},
			&cli.PathFlag{Name: "to", Usage: "target file or block device"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite an existing file or a block device"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log what is done to stderr"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usageError("restore takes no arguments (--from DIR --to TARGET)")
			}
			if c.Path("to") == "" {
				return usageError("say where to restore: --to FILE or --to /dev/DEVICE (see repctl backups --dir DIR for the points)")
			}
			return runRestore(c.Context, restoreOpts{dir: c.Path("from"), point: c.String("point"), target: c.Path("to"),
				force: c.Bool("force"), out: os.Stdout, tty: isTerminal(os.Stdout), verbose: c.Bool("verbose")})
		},
	}
}

type restoreOpts struct {
	dir, point, target string
	force, tty         bool
	verbose            bool
	out                io.Writer
}

func runRestore(ctx context.Context, o restoreOpts) error {
	if strings.HasPrefix(o.target, "nbd:") || strings.HasPrefix(o.target, "nbds:") || strings.HasPrefix(o.target, "nbd+") {
		return usageError("restore writes files and block devices; onto an NBD export run: qemu-img convert -n -O raw %s/POINT.qcow2 %s", o.dir, o.target)
	}
	if _, err := os.Stat(o.dir); err != nil {
		return usageError("--from: %v", err)
	}
	prog := &progressLine{w: o.out, tty: o.tty}
	repo, err := backup.Open(o.dir, backup.Options{Logger: cliLogger(o.verbose), Progress: prog.report})
	if err != nil {
		return err
	}
	defer repo.Close()
	p, err := repo.Point(o.point)
	if err != nil {
		return usageError("%v", err)
	}
	n, err := repo.Restore(ctx, p.File, o.target, backup.RestoreOptions{Overwrite: o.force})
	prog.end()
	if err != nil {
		return err
	}
	fmt.Fprintf(o.out, "restored %s (snapshot %s, %s) to %s: %s of data\n", p.File, p.Snapshot, p.Time.Format("2006-01-02 15:04:05Z"), o.target, size(n))
	return nil
}

func cmdBackups() *cli.Command {
	return &cli.Command{
		Name:  "backups",
		Usage: "list the points of a backup directory; --verify checks every file",
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "dir", Usage: "backup directory", Required: true},
			&cli.BoolFlag{Name: "verify", Usage: "check each file's checksum, qcow2 metadata and backing file"},
			&cli.BoolFlag{Name: "json", Usage: "print the manifest"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usageError("backups takes no arguments (--dir DIR)")
			}
			return runBackups(c.Context, c.Path("dir"), c.Bool("verify"), c.Bool("json"), os.Stdout)
		},
	}
}

func runBackups(ctx context.Context, dir string, verify, asJSON bool, out io.Writer) error {
	if _, err := os.Stat(dir); err != nil {
		return usageError("--dir: %v", err)
	}
	repo, err := backup.Open(dir, backup.Options{})
	if err != nil {
		return err
	}
	defer repo.Close()
	m := repo.Manifest()
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(m); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tKIND\tSNAPSHOT\tREAD\tFILE SIZE\tFILE")
		for _, p := range m.Points {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Time.Format("2006-01-02 15:04:05Z"), p.Kind, p.Snapshot, size(p.BytesRead), size(p.FileBytes), p.File)
		}
		tw.Flush()
	}
	if !verify {
		return nil
	}
	problems, err := repo.Verify(ctx)
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "problem:", p)
		}
		return fmt.Errorf("%d problems in %s", len(problems), dir)
	}
	fmt.Fprintf(out, "verified %d points: checksums, qcow2 metadata and backing files are as recorded\n", len(m.Points))
	return nil
}
