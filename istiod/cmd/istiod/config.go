package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/ca/kubeauth"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Flag names. Each flag may also be set by the environment variable
// EnvPrefix + upper-cased name with '-' as '_' (e.g. AMBIT_TRUST_DOMAIN); a
// flag on the command line wins over the environment.
const (
	EnvPrefix = "AMBIT_"

	FlagTrustDomain = "trust-domain"
	FlagCADir       = "ca-dir"
	FlagCASecret    = "ca-secret"
	FlagNamespace   = "namespace"
	FlagStateDir    = "state-dir"
	FlagGRPCAddr    = "grpc-addr"
	FlagCertTTL     = "cert-ttl"
	FlagMaxCertTTL  = "max-cert-ttl"
	FlagTokenFile   = "token-file"
	FlagServingDNS  = "serving-dns"
	FlagServingIP   = "serving-ip"
	FlagRootCertOut = "root-cert-out"
	FlagLogLevel    = "log-level"

	FlagConfigSource   = "config-source"
	FlagKubeconfig     = "kubeconfig"
	FlagConfigDir      = "config-dir"
	FlagTunnel         = "tunnel"
	FlagAuditPolicies  = "audit-policies"
	FlagZtunnelSA      = "ztunnel-sa"
	FlagTokenAudiences = "token-audiences"
	FlagReadinessAddr  = "readiness-addr"
)

// Values of --config-source.
const (
	// SourceKubernetes watches the API server (informers) and authenticates
	// CA and xDS callers by TokenReview.
	SourceKubernetes = "kubernetes"
	// SourceDir watches a directory of YAML objects (local mode).
	SourceDir = "dir"
	// SourceNone serves the CA only, no workload discovery. Chosen when
	// no source is named and only --token-file is given (local mode until
	// it runs istiod with a config dir).
	SourceNone = "none"
)

// Values of --tunnel.
const (
	TunnelAnnotation = "annotation"
	TunnelEnrollment = "enrollment"
)

// EnvPodNamespace is the pod's namespace (downward API, as Istio's charts
// set it): the default of --namespace.
const EnvPodNamespace = "POD_NAMESPACE"

// EnvInClusterHost is set in every pod: istiod then reads the API server
// with its own service account (in-cluster config).
const EnvInClusterHost = "KUBERNETES_SERVICE_HOST"

// Defaults.
const (
	DefaultTrustDomain = "cluster.local"
	// DefaultNamespace is istiod's namespace when neither --namespace nor
	// POD_NAMESPACE is set.
	DefaultNamespace  = "istio-system"
	DefaultGRPCAddr   = ":15012"
	DefaultServingDNS = "istiod.istio-system.svc,istiod.istio-system.svc.cluster.local,localhost"
	DefaultServingIP  = "127.0.0.1,::1"
	// DefaultReadinessAddr serves /ready; 8080 is the port Istio's istiod
	// answers readiness probes on.
	DefaultReadinessAddr = ":8080"
	// ReadyPath answers 200 once the first config snapshot is pushed.
	ReadyPath = "/ready"
	// MaxAllowedCertTTL bounds --max-cert-ttl, as Istio's own maximum.
	MaxAllowedCertTTL = 90 * 24 * time.Hour
)

// Config is istiod's validated configuration.
type Config struct {
	TrustDomain string
	// CADir holds Istio cacerts files; when empty (or it holds none of
	// them: an absent optional Secret mounts as an empty directory), the
	// self-signed root is kept in the Secret CASecret of Namespace
	// (SourceKubernetes only) or else in StateDir.
	CADir    string
	CASecret string
	StateDir string
	// Namespace is istiod's own namespace (where CASecret lives).
	Namespace string
	GRPCAddr  string
	// CertTTL is the default workload certificate lifetime; MaxCertTTL the
	// longest a request may ask for (longer requests are refused).
	CertTTL    time.Duration
	MaxCertTTL time.Duration
	// TokenFile is the static bearer-token file (see ca.ParseStaticTokens);
	// optional with SourceKubernetes (callers then authenticate by
	// TokenReview, static tokens first when both are set).
	TokenFile  string
	ServingDNS []string
	ServingIPs []net.IP
	// RootCertOut, if set, receives the trust bundle (PEM) at start.
	RootCertOut string
	LogLevel    slog.Level

	// ConfigSource is SourceKubernetes, SourceDir or SourceNone.
	ConfigSource string
	// Kubeconfig is the kubeconfig file; empty with SourceKubernetes means
	// in-cluster config.
	Kubeconfig string
	// ConfigDir is the watched directory of SourceDir.
	ConfigDir string
	// Tunnel is the rule that makes a workload HBONE.
	Tunnel ambient.TunnelMode
	// AuditPolicies sends AUDIT AuthorizationPolicies to ztunnel as
	// dry-run policies whose matches it logs (Istio sends none).
	AuditPolicies bool
	// ZtunnelSA is "namespace/name" of ztunnel's service account (node
	// authorization); TokenAudiences the audiences accepted by TokenReview
	// (kubeauth.AudienceAPIServer for the API server's own).
	ZtunnelSA      string
	TokenAudiences []string
	// ReadinessAddr serves ReadyPath.
	ReadinessAddr string
}

