package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/pkg/version"
)

func runArgs(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, func(string) string { return "" }, nil, &out, &errb)
	return code, out.String(), errb.String()
}

func TestEveryCommandHasHelpAndExample(t *testing.T) {
	root := newRoot(&app{getenv: func(string) string { return "" }})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		if c.Example == "" {
			t.Errorf("%s has no example", c.CommandPath())
		}
		if c.Short == "" {
			t.Errorf("%s has no short help", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	for _, want := range []string{"enroll", "unenroll", "precheck", "version", "ztunnel-config", "proxy-status", "local", "completion"} {
		if c, _, err := root.Find([]string{want}); err != nil || c.Name() != want {
			t.Errorf("no %s command", want)
		}
	}
}

func TestClusterFlags(t *testing.T) {
	for _, args := range [][]string{{"enroll", "--help"}, {"precheck", "--help"}, {"ztunnel-config", "workloads", "--help"}, {"proxy-status", "--help"}, {"version", "--help"}} {
		code, out, _ := runArgs(args...)
		if code != 0 {
			t.Errorf("%v: code %d", args, code)
		}
		for _, want := range []string{"--kubeconfig", "--context", "Examples:"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v lacks %q:\n%s", args, want, out)
			}
		}
	}
	if _, out, _ := runArgs("ztunnel-config", "workloads", "--help"); !strings.Contains(out, "--local") || !strings.Contains(out, "--node") {
		t.Errorf("ztunnel-config lacks --local/--node:\n%s", out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"enroll"}, "requires at least 1 arg"},
		{[]string{"ztunnel-config", "workloads", "-o", "wide"}, "short, json, yaml"},
		{[]string{"ztunnel-config", "pods"}, `unknown command "pods"`},
		{[]string{"proxy-status", "-o", "wide"}, "short, json, yaml"},
		{[]string{"precheck", "--capture", "bpf"}, "nftables, iptables, ebpf"},
		{[]string{"precheck", "-o", "yaml"}, "text or json"},
		{[]string{"version", "-o", "wide"}, "json or yaml"},
		{[]string{"version", "--bogus"}, "unknown flag"},
	} {
		code, _, errOut := runArgs(tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: code %d, stderr %q; want code %d and %q", tc.args, code, errOut, exitUsage, tc.want)
		}
	}
}

func TestVersionClient(t *testing.T) {
	code, out, _ := runArgs("version", "--client")
	if code != 0 || out != "client version: "+version.Version+"\n" {
		t.Errorf("code %d, out %q", code, out)
	}
	code, out, _ = runArgs("version", "--client", "-o", "json")
	if code != 0 || !strings.Contains(out, `"client": "`+version.Version+`"`) {
		t.Errorf("json: code %d, out %q", code, out)
	}
}

func TestKubeconfigErrors(t *testing.T) {
	code, _, errOut := runArgs("enroll", "demo", "--kubeconfig", "/nonexistent/kubeconfig")
	if code != exitError || !strings.Contains(errOut, "--kubeconfig") {
		t.Errorf("code %d, stderr %q", code, errOut)
	}
}

func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		code, out, errOut := runArgs("completion", sh)
		if code != 0 || !strings.Contains(out, "ambitctl") {
			t.Errorf("completion %s: code %d, %d bytes, stderr %q", sh, code, len(out), errOut)
		}
	}
}
