package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/cni/install"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

// Flag names. ambitctl local passes these; keep them stable.
const (
	FlagNode            = "node"
	FlagAgentSocket     = "agent-socket"
	FlagZDSSocket       = "zds-socket"
	FlagPodSource       = "pod-source"
	FlagClusterState    = "cluster-state"
	FlagKubeconfig      = "kubeconfig"
	FlagCNIBinDir       = "cni-bin-dir"
	FlagCNIConfDir      = "cni-conf-dir"
	FlagPluginBinary    = "plugin-binary"
	FlagCapture         = "capture"
	FlagHealthAddr      = "health-addr"
	FlagLogLevel        = "log-level"
	FlagUninstallOnExit = "uninstall-on-exit"
	FlagPodWait         = "pod-wait"
	FlagZtunnelWait     = "ztunnel-wait"
	// FlagTrustNetnsAnnotation lets a pod's NetnsAnnotation decide a netns
	// no pod's process runs in. For test nodes only (e2e/kube/testnode):
	// anyone allowed to patch a pod can write the annotation.
	FlagTrustNetnsAnnotation = "trust-netns-annotation"
	// FlagDaemonSet names the agent's own DaemonSet (namespace/name): at
	// exit the agent uninstalls itself from the node when it is gone.
	FlagDaemonSet = "daemonset"
	// FlagHostProc is the host's /proc as the agent sees it: where it
	// finds pods' processes (their cgroups and network namespaces).
	FlagHostProc = "host-proc"
	// FlagExcludeNamespaces lists namespaces whose pods are never
	// captured, whatever their labels say.
	FlagExcludeNamespaces = "exclude-namespaces"
)

// Environment variables, read as defaults that flags override.
const (
	EnvNode              = "AMBIT_NODE_NAME"
	EnvAgentSocket       = "AMBIT_AGENT_SOCKET"
	EnvZDSSocket         = "AMBIT_ZDS_SOCKET"
	EnvPodSource         = "AMBIT_POD_SOURCE"
	EnvClusterState      = "AMBIT_CLUSTER_STATE"
	EnvKubeconfig        = "AMBIT_KUBECONFIG"
	EnvCNIBinDir         = install.EnvBinDir
	EnvCNIConfDir        = install.EnvConfDir
	EnvPluginBinary      = install.EnvPluginBinary
	EnvCapture           = "AMBIT_CAPTURE"
	EnvHealthAddr        = "AMBIT_HEALTH_ADDR"
	EnvLogLevel          = "AMBIT_LOG_LEVEL"
	EnvUninstallOnExit   = "AMBIT_UNINSTALL_ON_EXIT"
	EnvPodWait           = "AMBIT_POD_WAIT"
	EnvZtunnelWait       = "AMBIT_ZTUNNEL_WAIT"
	EnvDaemonSet         = "AMBIT_DAEMONSET"
	EnvHostProc          = "AMBIT_HOST_PROC"
	EnvExcludeNamespaces = "AMBIT_EXCLUDE_NAMESPACES"
)

// Pod sources.
const (
	PodSourceLocal      = "local"
	PodSourceKubernetes = "kubernetes"
)

// Defaults not taken from other packages.
const (
	DefaultHealthAddr  = "127.0.0.1:8000"
	DefaultPodWait     = 5 * time.Second
	DefaultZtunnelWait = 5 * time.Second
	// ReadyPath is the readiness endpoint on the health address.
	ReadyPath = "/healthz/ready"
)

