package main

import (
	"errors"
	"flag"
	"io"
	"net"
	"strings"
	"testing"
	"time"
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

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no CA source", []string{"--token-file", "t"}, nil, "--state-dir (AMBIT_STATE_DIR): set --state-dir"},
		{"no token file", []string{"--state-dir", "s"}, nil, "--token-file (AMBIT_TOKEN_FILE): required"},
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
