package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/ambit-mesh/ambit/ctl/local"
)

const usage = `usage: ambitctl local COMMAND [flags]

Local mode runs a whole ambient mesh on this machine (Linux, root): each node
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

every command takes --state-dir DIR (env AMBIT_LOCAL_DIR, default /var/run/ambit/local)
`

// run is ambitctl's whole command line; it returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) < 2 || args[0] != "local" {
		fmt.Fprint(stderr, usage)
		return 2
	}
	sub, rest := args[1], args[2:]
	fail := func(err error) int {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "ambitctl local %s: %v\n", sub, err)
		return 1
	}
	engine := func(c localConfig) *local.Engine {
		e := &local.Engine{Paths: local.Paths{Dir: c.StateDir}, Out: stdout, BinDirs: binDirs(), Capture: c.Capture}
		if d, err := time.ParseDuration(c.Timeout); err == nil {
			e.ReadyTimeout = d
		}
		return e
	}
	switch sub {
	case "up":
		c, err := parseLocal(sub, rest, getenv, stderr, FlagFile, FlagCapture, FlagTimeout)
		if err != nil {
			return fail(err)
		}
		if err := engine(c).Up(ctx, c.File); err != nil {
			return fail(err)
		}
	case "status":
		c, err := parseLocal(sub, rest, getenv, stderr, FlagOutput)
		if err != nil {
			return fail(err)
		}
		st, err := engine(c).Status(ctx)
		if err != nil {
			return fail(err)
		}
		if c.Output == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(st); err != nil {
				return fail(err)
			}
		} else if err := st.WriteText(stdout); err != nil {
			return fail(err)
		}
		if err := st.Healthy(); err != nil {
			fmt.Fprintf(stderr, "ambitctl local status: not healthy:\n%v\n", err)
			return 3
		}
	case "exec":
		c, err := parseLocal(sub, rest, getenv, stderr)
		if err != nil {
			return fail(err)
		}
		if len(c.Args) < 1 {
			return fail(errors.New("usage: ambitctl local exec NAMESPACE/POD -- CMD [ARGS...]"))
		}
		argv := c.Args[1:]
		if len(argv) > 0 && argv[0] == "--" {
			argv = argv[1:]
		}
		code, err := engine(c).Exec(ctx, c.Args[0], argv, stdin, stdout, stderr)
		if err != nil {
			return fail(err)
		}
		return code
	case "apply", "delete":
		c, err := parseLocal(sub, rest, getenv, stderr, FlagFile, FlagTimeout)
		if err != nil {
			return fail(err)
		}
		e := engine(c)
		if sub == "apply" {
			err = e.Apply(ctx, c.File)
		} else {
			err = e.Delete(ctx, c.File)
		}
		if err != nil {
			return fail(err)
		}
	case "stop", "start":
		want := []string{}
		if sub == "start" {
			want = append(want, FlagTimeout)
		}
		c, err := parseLocal(sub, rest, getenv, stderr, want...)
		if err != nil {
			return fail(err)
		}
		if len(c.Args) != 1 {
			return fail(fmt.Errorf("usage: ambitctl local %s PROCESS (names in `ambitctl local status`)", sub))
		}
		e := engine(c)
		if sub == "stop" {
			err = e.Stop(ctx, c.Args[0])
		} else {
			err = e.Start(ctx, c.Args[0])
		}
		if err != nil {
			return fail(err)
		}
	case "down":
		c, err := parseLocal(sub, rest, getenv, stderr)
		if err != nil {
			return fail(err)
		}
		if err := engine(c).Down(ctx); err != nil {
			return fail(err)
		}
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "ambitctl local: unknown command %q\n%s", sub, usage)
		return 2
	}
	return 0
}
