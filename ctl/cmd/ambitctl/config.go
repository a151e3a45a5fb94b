package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ambit-mesh/ambit/ctl/local"
)

// Flag and environment names of `ambitctl local`.
const (
	FlagStateDir = "state-dir"
	FlagFile     = "f"
	FlagCapture  = "capture"
	FlagOutput   = "o"
	FlagTimeout  = "timeout"

	// EnvLocalDir sets the state dir when --state-dir is not given.
	EnvLocalDir = "AMBIT_LOCAL_DIR"
)

// Capture backends the cni-agent accepts.
var captureModes = []string{"auto", "nftables", "iptables"}

// localConfig is the parsed command line of one `ambitctl local` command.
type localConfig struct {
	StateDir string
	File     string
	Capture  string
	Output   string
	Timeout  string
	Args     []string
}

// addLocalFlags defines on fs the flags of a local subcommand: --state-dir
// and those listed in want, bound to c. Flags stop at the first argument
// (as in `exec NS/POD -- CMD`), so everything after it is an argument.
func addLocalFlags(fs *pflag.FlagSet, c *localConfig, getenv func(string) string, want ...string) {
	fs.SetInterspersed(false)
	def := local.DefaultStateDir
	if v := getenv(EnvLocalDir); v != "" {
		def = v
	}
	fs.StringVar(&c.StateDir, FlagStateDir, def, "local mode's state dir (env "+EnvLocalDir+")")
	for _, w := range want {
		switch w {
		case FlagFile:
			fs.StringVarP(&c.File, "file", FlagFile, "", "topology file (YAML)")
		case FlagCapture:
			fs.StringVar(&c.Capture, FlagCapture, local.DefaultCapture, "capture backend of the cni-agents: "+strings.Join(captureModes, ", "))
		case FlagOutput:
			fs.StringVarP(&c.Output, "output", FlagOutput, "text", "output: text or json")
		case FlagTimeout:
			fs.StringVar(&c.Timeout, FlagTimeout, "60s", "how long to wait for each component to be ready")
		}
	}
}

// checkLocal completes c after parsing (absolute state dir) and checks
// the flags listed in want.
func checkLocal(c *localConfig, want ...string) error {
	var errs []error
	if !filepath.IsAbs(c.StateDir) {
		abs, err := filepath.Abs(c.StateDir)
		if err != nil {
			return err
		}
		c.StateDir = abs
	}
	if c.StateDir == "/" {
		errs = append(errs, fmt.Errorf("--%s: / cannot be the state dir", FlagStateDir))
	}
	for _, w := range want {
		switch w {
		case FlagFile:
			if c.File == "" {
				errs = append(errs, fmt.Errorf("-%s FILE is required (e.g. deploy/examples/local/demo.yaml)", FlagFile))
			}
		case FlagCapture:
			ok := false
			for _, m := range captureModes {
				ok = ok || c.Capture == m
			}
			if !ok {
				errs = append(errs, fmt.Errorf("--%s %q: use one of %s", FlagCapture, c.Capture, strings.Join(captureModes, ", ")))
			}
		case FlagOutput:
			if c.Output != "text" && c.Output != "json" {
				errs = append(errs, fmt.Errorf("-%s %q: use text or json", FlagOutput, c.Output))
			}
		}
	}
	return errors.Join(errs...)
}

// parseLocal parses the flags of subcommand sub outside cobra (the same
// flags and checks as the command's); want lists the flags it takes
// besides --state-dir.
func parseLocal(sub string, args []string, getenv func(string) string, out io.Writer, want ...string) (localConfig, error) {
	fs := pflag.NewFlagSet("ambitctl local "+sub, pflag.ContinueOnError)
	fs.SetOutput(out)
	var c localConfig
	addLocalFlags(fs, &c, getenv, want...)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.Args = fs.Args()
	return c, checkLocal(&c, want...)
}

// binDirs is where ambitctl looks for the binaries it runs before PATH:
// the directory of its own executable.
func binDirs() []string {
	exe, err := os.Executable()
	if err != nil {
		return nil
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return []string{filepath.Dir(exe)}
}