// EnvName returns the environment variable for a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig parses args (without the program name) over the environment
// read by getenv, and validates the result. It returns flag.ErrHelp for
// -h/--help after printing usage to out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	fs := flag.NewFlagSet("istiod", flag.ContinueOnError)
	fs.SetOutput(out)
	str := func(name, def, usage string) *string {
		if v := getenv(EnvName(name)); v != "" {
			def = v
		}
		return fs.String(name, def, usage+" (env "+EnvName(name)+")")
	}
	var (
		td          = str(FlagTrustDomain, DefaultTrustDomain, "SPIFFE trust domain of issued identities")
		caDir       = str(FlagCADir, "", "directory with Istio cacerts files (ca-cert.pem, ca-key.pem, optional cert-chain.pem, root-cert.pem); if unset or holding none of them, a self-signed root is kept in --"+FlagCASecret+" or --"+FlagStateDir)
		caSecret    = str(FlagCASecret, "", "Secret in --"+FlagNamespace+" keeping the self-signed root (created once, never overwritten; Istio's name is istio-ca-secret) when --"+FlagCADir+" gives no cacerts; needs --"+FlagConfigSource+" "+SourceKubernetes)
		stateDir    = str(FlagStateDir, "", "directory keeping the self-signed root (created once, never overwritten) when --"+FlagCADir+" gives no cacerts and --"+FlagCASecret+" is unset")
		podNS       = getenv(EnvPodNamespace)
		namespace   = str(FlagNamespace, cmp.Or(podNS, DefaultNamespace), "istiod's own namespace, where --"+FlagCASecret+" is kept (default: "+EnvPodNamespace+", else "+DefaultNamespace+")")
		grpcAddr    = str(FlagGRPCAddr, DefaultGRPCAddr, "TLS gRPC listen address of the certificate service")
		certTTL     = str(FlagCertTTL, ca.DefaultCertTTL.String(), "default lifetime of workload certificates")
		maxCertTTL  = str(FlagMaxCertTTL, ca.DefaultMaxCertTTL.String(), "longest lifetime a request may ask for; longer requests are refused (at most 2160h)")
		tokenFile   = str(FlagTokenFile, "", "static bearer-token file: callers and the SPIFFE IDs they may request (required unless --"+FlagConfigSource+" "+SourceKubernetes+")")
		servingDNS  = str(FlagServingDNS, DefaultServingDNS, "comma-separated DNS names in istiod's serving certificate")
		servingIP   = str(FlagServingIP, DefaultServingIP, "comma-separated IP addresses in istiod's serving certificate (empty for none)")
		rootCertOut = str(FlagRootCertOut, "", "file to write the root certificate (PEM) to at start, for clients to trust")
		logLevel    = str(FlagLogLevel, "info", "log level: debug, info, warn, error")

		source        = str(FlagConfigSource, "", "where the mesh config comes from: "+SourceKubernetes+" (default when in a pod or with --"+FlagKubeconfig+"), "+SourceDir+" (default with --"+FlagConfigDir+"), or "+SourceNone+" (CA only)")
		kubeconfig    = str(FlagKubeconfig, "", "kubeconfig file of the cluster to watch; empty in a pod: its service account")
		configDir     = str(FlagConfigDir, "", "directory of YAML config objects watched with --"+FlagConfigSource+" "+SourceDir)
		tunnel        = str(FlagTunnel, TunnelAnnotation, "when a workload gets HBONE: "+TunnelAnnotation+" (pod annotation ambient.istio.io/redirection=enabled, Istio's rule) or "+TunnelEnrollment+" (the enrollment labels)")
		audit         = str(FlagAuditPolicies, "true", "send AUDIT AuthorizationPolicies to ztunnel, which logs the connections they match (true or false; Istio sends none)")
		ztunnelSA     = str(FlagZtunnelSA, kubeauth.DefaultZtunnelServiceAccount, "namespace/name of ztunnel's service account, which may request the identities of the pods on its node")
		audiences     = str(FlagTokenAudiences, strings.Join(kubeauth.DefaultAudiences, ","), "comma-separated audiences a caller's token may be for ("+kubeauth.AudienceAPIServer+": the API server's own)")
		readinessAddr = str(FlagReadinessAddr, DefaultReadinessAddr, "listen address of "+ReadyPath+" (200 once the first config is pushed)")
	)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q; istiod takes only flags", fs.Arg(0))
	}
	cfg := Config{
		TrustDomain: *td, CADir: *caDir, CASecret: *caSecret, StateDir: *stateDir, Namespace: *namespace, GRPCAddr: *grpcAddr,
		TokenFile: *tokenFile, RootCertOut: *rootCertOut,
		Kubeconfig: *kubeconfig, ConfigDir: *configDir, ZtunnelSA: *ztunnelSA, ReadinessAddr: *readinessAddr,
	}
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s (%s): %s", name, EnvName(name), fmt.Sprintf(format, args...)))
	}
	if err := spiffe.ValidateTrustDomain(cfg.TrustDomain); err != nil {
		bad(FlagTrustDomain, "%v", err)
	}
	if cfg.CADir == "" && cfg.StateDir == "" && cfg.CASecret == "" {
		bad(FlagStateDir, "set --%s (in Kubernetes) or --%s to keep a self-signed root, or --%s to use Istio cacerts files", FlagCASecret, FlagStateDir, FlagCADir)
	}
	if cfg.CASecret != "" && cfg.StateDir != "" {
		bad(FlagCASecret, "--%s and --%s both keep the self-signed root; set only one", FlagCASecret, FlagStateDir)
	}
	if msgs := validation.IsDNS1123Subdomain(cfg.CASecret); cfg.CASecret != "" && len(msgs) > 0 {
		bad(FlagCASecret, "%q is not a Secret name: %s", cfg.CASecret, strings.Join(msgs, "; "))
	}
	if msgs := validation.IsDNS1123Label(cfg.Namespace); len(msgs) > 0 {
		bad(FlagNamespace, "%q is not a namespace name: %s", cfg.Namespace, strings.Join(msgs, "; "))
	}
	if _, _, err := net.SplitHostPort(cfg.GRPCAddr); err != nil {
		bad(FlagGRPCAddr, "%q is not host:port (e.g. :15012 or 127.0.0.1:15012)", cfg.GRPCAddr)
	}
	dur := func(name, v string) time.Duration {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			bad(name, "%q is not a positive duration (e.g. 24h, 90m)", v)
			return 0
		}
		return d
	}
	cfg.CertTTL = dur(FlagCertTTL, *certTTL)
	cfg.MaxCertTTL = dur(FlagMaxCertTTL, *maxCertTTL)
	if cfg.CertTTL > 0 && cfg.MaxCertTTL > 0 && cfg.CertTTL > cfg.MaxCertTTL {
		bad(FlagCertTTL, "%s exceeds --%s %s; lower it or raise the maximum", cfg.CertTTL, FlagMaxCertTTL, cfg.MaxCertTTL)
	}
	if cfg.MaxCertTTL > MaxAllowedCertTTL {
		bad(FlagMaxCertTTL, "%s exceeds %s (90 days); short-lived certificates are the point", cfg.MaxCertTTL, MaxAllowedCertTTL)
	}
	cfg.ConfigSource = resolveSource(*source, cfg, getenv(EnvInClusterHost) != "", bad)
	if cfg.CASecret != "" && cfg.ConfigSource != SourceKubernetes && cfg.ConfigSource != "" {
		bad(FlagCASecret, "needs --%s %s (the Secret is read from the API server); use --%s outside Kubernetes", FlagConfigSource, SourceKubernetes, FlagStateDir)
	}
	switch *tunnel {
	case TunnelAnnotation:
		cfg.Tunnel = ambient.TunnelByAnnotation
	case TunnelEnrollment:
		cfg.Tunnel = ambient.TunnelByEnrollment
	default:
		bad(FlagTunnel, "%q is not %s or %s", *tunnel, TunnelAnnotation, TunnelEnrollment)
	}
	if b, err := strconv.ParseBool(*audit); err != nil {
		bad(FlagAuditPolicies, "%q is not true or false", *audit)
	} else {
		cfg.AuditPolicies = b
	}
	if _, _, err := kubeauth.ParseServiceAccount(cfg.ZtunnelSA); err != nil {
		bad(FlagZtunnelSA, "%v", err)
	}
	cfg.TokenAudiences = splitList(*audiences)
	if len(cfg.TokenAudiences) == 0 {
		bad(FlagTokenAudiences, "empty; list at least one audience (default %s)", strings.Join(kubeauth.DefaultAudiences, ","))
	}
	if _, _, err := net.SplitHostPort(cfg.ReadinessAddr); err != nil {
		bad(FlagReadinessAddr, "%q is not host:port (e.g. %s)", cfg.ReadinessAddr, DefaultReadinessAddr)
	}
	if cfg.TokenFile == "" && cfg.ConfigSource != SourceKubernetes && cfg.ConfigSource != "" {
		bad(FlagTokenFile, "required with --%s %s: without a token file no caller can authenticate (Kubernetes TokenReview is used only with --%s %s)",
			FlagConfigSource, cfg.ConfigSource, FlagConfigSource, SourceKubernetes)
	}
	for _, n := range splitList(*servingDNS) {
		if strings.ContainsAny(n, " \t/:") || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".") {
			bad(FlagServingDNS, "%q is not a DNS name", n)
			continue
		}
		cfg.ServingDNS = append(cfg.ServingDNS, n)
	}
	for _, s := range splitList(*servingIP) {
		ip := net.ParseIP(s)
		if ip == nil {
			bad(FlagServingIP, "%q is not an IP address", s)
			continue
		}
		cfg.ServingIPs = append(cfg.ServingIPs, ip)
	}
	if len(cfg.ServingDNS) == 0 && len(cfg.ServingIPs) == 0 && len(errs) == 0 {
		bad(FlagServingDNS, "no DNS name or IP address for the serving certificate; set --%s or --%s", FlagServingDNS, FlagServingIP)
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		bad(FlagLogLevel, "%q is not one of debug, info, warn, error", *logLevel)
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	return cfg, nil
}

