package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/repd/repd/config"
)

// checkedConfig is what check-config prints: the resource file as this
// node's daemon would parse it, for scripts (the OCF agent) that must not
// parse TOML themselves.
type checkedConfig struct {
	Resource     string `json:"resource"`
	Node         string `json:"node"`
	NodeID       int    `json:"node_id"`
	Witness      bool   `json:"witness"`
	Protocol     string `json:"protocol"`
	Size         int64  `json:"size"`
	Nodes        int    `json:"nodes"`
	Quorum       string `json:"quorum"`
	VotesNeeded  int    `json:"votes_needed"`
	OnNoQuorum   string `json:"on_no_quorum"`
	AutoPromote  bool   `json:"auto_promote"`
	AutoFailback bool   `json:"auto_failback"`
	Priority     int    `json:"priority"`
	// CPUMask is the node's cpu-mask as written ("0": the scheduler
	// decides) and CPUs the CPUs it names.
	CPUMask string `json:"cpu_mask"`
	CPUs    []int  `json:"cpus"`
}

func cmdCheckConfig() *cli.Command {
	return &cli.Command{
		Name:  "check-config",
		Usage: "validate the resource file and print this node's view of it (--json for scripts)",
		Description: "Needs --config FILE (and --node NAME, default the host name). Exits 2 with the reason\n" +
			"when the file or the node is wrong; the daemon need not run.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.PathFlag{Name: "config", Aliases: []string{"c"}, Usage: "resource file"},
			&cli.StringFlag{Name: "node", Aliases: []string{"n"}, Usage: "node name (default: the host name)"},
		},
		Action: func(c *cli.Context) error {
			conf, name := c.Path("config"), c.String("node")
			for _, a := range c.Lineage()[1:] { // global flags before the verb
				if conf == "" {
					conf = a.Path("config")
				}
				if name == "" {
					name = a.String("node")
				}
			}
			if conf == "" {
				return usageError("check-config needs --config FILE [--node NAME]")
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			f, err := config.Load(conf)
			if err != nil {
				return cli.Exit(err.Error(), exitUsage)
			}
			n, err := f.Node(name)
			if err != nil {
				return cli.Exit(err.Error()+"; pass --node", exitUsage)
			}
			r := f.Resource
			out := checkedConfig{Resource: r.Name, Node: n.Name, NodeID: *n.ID, Witness: n.Witness(), Protocol: r.Protocol.String(),
				Size: int64(r.Size), Nodes: len(f.Nodes), Quorum: r.Quorum.String(), VotesNeeded: r.Quorum.Votes(len(f.Nodes)),
				OnNoQuorum: r.OnNoQuorum.String(), AutoPromote: r.AutoPromote, AutoFailback: r.AutoFailback, Priority: n.Priority}
			mask := f.NodeCPUMask(n)
			out.CPUMask, out.CPUs = mask.String(), mask.CPUs()
			if out.CPUs == nil {
				out.CPUs = []int{}
			}
			if c.Bool("json") {
				return json.NewEncoder(c.App.Writer).Encode(out)
			}
			pin := ""
			if !mask.Empty() {
				pin = fmt.Sprintf(", cpu-mask %s (CPUs %s)", mask, strings.ReplaceAll(strings.Trim(fmt.Sprint(out.CPUs), "[]"), " ", ","))
			}
			fmt.Fprintf(c.App.Writer, "%s: node %s (id %d) of resource %s is valid: protocol %s, %d nodes, quorum %s (%d votes), on-no-quorum %s, auto-promote %v%s\n",
				conf, out.Node, out.NodeID, out.Resource, out.Protocol, out.Nodes, out.Quorum, out.VotesNeeded, out.OnNoQuorum, out.AutoPromote, pin)
			return nil
		},
	}
}
