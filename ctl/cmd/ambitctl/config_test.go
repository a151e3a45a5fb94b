package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/ctl/local"
)

func TestParseLocal(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	var out bytes.Buffer
	c, err := parseLocal("up", []string{"-f", "t.yaml", "--capture", "iptables"}, env(nil), &out, FlagFile, FlagCapture)
	if err != nil || c.StateDir != local.DefaultStateDir || c.File != "t.yaml" || c.Capture != "iptables" {
		t.Fatalf("%+v %v", c, err)
	}
	c, err = parseLocal("down", nil, env(map[string]string{EnvLocalDir: "/tmp/s"}), &out)
	if err != nil || c.StateDir != "/tmp/s" {
		t.Fatalf("env: %+v %v", c, err)
	}
	c, _ = parseLocal("down", []string{"--state-dir", "/x"}, env(map[string]string{EnvLocalDir: "/tmp/s"}), &out)
	if c.StateDir != "/x" {
		t.Errorf("flag does not win over env: %s", c.StateDir)
	}
	_, err = parseLocal("up", []string{"--capture", "ebpf"}, env(nil), &out, FlagFile, FlagCapture)
	if err == nil || !strings.Contains(err.Error(), "-f FILE is required") || !strings.Contains(err.Error(), `--capture "ebpf"`) {
		t.Errorf("err = %v", err)
	}
	if _, err := parseLocal("status", []string{"-o", "yaml"}, env(nil), &out, FlagOutput); err == nil {
		t.Error("-o yaml accepted")
	}
	if _, err := parseLocal("down", []string{"--state-dir", "/"}, env(nil), &out); err == nil {
		t.Error("state dir / accepted")
	}
	c, _ = parseLocal("exec", []string{"demo/a", "--", "sh", "-c", "x"}, env(nil), &out)
	if strings.Join(c.Args, " ") != "demo/a -- sh -c x" {
		t.Errorf("exec args %q", c.Args)
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"local", "bogus"}, func(string) string { return "" }, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Errorf("code %d, stderr %s", code, errb.String())
	}
	if code := run(context.Background(), nil, func(string) string { return "" }, nil, &out, &errb); code != 2 {
		t.Errorf("no args: code %d", code)
	}
}

func TestStopStartUsage(t *testing.T) {
	getenv := func(string) string { return "" }
	for _, args := range [][]string{{"local", "stop"}, {"local", "start", "a", "b"}, {"local", "start", "a", "--timeout", "5s"}} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, getenv, nil, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "PROCESS") {
			t.Errorf("%v: code %d, stderr %q", args, code, errOut.String())
		}
	}
	var out bytes.Buffer
	run(context.Background(), []string{"local", "--help"}, getenv, nil, &out, &out)
	for _, want := range []string{"stop PROCESS", "start [--timeout 60s] PROCESS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}