// resolveSource validates --config-source and its companions, or picks the
// source when it is not named.
func resolveSource(source string, cfg Config, inCluster bool, bad func(name, format string, args ...any)) string {
	fix := fmt.Sprintf("pass --%s FILE (or run istiod in a pod) to watch Kubernetes, --%s DIR to watch a directory, or only --%s FILE to serve the CA alone",
		FlagKubeconfig, FlagConfigDir, FlagTokenFile)
	switch source {
	case "":
		switch {
		case cfg.Kubeconfig != "" && cfg.ConfigDir != "":
			bad(FlagConfigSource, "both --%s and --%s are set; choose with --%s %s or %s", FlagKubeconfig, FlagConfigDir, FlagConfigSource, SourceKubernetes, SourceDir)
		case cfg.Kubeconfig != "":
			return SourceKubernetes
		case cfg.ConfigDir != "":
			return SourceDir
		case inCluster:
			return SourceKubernetes
		case cfg.TokenFile != "":
			return SourceNone
		default:
			bad(FlagConfigSource, "no config source: %s", fix)
		}
		return ""
	case SourceKubernetes:
		if cfg.Kubeconfig == "" && !inCluster {
			bad(FlagKubeconfig, "required with --%s %s outside a pod (%s is not set)", FlagConfigSource, SourceKubernetes, EnvInClusterHost)
		}
		if cfg.ConfigDir != "" {
			bad(FlagConfigDir, "only read with --%s %s", FlagConfigSource, SourceDir)
		}
	case SourceDir:
		if cfg.ConfigDir == "" {
			bad(FlagConfigDir, "required with --%s %s", FlagConfigSource, SourceDir)
		}
		if cfg.Kubeconfig != "" {
			bad(FlagKubeconfig, "only read with --%s %s", FlagConfigSource, SourceKubernetes)
		}
	case SourceNone:
		if cfg.Kubeconfig != "" || cfg.ConfigDir != "" {
			bad(FlagConfigSource, "%s reads no config; drop --%s and --%s or choose another source", SourceNone, FlagKubeconfig, FlagConfigDir)
		}
	default:
		bad(FlagConfigSource, "%q is not %s, %s or %s", source, SourceKubernetes, SourceDir, SourceNone)
	}
	return source
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
