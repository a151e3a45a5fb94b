package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/install"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

// fakeExe returns an executable path whose directory holds an ambit-cni file.
func fakeExe(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, install.PluginType), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "cni-agent")
}

func noEnv(string) string { return "" }

func TestParseConfigLocalMode(t *testing.T) {
	exe := fakeExe(t)
	c, err := parseConfig([]string{
		"--node", "node-a", "--agent-socket", "/s/nodes/node-a/cni-agent.sock", "--zds-socket", "/s/nodes/node-a/ztunnel.sock",
		"--pod-source", "local", "--cluster-state", "/s/cluster.json", "--cni-bin-dir", "/s/cni/bin",
		"--cni-conf-dir", "/s/nodes/node-a/net.d", "--capture", "auto", "--health-addr", "127.0.0.1:8000",
		"--log-level", "debug", "--uninstall-on-exit",
	}, noEnv, exe, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Node: "node-a", AgentSocket: "/s/nodes/node-a/cni-agent.sock", ZDSSocket: "/s/nodes/node-a/ztunnel.sock",
		PodSource: "local", ClusterState: "/s/cluster.json", CNIBinDir: "/s/cni/bin", CNIConfDir: "/s/nodes/node-a/net.d",
		PluginBinary: filepath.Join(filepath.Dir(exe), "ambit-cni"), Capture: "auto", HealthAddr: "127.0.0.1:8000",
		LogLevel: slog.LevelDebug, UninstallOnExit: true, PodWait: DefaultPodWait, ZtunnelWait: DefaultZtunnelWait,
		HostProc: "/proc",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestParseConfigKubernetes(t *testing.T) {
	exe := fakeExe(t)
	c, err := parseConfig([]string{"--node", "node-a", "--pod-source", "kubernetes", "--kubeconfig", "/k/node-a.kubeconfig"}, noEnv, exe, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.PodSource != PodSourceKubernetes || c.Kubeconfig != "/k/node-a.kubeconfig" || c.ClusterState != "" || c.TrustNetnsAnnotation {
		t.Errorf("got %+v", c)
	}
	c, err = parseConfig([]string{"--node", "node-a", "--pod-source", "kubernetes", "--trust-netns-annotation"}, noEnv, exe, io.Discard)
	if err != nil || !c.TrustNetnsAnnotation {
		t.Errorf("--trust-netns-annotation: %+v %v", c, err)
	}
	c, err = parseConfig([]string{"--node", "node-a", "--pod-source", "kubernetes"}, func(k string) string {
		return map[string]string{EnvDaemonSet: "istio-system/ambit-cni-node"}[k]
	}, exe, io.Discard)
	if err != nil || c.DaemonSet.Namespace != "istio-system" || c.DaemonSet.Name != "ambit-cni-node" {
		t.Errorf("%s: %+v %v", EnvDaemonSet, c.DaemonSet, err)
	}
	c, err = parseConfig([]string{"--node", "node-a", "--pod-source", "kubernetes", "--host-proc", "/host/proc"}, noEnv, exe, io.Discard)
	if err != nil || c.HostProc != "/host/proc" {
		t.Errorf("--host-proc: %q %v", c.HostProc, err)
	}
	c, err = parseConfig([]string{"--node", "node-a", "--pod-source", "kubernetes"}, func(k string) string {
		return map[string]string{EnvExcludeNamespaces: "kube-system, ambit-system,"}[k]
	}, exe, io.Discard)
	if err != nil || !reflect.DeepEqual(c.ExcludeNamespaces, []string{"kube-system", "ambit-system"}) {
		t.Errorf("%s: %q %v", EnvExcludeNamespaces, c.ExcludeNamespaces, err)
	}
	// No kubeconfig: in-cluster config.
	env := map[string]string{EnvNode: "n", EnvPodSource: "kubernetes"}
	c, err = parseConfig(nil, func(k string) string { return env[k] }, exe, io.Discard)
	if err != nil || c.Kubeconfig != "" || c.PodSource != PodSourceKubernetes {
		t.Errorf("in-cluster: %+v %v", c, err)
	}
}

func TestParseConfigDefaultsAndEnv(t *testing.T) {
	exe := fakeExe(t)
	env := map[string]string{EnvNode: "n1", EnvClusterState: "/c.json", EnvZtunnelWait: "2s", EnvUninstallOnExit: "true"}
	c, err := parseConfig(nil, func(k string) string { return env[k] }, exe, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Node != "n1" || c.AgentSocket != agentapi.DefaultSocketPath || c.ZDSSocket != zds.DefaultSocketPath ||
		c.CNIBinDir != install.DefaultBinDir || c.CNIConfDir != install.DefaultConfDir || c.HealthAddr != "127.0.0.1:8000" ||
		c.Capture != "auto" || c.PodSource != "local" || c.LogLevel != slog.LevelInfo || c.ZtunnelWait != 2*time.Second || !c.UninstallOnExit {
		t.Errorf("defaults/env: %+v", c)
	}
	// Flags override the environment.
	c, err = parseConfig([]string{"--node", "n2", "--uninstall-on-exit=false"}, func(k string) string { return env[k] }, exe, io.Discard)
	if err != nil || c.Node != "n2" || c.UninstallOnExit {
		t.Errorf("override: %+v %v", c, err)
	}
	// Relative paths become absolute.
	c, err = parseConfig([]string{"--node", "n", "--cluster-state", "rel/c.json"}, noEnv, exe, io.Discard)
	if err != nil || !filepath.IsAbs(c.ClusterState) {
		t.Errorf("relative path: %+v %v", c, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	exe := fakeExe(t)
	base := []string{"--node", "n", "--cluster-state", "/c.json"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string // substrings of the error
	}{
		{"no node", []string{"--cluster-state", "/c.json"}, nil, []string{"--node", "required"}},
		{"bad excluded namespace", append(base, "--exclude-namespaces", "kube-system,Kube_System"), nil, []string{"--exclude-namespaces", `"Kube_System" is not a namespace name`}},
		{"no cluster state", []string{"--node", "n"}, nil, []string{"--cluster-state", "required with --pod-source local"}},
		{"kubernetes with cluster state", append(base, "--pod-source", "kubernetes"), nil, []string{"--cluster-state", "only for --pod-source local"}},
		{"kubeconfig with local", append(base, "--kubeconfig", "/k"), nil, []string{"--kubeconfig", "only for --pod-source kubernetes"}},
		{"trust annotation with local", append(base, "--trust-netns-annotation"), nil, []string{"--trust-netns-annotation", "only for --pod-source kubernetes"}},
		{"unknown source", append(base, "--pod-source", "etcd"), nil, []string{"--pod-source", `unknown pod source "etcd"`}},
		{"capture", append(base, "--capture", "ebpf"), nil, []string{"--capture", `"ebpf"`, "nftables, iptables or auto"}},
		{"health addr", append(base, "--health-addr", "8000"), nil, []string{"--health-addr", "host:port"}},
		{"health port", append(base, "--health-addr", "127.0.0.1:http"), nil, []string{"--health-addr", "not a number"}},
		{"log level", append(base, "--log-level", "loud"), nil, []string{"--log-level", "debug, info, warn or error"}},
		{"ztunnel wait", append(base, "--ztunnel-wait", "-1s"), nil, []string{"--ztunnel-wait", "positive duration"}},
		{"pod wait", append(base, "--pod-wait", "soon"), nil, []string{"--pod-wait", "positive duration"}},
		{"empty socket", append(base, "--agent-socket", ""), nil, []string{"--agent-socket", "must not be empty"}},
		{"plugin binary missing", append(base, "--plugin-binary", "/nonexistent/ambit-cni"), nil, []string{"--plugin-binary", "go build"}},
		{"bad env bool", base, map[string]string{EnvUninstallOnExit: "maybe"}, []string{"--uninstall-on-exit", EnvUninstallOnExit, "maybe"}},
		{"daemonset with local", append(base, "--daemonset", "istio-system/ambit"), nil, []string{"--daemonset", "only for --pod-source kubernetes"}},
		{"daemonset form", []string{"--node", "n", "--pod-source", "kubernetes", "--daemonset", "ambit"}, nil, []string{"--daemonset", `"ambit" is not namespace/name`}},
		{"daemonset env form", []string{"--node", "n", "--pod-source", "kubernetes"}, map[string]string{EnvDaemonSet: "a/b/c"}, []string{EnvDaemonSet, `"a/b/c"`}},
		{"extra argument", append(base, "extra"), nil, []string{`unexpected argument "extra"`}},
		{"unknown flag", append(base, "--nodes", "x"), nil, []string{"nodes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, exe, io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := parseConfig([]string{"-h"}, noEnv, exe, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	// The default plugin binary is next to the executable.
	if _, err := parseConfig(base, noEnv, "/nonexistent/cni-agent", io.Discard); err == nil || !strings.Contains(err.Error(), "/nonexistent/ambit-cni") {
		t.Errorf("default plugin binary: %v", err)
	}
}
