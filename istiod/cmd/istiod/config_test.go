package main

import (
	"errors"
	"flag"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/ca/kubeauth"
)

func TestParseConfig(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	base := []string{"--state-dir", "/tmp/s", "--token-file", "/tmp/t"}

	cfg, err := parseConfig(base, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TrustDomain != "cluster.local" || cfg.GRPCAddr != ":15012" || cfg.CertTTL != 24*time.Hour || cfg.MaxCertTTL != 48*time.Hour {
		t.Fatalf("defaults: %+v", cfg)
	}
	if len(cfg.ServingDNS) != 3 || cfg.ServingDNS[0] != "istiod.istio-system.svc" || len(cfg.ServingIPs) != 2 || !cfg.ServingIPs[1].Equal(net.IPv6loopback) {
		t.Fatalf("serving names: %v %v", cfg.ServingDNS, cfg.ServingIPs)
	}

	// The environment sets values; flags win.
	cfg, err = parseConfig(append(base, "--cert-ttl", "2h"), env(map[string]string{
		"AMBIT_TRUST_DOMAIN": "example.org", "AMBIT_CERT_TTL": "1h", "AMBIT_SERVING_IP": "", "AMBIT_SERVING_DNS": "a.example, b.example",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TrustDomain != "example.org" || cfg.CertTTL != 2*time.Hour || len(cfg.ServingDNS) != 2 || cfg.ServingDNS[1] != "b.example" {
		t.Fatalf("env/flags: %+v", cfg)
	}
	if cfg, err = parseConfig(append(base, "--serving-ip", ""), env(nil), io.Discard); err != nil || len(cfg.ServingIPs) != 0 {
		t.Fatalf("no IPs: %v %v", cfg.ServingIPs, err)
	}
	if cfg, err = parseConfig([]string{"--ca-dir", "/etc/cacerts", "--token-file", "t"}, env(nil), io.Discard); err != nil || cfg.CADir != "/etc/cacerts" {
		t.Fatalf("ca-dir alone: %v", err)
	}
	if _, err := parseConfig([]string{"-h"}, env(nil), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("help: %v", err)
	}
}

func TestParseConfigSources(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	inPod := env(map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
	cases := []struct {
		name       string
		args       []string
		env        func(string) string
		source     string
		kubeconfig string
		dir        string
	}{
		{"kubeconfig picks kubernetes, no token file needed", []string{"--kubeconfig", "/k"}, env(nil), SourceKubernetes, "/k", ""},
		{"in a pod picks kubernetes", nil, inPod, SourceKubernetes, "", ""},
		{"in a pod with a token file too", []string{"--token-file", "t"}, inPod, SourceKubernetes, "", ""},
		{"config dir picks dir", []string{"--config-dir", "/d", "--token-file", "t"}, env(nil), SourceDir, "", "/d"},
		{"config dir wins over being in a pod", []string{"--config-dir", "/d", "--token-file", "t"}, inPod, SourceDir, "", "/d"},
		{"token file alone: CA only (local mode)", []string{"--token-file", "t"}, env(nil), SourceNone, "", ""},
		{"explicit kubernetes with kubeconfig from env", []string{"--config-source", "kubernetes"}, env(map[string]string{"AMBIT_KUBECONFIG": "/e"}), SourceKubernetes, "/e", ""},
		{"explicit dir", []string{"--config-source", "dir", "--config-dir", "/d", "--token-file", "t"}, env(nil), SourceDir, "", "/d"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseConfig(append([]string{"--state-dir", "s"}, c.args...), c.env, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ConfigSource != c.source || cfg.Kubeconfig != c.kubeconfig || cfg.ConfigDir != c.dir {
				t.Errorf("source %q kubeconfig %q dir %q", cfg.ConfigSource, cfg.Kubeconfig, cfg.ConfigDir)
			}
		})
	}

	cfg, err := parseConfig([]string{"--state-dir", "s", "--kubeconfig", "k"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Tunnel != ambient.TunnelByAnnotation || cfg.ZtunnelSA != "istio-system/ztunnel" || cfg.ReadinessAddr != ":8080" ||
		strings.Join(cfg.TokenAudiences, ",") != "istio-ca,"+kubeauth.AudienceAPIServer || cfg.TokenFile != "" {
		t.Errorf("kubernetes defaults: %+v", cfg)
	}
	if cfg.Namespace != DefaultNamespace || cfg.CASecret != "" {
		t.Errorf("namespace %q, CA secret %q", cfg.Namespace, cfg.CASecret)
	}
	// The chart's settings: the Secret, the namespace from the downward API.
	cfg, err = parseConfig([]string{"--ca-secret", "istio-ca-secret", "--ca-dir", "/etc/cacerts"}, env(map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAMESPACE": "mesh"}), io.Discard)
	if err != nil || cfg.CASecret != "istio-ca-secret" || cfg.Namespace != "mesh" || cfg.CADir != "/etc/cacerts" || cfg.ConfigSource != SourceKubernetes {
		t.Errorf("in a pod with --ca-secret: %+v, %v", cfg, err)
	}
	if cfg, err = parseConfig([]string{"--kubeconfig", "k", "--ca-secret", "c", "--namespace", "ns"}, env(map[string]string{"POD_NAMESPACE": "mesh"}), io.Discard); err != nil || cfg.Namespace != "ns" {
		t.Errorf("--namespace over POD_NAMESPACE: %q, %v", cfg.Namespace, err)
	}
	cfg, err = parseConfig([]string{"--state-dir", "s", "--kubeconfig", "k", "--tunnel", "enrollment", "--ztunnel-sa", "mesh/zt",
		"--token-audiences", "a, b", "--readiness-addr", "127.0.0.1:9"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Tunnel != ambient.TunnelByEnrollment || cfg.ZtunnelSA != "mesh/zt" || strings.Join(cfg.TokenAudiences, ",") != "a,b" || cfg.ReadinessAddr != "127.0.0.1:9" {
		t.Errorf("kubernetes flags: %+v", cfg)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no CA source", []string{"--token-file", "t"}, nil, "--state-dir (AMBIT_STATE_DIR): set --ca-secret (in Kubernetes) or --state-dir"},
		{"secret and state dir", []string{"--kubeconfig", "k", "--ca-secret", "istio-ca-secret", "--state-dir", "s"}, nil, "--ca-secret (AMBIT_CA_SECRET): --ca-secret and --state-dir both keep the self-signed root"},
		{"secret outside kubernetes", []string{"--token-file", "t", "--ca-secret", "istio-ca-secret"}, nil, "--ca-secret (AMBIT_CA_SECRET): needs --config-source kubernetes"},
		{"bad secret name", []string{"--kubeconfig", "k", "--ca-secret", "Bad_Name"}, nil, `--ca-secret (AMBIT_CA_SECRET): "Bad_Name" is not a Secret name`},
		{"bad namespace", []string{"--kubeconfig", "k", "--ca-secret", "s", "--namespace", "a.b"}, nil, `--namespace (AMBIT_NAMESPACE): "a.b" is not a namespace name`},
		{"no source", []string{"--state-dir", "s"}, nil, "--config-source (AMBIT_CONFIG_SOURCE): no config source: pass --kubeconfig FILE"},
		{"dir without token file", []string{"--state-dir", "s", "--config-dir", "d"}, nil, "--token-file (AMBIT_TOKEN_FILE): required with --config-source dir"},
		{"none without token file", []string{"--state-dir", "s", "--config-source", "none"}, nil, "--token-file (AMBIT_TOKEN_FILE): required with --config-source none"},
		{"kubernetes outside a pod", []string{"--state-dir", "s", "--config-source", "kubernetes"}, nil, "--kubeconfig (AMBIT_KUBECONFIG): required with --config-source kubernetes outside a pod"},
		{"kubernetes with a dir", []string{"--state-dir", "s", "--config-source", "kubernetes", "--kubeconfig", "k", "--config-dir", "d"}, nil, "--config-dir (AMBIT_CONFIG_DIR): only read with --config-source dir"},
		{"dir without dir", []string{"--state-dir", "s", "--token-file", "t", "--config-source", "dir"}, nil, "--config-dir (AMBIT_CONFIG_DIR): required"},
		{"dir with kubeconfig", []string{"--state-dir", "s", "--token-file", "t", "--config-source", "dir", "--config-dir", "d", "--kubeconfig", "k"}, nil, "--kubeconfig (AMBIT_KUBECONFIG): only read with --config-source kubernetes"},
		{"none with a dir", []string{"--state-dir", "s", "--token-file", "t", "--config-source", "none", "--config-dir", "d"}, nil, "none reads no config"},
		{"ambiguous", []string{"--state-dir", "s", "--kubeconfig", "k", "--config-dir", "d"}, nil, "both --kubeconfig and --config-dir are set"},
		{"bad source", []string{"--state-dir", "s", "--config-source", "etcd"}, nil, `"etcd" is not kubernetes, dir or none`},
		{"bad tunnel", []string{"--state-dir", "s", "--kubeconfig", "k", "--tunnel", "always"}, nil, `--tunnel (AMBIT_TUNNEL): "always" is not annotation or enrollment`},
		{"bad ztunnel sa", []string{"--state-dir", "s", "--kubeconfig", "k", "--ztunnel-sa", "ztunnel"}, nil, `--ztunnel-sa (AMBIT_ZTUNNEL_SA): "ztunnel" is not namespace/name`},
		{"no audiences", []string{"--state-dir", "s", "--kubeconfig", "k", "--token-audiences", " , "}, nil, "--token-audiences (AMBIT_TOKEN_AUDIENCES): empty"},
		{"bad readiness addr", []string{"--state-dir", "s", "--kubeconfig", "k", "--readiness-addr", "8080"}, nil, `--readiness-addr (AMBIT_READINESS_ADDR): "8080" is not host:port`},
		{"bad trust domain", []string{"--state-dir", "s", "--token-file", "t", "--trust-domain", "Bad"}, nil, "--trust-domain"},
		{"bad addr", []string{"--state-dir", "s", "--token-file", "t", "--grpc-addr", "15012"}, nil, "is not host:port"},
		{"bad ttl", []string{"--state-dir", "s", "--token-file", "t", "--cert-ttl", "1d"}, nil, `--cert-ttl (AMBIT_CERT_TTL): "1d" is not a positive duration`},
		{"bad ttl from env", []string{"--state-dir", "s", "--token-file", "t"}, map[string]string{"AMBIT_MAX_CERT_TTL": "-1h"}, "--max-cert-ttl (AMBIT_MAX_CERT_TTL)"},
		{"ttl over max", []string{"--state-dir", "s", "--token-file", "t", "--cert-ttl", "72h"}, nil, "72h0m0s exceeds --max-cert-ttl 48h0m0s"},
		{"max over 90 days", []string{"--state-dir", "s", "--token-file", "t", "--max-cert-ttl", "2161h"}, nil, "exceeds 2160h0m0s"},
		{"bad IP", []string{"--state-dir", "s", "--token-file", "t", "--serving-ip", "1.2.3"}, nil, `"1.2.3" is not an IP address`},
		{"bad DNS", []string{"--state-dir", "s", "--token-file", "t", "--serving-dns", "a b"}, nil, `"a b" is not a DNS name`},
		{"no serving names", []string{"--state-dir", "s", "--token-file", "t", "--serving-dns", "", "--serving-ip", ""}, nil, "no DNS name or IP address"},
		{"bad log level", []string{"--state-dir", "s", "--token-file", "t", "--log-level", "loud"}, nil, `"loud" is not one of`},
		{"positional", []string{"--state-dir", "s", "--token-file", "t", "extra"}, nil, `unexpected argument "extra"`},
		{"unknown flag", []string{"--nope"}, nil, "flag provided but not defined"},
		{"all errors at once", []string{"--cert-ttl", "x"}, nil, "--token-file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseConfig(c.args, func(k string) string { return c.env[k] }, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want error containing %q", err, c.want)
			}
		})
	}
}
