package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Flag names. Each flag may also be set by the environment variable
// EnvPrefix + upper-cased name with '-' as '_' (e.g. AMBIT_TRUST_DOMAIN); a
// flag on the command line wins over the environment.
const (
	EnvPrefix = "AMBIT_"

	FlagTrustDomain = "trust-domain"
	FlagCADir       = "ca-dir"
	FlagStateDir    = "state-dir"
	FlagGRPCAddr    = "grpc-addr"
	FlagCertTTL     = "cert-ttl"
	FlagMaxCertTTL  = "max-cert-ttl"
	FlagTokenFile   = "token-file"
	FlagServingDNS  = "serving-dns"
	FlagServingIP   = "serving-ip"
	FlagRootCertOut = "root-cert-out"
	FlagLogLevel    = "log-level"
)

// Defaults.
const (
	DefaultTrustDomain = "cluster.local"
	DefaultGRPCAddr    = ":15012"
	DefaultServingDNS  = "istiod.istio-system.svc,istiod.istio-system.svc.cluster.local,localhost"
	DefaultServingIP   = "127.0.0.1,::1"
	// MaxAllowedCertTTL bounds --max-cert-ttl, as Istio's own maximum.
	MaxAllowedCertTTL = 90 * 24 * time.Hour
)

// Config is istiod's validated configuration.
type Config struct {
	TrustDomain string
	// CADir holds Istio cacerts files; when empty, StateDir keeps a
	// self-signed root.
	CADir    string
	StateDir string
	GRPCAddr string
	// CertTTL is the default workload certificate lifetime; MaxCertTTL the
	// longest a request may ask for (longer requests are refused).
	CertTTL    time.Duration
	MaxCertTTL time.Duration
	// TokenFile is the static bearer-token file (see ca.ParseStaticTokens).
	TokenFile  string
	ServingDNS []string
	ServingIPs []net.IP
	// RootCertOut, if set, receives the trust bundle (PEM) at start.
	RootCertOut string
	LogLevel    slog.Level
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
		caDir       = str(FlagCADir, "", "directory with Istio cacerts files (ca-cert.pem, ca-key.pem, optional cert-chain.pem, root-cert.pem); if empty, a self-signed root is kept in --state-dir")
		stateDir    = str(FlagStateDir, "", "directory keeping the self-signed root (created once, never overwritten) when --ca-dir is empty")
		grpcAddr    = str(FlagGRPCAddr, DefaultGRPCAddr, "TLS gRPC listen address of the certificate service")
		certTTL     = str(FlagCertTTL, ca.DefaultCertTTL.String(), "default lifetime of workload certificates")
		maxCertTTL  = str(FlagMaxCertTTL, ca.DefaultMaxCertTTL.String(), "longest lifetime a request may ask for; longer requests are refused (at most 2160h)")
		tokenFile   = str(FlagTokenFile, "", "static bearer-token file: callers and the SPIFFE IDs they may request (required)")
		servingDNS  = str(FlagServingDNS, DefaultServingDNS, "comma-separated DNS names in istiod's serving certificate")
		servingIP   = str(FlagServingIP, DefaultServingIP, "comma-separated IP addresses in istiod's serving certificate (empty for none)")
		rootCertOut = str(FlagRootCertOut, "", "file to write the root certificate (PEM) to at start, for clients to trust")
		logLevel    = str(FlagLogLevel, "info", "log level: debug, info, warn, error")
	)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q; istiod takes only flags", fs.Arg(0))
	}
	cfg := Config{
		TrustDomain: *td, CADir: *caDir, StateDir: *stateDir, GRPCAddr: *grpcAddr,
		TokenFile: *tokenFile, RootCertOut: *rootCertOut,
	}
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s (%s): %s", name, EnvName(name), fmt.Sprintf(format, args...)))
	}
	if err := spiffe.ValidateTrustDomain(cfg.TrustDomain); err != nil {
		bad(FlagTrustDomain, "%v", err)
	}
	if cfg.CADir == "" && cfg.StateDir == "" {
		bad(FlagStateDir, "set --%s to keep a self-signed root, or --%s to use Istio cacerts files", FlagStateDir, FlagCADir)
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
	if cfg.TokenFile == "" {
		bad(FlagTokenFile, "required: without a token file no caller can authenticate")
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

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
