package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // the command line is wrong
)

// exitErr carries an exit code other than exitError; a nil err prints
// nothing.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}

func (e *exitErr) Unwrap() error { return e.err }

// usageError marks a wrong command line (exit code 2).
func usageError(format string, a ...any) error {
	return &exitErr{code: exitUsage, err: fmt.Errorf(format, a...)}
}

// app is what every command reads: the process's streams and environment.
type app struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// run is ambitctl's whole command line; it returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(a)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitErr
	code := exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.err == nil {
			return code
		}
	} else if isUsage(err) {
		code = exitUsage
	}
	path := "ambitctl"
	if cmd != nil {
		path = cmd.CommandPath()
	}
	fmt.Fprintf(stderr, "%s: %v\n", path, err)
	if code == exitUsage && cmd != nil {
		fmt.Fprintf(stderr, "See '%s --help'.\n", path)
	}
	return code
}

// isUsage reports whether err is cobra's or pflag's complaint about the
// command line.
func isUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires at least", "requires exactly"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

var completionExamples = map[string]string{
	"bash":       "  source <(ambitctl completion bash)",
	"zsh":        "  ambitctl completion zsh > \"${fpath[1]}/_ambitctl\"",
	"fish":       "  ambitctl completion fish | source",
	"powershell": "  ambitctl completion powershell | Out-String | Invoke-Expression",
}

// newRoot builds the command tree.
func newRoot(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "ambitctl",
		Short: "Ambit's CLI: install Ambit, enroll namespaces, inspect ztunnels, or run a mesh on this machine",
		Long: `ambitctl installs and inspects Ambit, an ambient-mode service mesh that speaks
Istio's APIs. Cluster commands take kubectl's --kubeconfig and --context flags;
'ambitctl local' runs a whole mesh on this Linux machine, and the inspection
commands take --local to read that mesh instead of a cluster.`,
		Example: `  ambitctl precheck
  ambitctl install --wait
  ambitctl enroll demo
  ambitctl ztunnel-config workloads --local
  ambitctl local up -f deploy/examples/local/demo.yaml`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(a.stderr)
			_ = cmd.Help()
			return &exitErr{code: exitUsage}
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetIn(a.stdin)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitErr{code: exitUsage, err: err}
	})
	root.AddCommand(newLocalCmd(a))
	root.AddCommand(newClusterCmds(a)...)
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = "  source <(ambitctl completion bash)\n  ambitctl completion zsh > \"${fpath[1]}/_ambitctl\"\n  ambitctl completion fish > ~/.config/fish/completions/ambitctl.fish"
		for _, sh := range c.Commands() {
			sh.Example = completionExamples[sh.Name()]
		}
	}
	return root
}
