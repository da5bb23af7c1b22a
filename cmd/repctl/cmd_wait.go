package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/repd/repd/api"
)

func cmdWaitConnect() *cli.Command {
	return &cli.Command{
		Name:      "wait-connect",
		Usage:     "wait until the peer (every peer when none is named) is Connected",
		ArgsUsage: "[PEER]",
		Flags:     []cli.Flag{&cli.DurationFlag{Name: "timeout", Usage: "give up after this long (exit 5); 0 waits forever"}},
		Action: func(c *cli.Context) error {
			return waitUntil(c, "connected", func(st api.Status, peer string) (bool, string) {
				done, parts := true, []string{}
				for _, p := range st.Peers {
					if peer != "" && p.Name != peer {
						continue
					}
					if p.Connection != api.Connected {
						done = false
					}
					parts = append(parts, p.Name+":"+p.Connection.String())
				}
				return done, strings.Join(parts, " ")
			})
		},
	}
}

func cmdWaitSync() *cli.Command {
	return &cli.Command{
		Name:      "wait-sync",
		Usage:     "wait until the peer (every peer when none is named) is connected and in sync",
		ArgsUsage: "[PEER]",
		Flags:     []cli.Flag{&cli.DurationFlag{Name: "timeout", Usage: "give up after this long (exit 5); 0 waits forever"}},
		Action: func(c *cli.Context) error {
			return waitUntil(c, "in sync", func(st api.Status, peer string) (bool, string) {
				done, parts := true, []string{}
				for _, p := range st.Peers {
					if peer != "" && p.Name != peer {
						continue
					}
					if p.Connection != api.Connected || p.Replication != api.Established || p.OutOfSyncKiB != 0 {
						done = false
					}
					s := fmt.Sprintf("%s:%s out-of-sync:%s", p.Name, p.Replication, kib(p.OutOfSyncKiB))
					if p.Connection != api.Connected {
						s = p.Name + ":" + p.Connection.String()
					}
					if p.SyncPercent != nil {
						s += " " + bar(*p.SyncPercent)
						if p.SyncETASeconds > 0 {
							s += fmt.Sprintf(" eta:%v", time.Duration(p.SyncETASeconds)*time.Second)
						}
						if p.SyncPausedByUser {
							s += " paused-by-user"
						}
					}
					parts = append(parts, s)
				}
				return done, strings.Join(parts, " ")
			})
		},
	}
}

// waitUntil polls the status until cond holds. On a terminal it redraws one
// progress line; otherwise it prints a line whenever the state changes.
func waitUntil(c *cli.Context, what string, cond func(api.Status, string) (bool, string)) error {
	if c.NArg() > 1 {
		return usageError("name at most one peer")
	}
	peer := c.Args().First()
	cl, err := client(c)
	if err != nil {
		return err
	}
	ctx := c.Context
	if d := c.Duration("timeout"); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	tty := isTerminal(os.Stdout)
	last := ""
	start := time.Now()
	for {
		st, err := cl.Status(ctx)
		if err != nil {
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("timed out after %v waiting for %s (%s): %w", c.Duration("timeout"), what, last, context.DeadlineExceeded)
			}
			return err
		}
		if peer != "" && !hasPeer(st, peer) {
			return usageError("no peer %q on node %s", peer, st.Node)
		}
		done, line := cond(st, peer)
		report(os.Stdout, tty, line, &last)
		if done {
			if tty {
				fmt.Println()
			}
			if !tty || time.Since(start) > time.Second {
				fmt.Printf("%s after %v\n", what, time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Println()
			}
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("timed out after %v waiting for %s (%s): %w", c.Duration("timeout"), what, last, context.DeadlineExceeded)
			}
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func report(w io.Writer, tty bool, line string, last *string) {
	if tty {
		fmt.Fprintf(w, "\r\033[K%s", line)
	} else if line != *last {
		fmt.Fprintln(w, line)
	}
	*last = line
}

func hasPeer(st api.Status, name string) bool {
	for _, p := range st.Peers {
		if p.Name == name {
			return true
		}
	}
	return false
}

// bar draws a progress bar for pct percent.
func bar(pct float64) string {
	const width = 20
	n := int(pct / 100 * width)
	n = min(max(n, 0), width)
	return fmt.Sprintf("[%s%s] %5.1f%%", strings.Repeat("#", n), strings.Repeat(".", width-n), pct)
}
