package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/ctl/local"
)

const localLong = `Local mode runs a whole ambient mesh on this machine (Linux, root): each node
a network namespace with a cni-agent and a ztunnel, each pod a network
namespace wired by the real CNI chain, istiod as the CA.

commands:
  up -f FILE [--capture auto|nftables|iptables]   build the mesh of a topology file
  status [-o text|json]                           nodes, pods, services, process health
  exec NAMESPACE/POD -- CMD [ARGS...]             run a command in a pod's network namespace
  apply -f FILE                                   add or change namespaces, pods, services, policies
  delete -f FILE                                  remove them
  stop PROCESS                                    stop one process (a name from status: istiod,
                                                  cni-agent-NODE, ztunnel-NODE, pod-NS-POD):
                                                  SIGTERM, SIGKILL after 5s; pods are not touched
  start [--timeout 60s] PROCESS                   start a stopped or exited process again with
                                                  its recorded command and network namespace,
                                                  and wait until it is ready
  down                                            stop everything and remove the state

every command takes --state-dir DIR (env AMBIT_LOCAL_DIR, default /var/run/ambit/local)`

// localVerb describes one `ambitctl local` subcommand.
type localVerb struct {
	use, short, example string
	flags               []string // besides --state-dir
	run                 func(a *app, cmd *cobra.Command, c localConfig) error
}

func newLocalCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "local COMMAND",
		Short:   "Run a whole mesh on this machine (up, status, exec, apply, delete, stop, start, down)",
		Long:    localLong,
		Example: "  ambitctl local up -f deploy/examples/local/demo.yaml\n  ambitctl local status\n  ambitctl local down",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(a.stderr)
			_ = cmd.Help()
			return &exitErr{code: exitUsage}
		},
	}
	verbs := []localVerb{
		{"up -f FILE", "Build the mesh of a topology file",
			"  ambitctl local up -f deploy/examples/local/demo.yaml --capture nftables",
			[]string{FlagFile, FlagCapture, FlagTimeout}, localUp},
		{"status", "Show nodes, pods, services and process health (exit code 3 when unhealthy)",
			"  ambitctl local status -o json",
			[]string{FlagOutput}, localStatus},
		{"exec NAMESPACE/POD -- CMD [ARGS...]", "Run a command in a pod's network namespace",
			"  ambitctl local exec demo/client -- ambit-echo client -addr echo-b.demo:80",
			nil, localExec},
		{"apply -f FILE", "Add or change namespaces, pods, services, policies",
			"  ambitctl local apply -f more-pods.yaml",
			[]string{FlagFile, FlagTimeout}, localApplyDelete},
		{"delete -f FILE", "Remove namespaces, pods, services, policies",
			"  ambitctl local delete -f more-pods.yaml",
			[]string{FlagFile, FlagTimeout}, localApplyDelete},
		{"stop PROCESS", "Stop one process (istiod, cni-agent-NODE, ztunnel-NODE, pod-NS-POD); pods are not touched",
			"  ambitctl local stop ztunnel-node-a",
			nil, localStopStart},
		{"start [--timeout 60s] PROCESS", "Start a stopped or exited process again and wait until it is ready",
			"  ambitctl local start ztunnel-node-a",
			[]string{FlagTimeout}, localStopStart},
		{"down", "Stop everything and remove the state",
			"  ambitctl local down",
			nil, localDown},
	}
	for _, v := range verbs {
		cmd.AddCommand(v.command(a))
	}
	return cmd
}

func (v localVerb) command(a *app) *cobra.Command {
	var c localConfig
	cmd := &cobra.Command{
		Use:     v.use,
		Short:   v.short,
		Example: v.example,
		RunE: func(cmd *cobra.Command, args []string) error {
			c.Args = args
			if err := checkLocal(&c, v.flags...); err != nil {
				return err
			}
			return v.run(a, cmd, c)
		},
	}
	addLocalFlags(cmd.Flags(), &c, a.getenv, v.flags...)
	return cmd
}

// engine is the local-mode engine for c.
func (a *app) engine(c localConfig) *local.Engine {
	e := &local.Engine{Paths: local.Paths{Dir: c.StateDir}, Out: a.stdout, BinDirs: binDirs(), Capture: c.Capture}
	if d, err := time.ParseDuration(c.Timeout); err == nil {
		e.ReadyTimeout = d
	}
	return e
}

func localUp(a *app, cmd *cobra.Command, c localConfig) error {
	return a.engine(c).Up(cmd.Context(), c.File)
}

func localStatus(a *app, cmd *cobra.Command, c localConfig) error {
	st, err := a.engine(c).Status(cmd.Context())
	if err != nil {
		return err
	}
	if c.Output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return err
		}
	} else if err := st.WriteText(a.stdout); err != nil {
		return err
	}
	if err := st.Healthy(); err != nil {
		fmt.Fprintf(a.stderr, "ambitctl local status: not healthy:\n%v\n", err)
		return &exitErr{code: 3}
	}
	return nil
}

func localExec(a *app, cmd *cobra.Command, c localConfig) error {
	if len(c.Args) < 1 {
		return errors.New("usage: ambitctl local exec NAMESPACE/POD -- CMD [ARGS...]")
	}
	argv := c.Args[1:]
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	code, err := a.engine(c).Exec(cmd.Context(), c.Args[0], argv, a.stdin, a.stdout, a.stderr)
	if err != nil {
		return err
	}
	if code != 0 {
		return &exitErr{code: code}
	}
	return nil
}

func localApplyDelete(a *app, cmd *cobra.Command, c localConfig) error {
	e := a.engine(c)
	if cmd.Name() == "apply" {
		return e.Apply(cmd.Context(), c.File)
	}
	return e.Delete(cmd.Context(), c.File)
}

func localStopStart(a *app, cmd *cobra.Command, c localConfig) error {
	sub := cmd.Name()
	if len(c.Args) != 1 {
		return fmt.Errorf("usage: ambitctl local %s PROCESS (names in `ambitctl local status`)", sub)
	}
	e := a.engine(c)
	if sub == "stop" {
		return e.Stop(cmd.Context(), c.Args[0])
	}
	return e.Start(cmd.Context(), c.Args[0])
}

func localDown(a *app, cmd *cobra.Command, c localConfig) error {
	return a.engine(c).Down(cmd.Context())
}
