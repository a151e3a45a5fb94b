package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/zds"
	"github.com/ambit-mesh/ambit/ztunnel/identity"
	"github.com/ambit-mesh/ambit/ztunnel/limit"
)

// Flag names. Each flag may also be set by the environment variable
// EnvPrefix + upper-cased name with '-' as '_' (e.g. AMBIT_NODE); a flag on
// the command line wins over the environment.
const (
	EnvPrefix = "AMBIT_"

	FlagNode          = "node"
	FlagTrustDomain   = "trust-domain"
	FlagZDSSocket     = "zds-socket"
	FlagCAAddr        = "ca-addr"
	FlagCARoot        = "ca-root"
	FlagCAServerName  = "ca-server-name"
	FlagTokenFile     = "token-file"
	FlagLocalConfig   = "local-config"
	FlagXDSAddr       = "xds-addr"
	FlagCertTTL       = "cert-ttl"
	FlagDrainTimeout  = "drain-timeout"
	FlagMetricsAddr   = "metrics-addr"
	FlagReadinessAddr = "readiness-addr"
	FlagAdminAddr     = "admin-addr"
	FlagLogLevel      = "log-level"
	FlagPodName       = "pod-name"
	FlagPodNamespace  = "pod-namespace"
	FlagPodIP         = "pod-ip"
	FlagClusterID     = "cluster-id"
	// Connection limits, per pod for its outbound connections and per
	// source address for its inbound ones (ztunnel/limit).
	FlagLimitInProgress = "conn-limit-in-progress"
	FlagLimitOpen       = "conn-limit-open"
	FlagLimitRate       = "conn-limit-rate"
	FlagMemoryLimit     = "memory-limit"
)

// Defaults.
const (
	DefaultTrustDomain   = "cluster.local"
	DefaultCAServerName  = "istiod.istio-system.svc"
	DefaultMetricsAddr   = ":15020"
	DefaultReadinessAddr = ":15021"
	DefaultAdminAddr     = "127.0.0.1:15000"
	DefaultPodNamespace  = "istio-system"
	DefaultClusterID     = "Kubernetes"
	// DefaultDrainTimeout leaves 10 s of the chart's default 30 s grace
	// period for the rest of the shutdown.
	DefaultDrainTimeout = 20 * time.Second
)

// Config is ztunnel's validated configuration.
type Config struct {
	// Node is the Kubernetes node this ztunnel serves.
	Node        string
	TrustDomain string
	ZDSSocket   string
	// CAAddr is the CA's host:port (istiod 15012); CAServerName is verified
	// against its serving certificate.
	CAAddr       string
	CAServerName string
	// CARoot is a PEM file: the roots that verify the CA's serving
	// certificate, and part of the trust bundle for HBONE peers.
	CARoot string
	// TokenFile holds the bearer token presented to the CA (re-read per
	// request).
	TokenFile string
	// LocalConfig is the mesh state file (workloads, services, policies);
	// when set it is used instead of xDS (local file mode).
	LocalConfig string
	// XDSAddr is istiod's workload discovery host:port (default CAAddr),
	// verified with CAServerName and CARoot and authenticated with the
	// token of TokenFile, as the CA. Empty when LocalConfig is set.
	XDSAddr string
	CertTTL time.Duration
	// DrainTimeout bounds how long open connections may finish after
	// SIGTERM (the pod's terminationGracePeriodSeconds must be longer).
	DrainTimeout  time.Duration
	MetricsAddr   string
	ReadinessAddr string
	AdminAddr     string
	LogLevel      slog.Level
	// PodName, PodNamespace and PodIP are ztunnel's own pod (downward API):
	// with ClusterID they make the xDS node ID and metadata Istio's istiod
	// requires ("ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local"). PodName
	// defaults to "ztunnel-<node>"; an empty PodIP is taken from the host's
	// interfaces at start (xdsNode).
	PodName, PodNamespace, PodIP string
	// Limits bound each pod's outbound connections and each source's
	// connections into a pod (limit.Defaults unless set; 0 turns a limit
	// off).
	Limits limit.Config
	// MemoryLimit is the Go runtime's soft memory limit in bytes (0: none);
	// GOMEMLIMIT in the environment wins.
	MemoryLimit int64
	// ClusterID is sent to the CA and xDS server as the ClusterID header
	// and the CLUSTER_ID node metadata (Istio's CA authorizes identities
	// requested on behalf of pods only with it).
	ClusterID string
}