// Config is the cni-agent's validated configuration. Paths are absolute.
type Config struct {
	Node         string
	AgentSocket  string
	ZDSSocket    string
	PodSource    string
	ClusterState string
	// Kubeconfig is the kubeconfig file for --pod-source kubernetes; empty
	// means the in-cluster configuration (the pod's service account).
	Kubeconfig      string
	CNIBinDir       string
	CNIConfDir      string
	PluginBinary    string
	Capture         string
	HealthAddr      string
	LogLevel        slog.Level
	UninstallOnExit bool
	PodWait         time.Duration
	ZtunnelWait     time.Duration
	// TrustNetnsAnnotation: see FlagTrustNetnsAnnotation.
	TrustNetnsAnnotation bool
	// DaemonSet: see FlagDaemonSet; zero when not set.
	DaemonSet types.NamespacedName
	// HostProc: see FlagHostProc.
	HostProc string
	// ExcludeNamespaces: see FlagExcludeNamespaces.
	ExcludeNamespaces []string
}

// parseConfig parses args over the environment (getenv) and validates the
// result. exe is the path of the running executable: the default plugin
// binary is ambit-cni next to it. Errors name the flag and the fix;
// flag.ErrHelp is returned for -h.
func parseConfig(args []string, getenv func(string) string, exe string, usage io.Writer) (Config, error) {
	env := func(k, def string) string {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("cni-agent", flag.ContinueOnError)
	fs.SetOutput(usage)
	var c Config
	var logLevel, podWait, ztWait, daemonSet string
	uninstallDefault, uninstallErr := strconv.ParseBool(env(EnvUninstallOnExit, "false"))
	fs.StringVar(&c.Node, FlagNode, env(EnvNode, ""), "this node's name (required; env "+EnvNode+")")
	fs.StringVar(&c.AgentSocket, FlagAgentSocket, env(EnvAgentSocket, agentapi.DefaultSocketPath), "unix socket the ambit-cni plugin dials (env "+EnvAgentSocket+")")
	fs.StringVar(&c.ZDSSocket, FlagZDSSocket, env(EnvZDSSocket, zds.DefaultSocketPath), "ZDS unix socket ztunnel connects to (env "+EnvZDSSocket+")")
	fs.StringVar(&c.PodSource, FlagPodSource, env(EnvPodSource, PodSourceLocal), "where pods come from: "+PodSourceLocal+" or "+PodSourceKubernetes+" (env "+EnvPodSource+")")
	fs.StringVar(&c.ClusterState, FlagClusterState, env(EnvClusterState, ""), "local mode's cluster state file, for --pod-source local (env "+EnvClusterState+")")
	fs.StringVar(&c.Kubeconfig, FlagKubeconfig, env(EnvKubeconfig, ""), "kubeconfig file for --pod-source "+PodSourceKubernetes+"; empty: in-cluster config (env "+EnvKubeconfig+")")
	fs.StringVar(&c.CNIBinDir, FlagCNIBinDir, env(EnvCNIBinDir, install.DefaultBinDir), "CNI plugin binary dir (env "+EnvCNIBinDir+")")
	fs.StringVar(&c.CNIConfDir, FlagCNIConfDir, env(EnvCNIConfDir, install.DefaultConfDir), "CNI network config dir (env "+EnvCNIConfDir+")")
	fs.StringVar(&c.PluginBinary, FlagPluginBinary, env(EnvPluginBinary, filepath.Join(filepath.Dir(exe), install.PluginType)), "ambit-cni binary to install (env "+EnvPluginBinary+"; default: next to cni-agent)")
	fs.StringVar(&c.Capture, FlagCapture, env(EnvCapture, capture.ModeAuto), "capture backend: nftables, iptables or auto (env "+EnvCapture+")")
	fs.StringVar(&c.HealthAddr, FlagHealthAddr, env(EnvHealthAddr, DefaultHealthAddr), "address serving "+ReadyPath+" (env "+EnvHealthAddr+")")
	fs.StringVar(&logLevel, FlagLogLevel, env(EnvLogLevel, "info"), "debug, info, warn or error (env "+EnvLogLevel+")")
	fs.BoolVar(&c.UninstallOnExit, FlagUninstallOnExit, uninstallDefault, "uninstall on exit: remove ambit-cni from the CNI config, release every captured pod, then remove the plugin binary (env "+EnvUninstallOnExit+")")
	fs.StringVar(&podWait, FlagPodWait, env(EnvPodWait, DefaultPodWait.String()), "how long an enroll waits for its pod to appear (env "+EnvPodWait+")")
	fs.StringVar(&ztWait, FlagZtunnelWait, env(EnvZtunnelWait, DefaultZtunnelWait.String()), "how long an enroll waits for ztunnel to connect (env "+EnvZtunnelWait+")")
	fs.BoolVar(&c.TrustNetnsAnnotation, FlagTrustNetnsAnnotation, false, "test nodes only, with --"+FlagPodSource+" "+PodSourceKubernetes+": accept a pod's netns that no pod's process runs in when the pod's annotation "+agent.NetnsAnnotation+" names it (anyone who can patch the pod can write it)")
	fs.StringVar(&daemonSet, FlagDaemonSet, env(EnvDaemonSet, ""), "with --"+FlagPodSource+" "+PodSourceKubernetes+": the agent's DaemonSet as namespace/name; at exit the agent uninstalls itself from the node (as --"+FlagUninstallOnExit+") when the DaemonSet is gone, being deleted, unreadable or no longer selects the node; RBAC: daemonsets get (env "+EnvDaemonSet+")")
	fs.StringVar(&c.HostProc, FlagHostProc, env(EnvHostProc, "/proc"), "with --"+FlagPodSource+" "+PodSourceKubernetes+": the host's /proc (the agent's own with hostPID, or the host's mounted e.g. at /host/proc), where it finds pods' processes by cgroup (env "+EnvHostProc+")")
	exclude := fs.String(FlagExcludeNamespaces, env(EnvExcludeNamespaces, ""), "comma-separated namespaces whose pods are never captured, whatever their labels say, e.g. kube-system (env "+EnvExcludeNamespaces+")")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q: cni-agent takes only flags (see -h)", fs.Arg(0))
	}

	var errs []error
	bad := func(flag, env, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s (env %s): %s", flag, env, fmt.Sprintf(format, a...)))
	}
	for _, ns := range strings.Split(*exclude, ",") {
		ns = strings.TrimSpace(ns)
		if ns == "" {
			continue
		}
		if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
			bad(FlagExcludeNamespaces, EnvExcludeNamespaces, "%q is not a namespace name: %s", ns, strings.Join(msgs, "; "))
			continue
		}
		c.ExcludeNamespaces = append(c.ExcludeNamespaces, ns)
	}
	if c.Node == "" {
		bad(FlagNode, EnvNode, "required: set it to this node's name (Kubernetes: spec.nodeName via the downward API; local mode: the node's name in the topology)")
	}
	for _, p := range []struct {
		flag, env string
		v         *string
		optional  bool
	}{
		{FlagAgentSocket, EnvAgentSocket, &c.AgentSocket, false},
		{FlagZDSSocket, EnvZDSSocket, &c.ZDSSocket, false},
		{FlagCNIBinDir, EnvCNIBinDir, &c.CNIBinDir, false},
		{FlagCNIConfDir, EnvCNIConfDir, &c.CNIConfDir, false},
		{FlagPluginBinary, EnvPluginBinary, &c.PluginBinary, false},
		{FlagClusterState, EnvClusterState, &c.ClusterState, true},
		{FlagKubeconfig, EnvKubeconfig, &c.Kubeconfig, true},
		{FlagHostProc, EnvHostProc, &c.HostProc, false},
	} {
		if *p.v == "" {
			if !p.optional {
				bad(p.flag, p.env, "must not be empty")
			}
			continue
		}
		abs, err := filepath.Abs(*p.v)
		if err != nil {
			bad(p.flag, p.env, "%q: %v", *p.v, err)
			continue
		}
		*p.v = abs
	}
	switch c.PodSource {
	case PodSourceLocal:
		if c.ClusterState == "" {
			bad(FlagClusterState, EnvClusterState, "required with --%s %s: pass the cluster state file written by `ambitctl local`", FlagPodSource, PodSourceLocal)
		}
	case PodSourceKubernetes:
		if c.ClusterState != "" {
			bad(FlagClusterState, EnvClusterState, "only for --%s %s; --%s %s reads the API server (--%s)", FlagPodSource, PodSourceLocal, FlagPodSource, PodSourceKubernetes, FlagKubeconfig)
		}
	default:
		bad(FlagPodSource, EnvPodSource, "unknown pod source %q: use %q or %q", c.PodSource, PodSourceLocal, PodSourceKubernetes)
	}
	switch c.Capture {
	case capture.ModeNFTables, capture.ModeIPTables, capture.ModeAuto:
	default:
		bad(FlagCapture, EnvCapture, "unknown capture mode %q: use %s, %s or %s", c.Capture, capture.ModeNFTables, capture.ModeIPTables, capture.ModeAuto)
	}
	if _, port, err := net.SplitHostPort(c.HealthAddr); err != nil {
		bad(FlagHealthAddr, EnvHealthAddr, "%q is not host:port (e.g. %s): %v", c.HealthAddr, DefaultHealthAddr, err)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad(FlagHealthAddr, EnvHealthAddr, "%q: port %q is not a number from 0 to 65535", c.HealthAddr, port)
	}
	if err := c.LogLevel.UnmarshalText([]byte(strings.ToLower(logLevel))); err != nil {
		bad(FlagLogLevel, EnvLogLevel, "%q: use debug, info, warn or error", logLevel)
	}
	if uninstallErr != nil {
		bad(FlagUninstallOnExit, EnvUninstallOnExit, "environment value %q is not true or false", getenv(EnvUninstallOnExit))
	}
	for _, d := range []struct {
		flag, env, v string
		dst          *time.Duration
	}{{FlagPodWait, EnvPodWait, podWait, &c.PodWait}, {FlagZtunnelWait, EnvZtunnelWait, ztWait, &c.ZtunnelWait}} {
		v, err := time.ParseDuration(d.v)
		if err != nil || v <= 0 {
			bad(d.flag, d.env, "%q is not a positive duration such as 5s", d.v)
			continue
		}
		*d.dst = v
	}
	if c.PodSource == PodSourceLocal && c.Kubeconfig != "" {
		bad(FlagKubeconfig, EnvKubeconfig, "only for --%s %s", FlagPodSource, PodSourceKubernetes)
	}
	if daemonSet != "" {
		ns, name, ok := strings.Cut(daemonSet, "/")
		switch {
		case !ok || ns == "" || name == "" || strings.Contains(name, "/"):
			bad(FlagDaemonSet, EnvDaemonSet, "%q is not namespace/name (e.g. istio-system/ambit-cni-node)", daemonSet)
		case c.PodSource != PodSourceKubernetes:
			bad(FlagDaemonSet, EnvDaemonSet, "only for --%s %s", FlagPodSource, PodSourceKubernetes)
		default:
			c.DaemonSet = types.NamespacedName{Namespace: ns, Name: name}
		}
	}
	if c.PodSource == PodSourceLocal && c.TrustNetnsAnnotation {
		errs = append(errs, fmt.Errorf("--%s: only for --%s %s; local mode checks netns against its cluster state", FlagTrustNetnsAnnotation, FlagPodSource, PodSourceKubernetes))
	}
	if len(errs) == 0 {
		if fi, err := os.Stat(c.PluginBinary); err != nil || !fi.Mode().IsRegular() {
			reason := "not a regular file"
			if err != nil {
				reason = err.Error()
			}
			bad(FlagPluginBinary, EnvPluginBinary, "%s: build ambit-cni next to cni-agent (go build -o DIR ./cni/cmd/ambit-cni) or pass its path", reason)
		}
	}
	return c, errors.Join(errs...)
}
