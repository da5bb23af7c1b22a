package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/repd/repd/api"
)

func cmdStatus() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show role, disk state and every peer's connection and replication state",
		Description: "The human form reads like drbdadm status. --json prints the admin API's status\n" +
			"object (documented in README.md); its fields are stable.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "refresh every --interval until interrupted"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "refresh interval for --watch"},
		},
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			tty := isTerminal(os.Stdout)
			for {
				st, err := cl.Status(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("watch") && tty {
					fmt.Print("\033[H\033[2J")
				}
				if c.Bool("json") {
					enc := json.NewEncoder(os.Stdout)
					enc.SetIndent("", "  ")
					enc.Encode(st)
				} else {
					printStatus(os.Stdout, st, tty)
				}
				if !c.Bool("watch") {
					return nil
				}
				select {
				case <-c.Context.Done():
					return nil
				case <-time.After(c.Duration("interval")):
				}
			}
		},
	}
}

func cmdEvents() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "stream state changes, one JSON object per line (first the current state as \"exists\" lines)",
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(os.Stdout)
			err = cl.Events(c.Context, func(e api.Event) error { return enc.Encode(e) })
			if c.Context.Err() != nil {
				return nil
			}
			return err
		},
	}
}

// printStatus renders st like `drbdadm status`.
func printStatus(w io.Writer, st api.Status, colour bool) {
	paint := func(s string) string {
		if !colour {
			return s
		}
		code := ""
		switch s {
		case "UpToDate", "Established", "Connected":
			code = "32"
		case "Primary":
			code = "1;36"
		case "Inconsistent", "SyncSource", "SyncTarget", "PausedSync", "Connecting", "Ahead", "Behind", "Outdated", "VerifySource", "VerifyTarget":
			code = "33"
		case "Failed", "StandAlone", "Diskless", "quorum:no", "store:Failed":
			code = "31"
		}
		if code == "" {
			return s
		}
		return "\033[" + code + "m" + s + "\033[0m"
	}
	role := paint(st.Role.String())
	if st.Witness {
		role += " (witness)"
	}
	fmt.Fprintf(w, "%s role:%s\n", st.Resource, role)
	fmt.Fprintf(w, "  disk:%s", paint(st.Disk))
	if st.VotesNeeded > 0 {
		q := "quorum:yes"
		if !st.Quorum {
			q = paint("quorum:no")
		}
		fmt.Fprintf(w, " %s votes:%d/%d (need %d)", q, st.Votes, st.Voters, st.VotesNeeded)
		if st.Lease != "" {
			fmt.Fprintf(w, " lease:%s", st.Lease)
		}
		if st.SuspendedIO > 0 {
			fmt.Fprintf(w, " %s", paint(fmt.Sprintf("suspended-io:%d", st.SuspendedIO)))
		}
	}
	if st.JournalBytes > 0 {
		fmt.Fprintf(w, " journal:%s", kib(st.JournalBytes/1024))
		if st.JournalAgeMS > 0 {
			fmt.Fprintf(w, " lag:%dms", st.JournalAgeMS)
		}
	}
	fmt.Fprintln(w)
	if st.SnapshotStoreCapacity > 0 {
		fmt.Fprintf(w, "  snapshots:%d store:%s/%s", st.Snapshots, size(st.SnapshotStoreUsed), size(st.SnapshotStoreCapacity))
		if st.SnapshotStoreFailed != "" {
			fmt.Fprintf(w, " %s", paint("store:Failed"))
		}
		fmt.Fprintln(w)
	}
	for _, p := range st.Peers {
		line := fmt.Sprintf("  %s connection:%s", p.Name, paint(p.Connection.String()))
		if p.Role != "" {
			line += " role:" + paint(p.Role)
		}
		fmt.Fprintln(w, line)
		var parts []string
		if p.Connection == api.Connected {
			parts = append(parts, "replication:"+paint(p.Replication.String()))
		}
		if p.Disk != "" {
			parts = append(parts, "peer-disk:"+paint(p.Disk))
		}
		if p.Witness {
			parts = append(parts, "witness")
		}
		if s := syncProgress(p); s != "" {
			parts = append(parts, s)
		}
		if p.VerifyPercent != nil {
			parts = append(parts, fmt.Sprintf("verified:%.1f%%", *p.VerifyPercent))
		}
		if p.VerifyMismatchKiB > 0 {
			parts = append(parts, "verify-differ:"+kib(p.VerifyMismatchKiB))
		}
		if !p.Witness {
			parts = append(parts, "out-of-sync:"+kib(p.OutOfSyncKiB))
		}
		if p.SplitBrain {
			parts = append(parts, "split-brain:yes")
		}
		fmt.Fprintf(w, "    %s\n", strings.Join(parts, " "))
		if p.LastError != "" {
			fmt.Fprintf(w, "    last-error: %s\n", p.LastError)
		}
	}
	if st.LastElection != "" {
		fmt.Fprintf(w, "  last-election: %s\n", st.LastElection)
	}
}

func kib(n int64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dKiB", n)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