// EnvName returns the environment variable for a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig parses args (without the program name) over the environment
// read by getenv, and validates the result. It returns flag.ErrHelp for
// -h/--help after printing usage to out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	fs.SetOutput(out)
	str := func(name, def, usage string) *string {
		if v := getenv(EnvName(name)); v != "" {
			def = v
		}
		return fs.String(name, def, usage+" (env "+EnvName(name)+")")
	}
	var (
		node          = str(FlagNode, "", "name of the node this ztunnel serves (required)")
		td            = str(FlagTrustDomain, DefaultTrustDomain, "SPIFFE trust domain of workload identities")
		zdsSocket     = str(FlagZDSSocket, zds.DefaultSocketPath, "unix socket of the node agent's ZDS server")
		caAddr        = str(FlagCAAddr, "", "host:port of the CA (istiod's 15012) (required)")
		caRoot        = str(FlagCARoot, "", "PEM file with the root certificate(s) that verify the CA and HBONE peers (required)")
		caServerName  = str(FlagCAServerName, DefaultCAServerName, "name verified in the CA's serving certificate")
		tokenFile     = str(FlagTokenFile, "", "file with the bearer token for the CA, re-read on every request (required)")
		localConfig   = str(FlagLocalConfig, "", "YAML file with the mesh state (workloads, services, policies), reloaded on change; when set, used instead of xDS")
		xdsAddr       = str(FlagXDSAddr, "", "host:port of istiod's workload discovery (xDS); default --"+FlagCAAddr)
		certTTL       = str(FlagCertTTL, identity.DefaultCertTTL.String(), "lifetime requested for workload certificates")
		drainTimeout  = str(FlagDrainTimeout, DefaultDrainTimeout.String(), "after SIGTERM: no new connections, and open ones may finish for this long (0s: closed at once); keep it below the pod's terminationGracePeriodSeconds")
		metricsAddr   = str(FlagMetricsAddr, DefaultMetricsAddr, "listen address of /stats/prometheus")
		readinessAddr = str(FlagReadinessAddr, DefaultReadinessAddr, "listen address of /healthz/ready")
		adminAddr     = str(FlagAdminAddr, DefaultAdminAddr, "listen address of /config_dump and /debug/pprof/ (loopback only)")
		logLevel      = str(FlagLogLevel, "info", "log level: debug, info, warn, error")
		podName       = str(FlagPodName, "", "ztunnel's pod name, for the xDS node ID (default ztunnel-<node>)")
		podNamespace  = str(FlagPodNamespace, DefaultPodNamespace, "ztunnel's pod namespace, for the xDS node ID")
		podIP         = str(FlagPodIP, "", "ztunnel's pod IP, for the xDS node ID (default: the host's first global unicast address)")
		clusterID     = str(FlagClusterID, DefaultClusterID, "cluster ID sent to the CA and xDS server (Istio's CLUSTER_ID)")
		limInProgress = str(FlagLimitInProgress, strconv.Itoa(limit.Defaults.MaxInProgress), "connections in progress (accepted, not yet connected) per pod outbound and per source address inbound; 0 is unlimited")
		limOpen       = str(FlagLimitOpen, strconv.Itoa(limit.Defaults.MaxOpen), "open connections per pod outbound and per source address inbound; 0 is unlimited")
		limRate       = str(FlagLimitRate, strconv.FormatFloat(limit.Defaults.Rate, 'g', -1, 64), "new connections per second per pod outbound and per source address inbound (bursts of twice that); 0 is unlimited")
		memoryLimit   = str(FlagMemoryLimit, "auto", "Go soft memory limit: bytes with an optional Ki/Mi/Gi suffix, 0 for none, or auto (90% of the cgroup's memory limit, else none); GOMEMLIMIT wins")
	)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q; ztunnel takes only flags", fs.Arg(0))
	}
	cfg := Config{
		Node: *node, TrustDomain: *td, ZDSSocket: *zdsSocket, CAAddr: *caAddr, CARoot: *caRoot,
		CAServerName: *caServerName, TokenFile: *tokenFile, LocalConfig: *localConfig,
		MetricsAddr: *metricsAddr, ReadinessAddr: *readinessAddr, AdminAddr: *adminAddr,
		PodName: *podName, PodNamespace: *podNamespace, PodIP: *podIP, ClusterID: *clusterID,
	}
	if cfg.PodName == "" && cfg.Node != "" {
		cfg.PodName = "ztunnel-" + cfg.Node
	}
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s (%s): %s", name, EnvName(name), fmt.Sprintf(format, args...)))
	}
	required := func(name, v, why string) {
		if strings.TrimSpace(v) == "" {
			bad(name, "required: %s", why)
		}
	}
	required(FlagNode, cfg.Node, "set it to the node's name (e.g. from the downward API spec.nodeName)")
	if err := spiffe.ValidateTrustDomain(cfg.TrustDomain); err != nil {
		bad(FlagTrustDomain, "%v", err)
	}
	required(FlagZDSSocket, cfg.ZDSSocket, "the node agent's socket, default "+zds.DefaultSocketPath)
	required(FlagCAAddr, cfg.CAAddr, "the CA's host:port, e.g. istiod.istio-system.svc:15012")
	if cfg.CAAddr != "" {
		if _, _, err := net.SplitHostPort(cfg.CAAddr); err != nil {
			bad(FlagCAAddr, "%q is not host:port (e.g. 172.30.0.1:15012)", cfg.CAAddr)
		}
	}
	required(FlagCARoot, cfg.CARoot, "the PEM root certificate that signed the CA's serving certificate and workload certificates")
	required(FlagCAServerName, cfg.CAServerName, "the DNS name in the CA's serving certificate, default "+DefaultCAServerName)
	required(FlagTokenFile, cfg.TokenFile, "the file with ztunnel's bearer token for the CA")
	switch {
	case cfg.LocalConfig != "" && *xdsAddr != "":
		bad(FlagXDSAddr, "set together with --%s; the mesh state comes from one of them", FlagLocalConfig)
	case cfg.LocalConfig == "":
		cfg.XDSAddr = *xdsAddr
		if cfg.XDSAddr == "" {
			cfg.XDSAddr = cfg.CAAddr
		}
		if _, _, err := net.SplitHostPort(cfg.XDSAddr); cfg.XDSAddr != "" && err != nil {
			bad(FlagXDSAddr, "%q is not host:port (e.g. istiod.istio-system.svc:15012)", cfg.XDSAddr)
		}
	}
	if d, err := time.ParseDuration(*drainTimeout); err != nil || d < 0 {
		bad(FlagDrainTimeout, "%q is not a duration of 0s or more (e.g. 20s)", *drainTimeout)
	} else {
		cfg.DrainTimeout = d
	}
	if d, err := time.ParseDuration(*certTTL); err != nil || d <= 0 {
		bad(FlagCertTTL, "%q is not a positive duration (e.g. 24h, 90m)", *certTTL)
	} else {
		cfg.CertTTL = d
	}
	for _, a := range []struct{ name, v string }{{FlagMetricsAddr, cfg.MetricsAddr}, {FlagReadinessAddr, cfg.ReadinessAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			bad(a.name, "%q is not host:port (e.g. :15020)", a.v)
		}
	}
	if host, _, err := net.SplitHostPort(cfg.AdminAddr); err != nil {
		bad(FlagAdminAddr, "%q is not host:port (e.g. %s)", cfg.AdminAddr, DefaultAdminAddr)
	} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		bad(FlagAdminAddr, "%q is not a loopback address; the admin endpoint shows the whole state, bind it to 127.0.0.1 or ::1", cfg.AdminAddr)
	}
	if cfg.PodIP != "" && net.ParseIP(cfg.PodIP) == nil {
		bad(FlagPodIP, "%q is not an IP address", cfg.PodIP)
	}
	required(FlagPodNamespace, cfg.PodNamespace, "ztunnel's namespace, default "+DefaultPodNamespace)
	for _, v := range []struct{ name, v string }{{FlagPodName, cfg.PodName}, {FlagPodNamespace, cfg.PodNamespace}} {
		if strings.Contains(v.v, "~") {
			bad(v.name, "%q contains '~', the xDS node ID's separator", v.v)
		}
	}
	cfg.Limits = limit.Config{}
	for _, l := range []struct {
		name, v string
		dst     *int
	}{{FlagLimitInProgress, *limInProgress, &cfg.Limits.MaxInProgress}, {FlagLimitOpen, *limOpen, &cfg.Limits.MaxOpen}} {
		n, err := strconv.Atoi(l.v)
		if err != nil || n < 0 {
			bad(l.name, "%q is not a count of connections (0 or more)", l.v)
			continue
		}
		*l.dst = n
	}
	if r, err := strconv.ParseFloat(*limRate, 64); err != nil || r < 0 || math.IsInf(r, 0) || math.IsNaN(r) {
		bad(FlagLimitRate, "%q is not a rate of new connections per second (0 or more)", *limRate)
	} else {
		cfg.Limits.Rate, cfg.Limits.Burst = r, int(math.Ceil(2*r))
	}
	if ml, err := parseMemoryLimit(*memoryLimit, cgroupLimit); err != nil {
		bad(FlagMemoryLimit, "%v", err)
	} else {
		cfg.MemoryLimit = ml
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		bad(FlagLogLevel, "%q is not one of debug, info, warn, error", *logLevel)
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	return cfg, nil
}
