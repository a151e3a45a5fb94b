package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/version"
	"github.com/ambit-mesh/ambit/pkg/zds"
	"github.com/ambit-mesh/ambit/ztunnel/limit"
)

var localArgs = []string{
	"--node", "node-a", "--zds-socket", "S/nodes/node-a/ztunnel.sock", "--ca-addr", "172.30.0.1:15012",
	"--ca-root", "S/root-cert.pem", "--token-file", "S/nodes/node-a/token", "--local-config", "S/ztunnel-config.yaml",
}

func noEnv(string) string { return "" }

func TestParseConfigLocalMode(t *testing.T) {
	cgroupLimit = func() (int64, bool) { return 1000 << 20, true }
	defer func() { cgroupLimit = cgroupMemoryLimit }()
	cfg, err := parseConfig(localArgs, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Node: "node-a", TrustDomain: "cluster.local", ZDSSocket: "S/nodes/node-a/ztunnel.sock",
		CAAddr: "172.30.0.1:15012", CAServerName: "istiod.istio-system.svc", CARoot: "S/root-cert.pem",
		TokenFile: "S/nodes/node-a/token", LocalConfig: "S/ztunnel-config.yaml", CertTTL: 24 * time.Hour, DrainTimeout: DefaultDrainTimeout,
		MetricsAddr: ":15020", ReadinessAddr: ":15021", AdminAddr: "127.0.0.1:15000", LogLevel: slog.LevelInfo,
		PodName: "ztunnel-node-a", PodNamespace: "istio-system", ClusterID: "Kubernetes",
		Limits: limit.Defaults, MemoryLimit: 900 << 20,
	}
	if cfg != want {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestParseConfigEnvAndDefaults(t *testing.T) {
	env := map[string]string{
		"AMBIT_NODE": "node-b", "AMBIT_CA_ADDR": "10.0.0.1:15012", "AMBIT_CA_ROOT": "/r.pem",
		"AMBIT_TOKEN_FILE": "/t", "AMBIT_LOCAL_CONFIG": "/c.yaml", "AMBIT_CERT_TTL": "1h",
		"AMBIT_LOG_LEVEL": "debug", "AMBIT_TRUST_DOMAIN": "example.org",
	}
	cfg, err := parseConfig([]string{"--node", "flag-wins"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node != "flag-wins" || cfg.CAAddr != "10.0.0.1:15012" || cfg.CertTTL != time.Hour ||
		cfg.LogLevel != slog.LevelDebug || cfg.TrustDomain != "example.org" || cfg.ZDSSocket != zds.DefaultSocketPath {
		t.Errorf("%+v", cfg)
	}
}

func TestParseConfigXDS(t *testing.T) {
	noLocal := localArgs[:len(localArgs)-2]
	if localArgs[len(localArgs)-2] != "--local-config" {
		t.Fatal("localArgs must end with --local-config")
	}
	cfg, err := parseConfig(noLocal, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.XDSAddr != "172.30.0.1:15012" || cfg.LocalConfig != "" {
		t.Errorf("xDS defaults to the CA: %+v", cfg)
	}
	cfg, err = parseConfig(append(append([]string{}, noLocal...), "--xds-addr", "istiod.istio-system.svc:15010"), noEnv, io.Discard)
	if err != nil || cfg.XDSAddr != "istiod.istio-system.svc:15010" {
		t.Errorf("explicit --xds-addr: %+v %v", cfg, err)
	}
	cfg, err = parseConfig(noLocal, func(k string) string { return map[string]string{"AMBIT_XDS_ADDR": "10.1.1.1:15012"}[k] }, io.Discard)
	if err != nil || cfg.XDSAddr != "10.1.1.1:15012" {
		t.Errorf("xDS from env: %+v %v", cfg, err)
	}
	// Local file mode: no xDS.
	cfg, err = parseConfig(localArgs, noEnv, io.Discard)
	if err != nil || cfg.XDSAddr != "" {
		t.Errorf("local mode: %+v %v", cfg, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"nothing", nil, []string{
			"--node (AMBIT_NODE): required", "--ca-addr (AMBIT_CA_ADDR): required", "--ca-root (AMBIT_CA_ROOT): required",
			"--token-file (AMBIT_TOKEN_FILE): required",
		}},
		{"local config and xds", append(append([]string{}, localArgs...), "--xds-addr", "10.0.0.1:15012"),
			[]string{"--xds-addr (AMBIT_XDS_ADDR): set together with --local-config"}},
		{"bad xds addr", append(append([]string{}, localArgs[:len(localArgs)-2]...), "--xds-addr", "istiod"),
			[]string{`--xds-addr (AMBIT_XDS_ADDR): "istiod" is not host:port`}},
		{"bad values", append(append([]string{}, localArgs...), "--ca-addr", "nohost", "--cert-ttl", "-1h",
			"--admin-addr", "0.0.0.0:15000", "--metrics-addr", "15020", "--log-level", "loud", "--trust-domain", "Bad/TD"),
			[]string{
				`--ca-addr (AMBIT_CA_ADDR): "nohost" is not host:port`,
				`--cert-ttl (AMBIT_CERT_TTL): "-1h" is not a positive duration`,
				`--admin-addr (AMBIT_ADMIN_ADDR): "0.0.0.0:15000" is not a loopback address`,
				`--metrics-addr (AMBIT_METRICS_ADDR): "15020" is not host:port`,
				`--log-level (AMBIT_LOG_LEVEL): "loud"`,
				`--trust-domain (AMBIT_TRUST_DOMAIN)`,
			}},
		{"bad pod", append(append([]string{}, localArgs...), "--pod-ip", "node-a", "--pod-name", "a~b"),
			[]string{`--pod-ip (AMBIT_POD_IP): "node-a" is not an IP address`, `--pod-name (AMBIT_POD_NAME): "a~b" contains '~'`}},
		{"bad limits", append(append([]string{}, localArgs...), "--conn-limit-in-progress", "-1", "--conn-limit-open", "many",
			"--conn-limit-rate", "NaN", "--memory-limit", "1Ti"),
			[]string{
				`--conn-limit-in-progress (AMBIT_CONN_LIMIT_IN_PROGRESS): "-1" is not a count`,
				`--conn-limit-open (AMBIT_CONN_LIMIT_OPEN): "many" is not a count`,
				`--conn-limit-rate (AMBIT_CONN_LIMIT_RATE): "NaN" is not a rate`,
				`--memory-limit (AMBIT_MEMORY_LIMIT): "1Ti" is not auto, 0 or a size`,
			}},
		{"positional", append(append([]string{}, localArgs...), "extra"), []string{`unexpected argument "extra"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(tt.args, noEnv, io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	if _, err := parseConfig([]string{"-h"}, noEnv, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	if _, err := parseConfig(append(append([]string{}, localArgs...), "--admin-addr", "[::1]:15000"), noEnv, io.Discard); err != nil {
		t.Errorf("::1 admin: %v", err)
	}
}

// TestXDSNode: the node ID has the four parts Istio's istiod parses
// ("missing parts in the service node" otherwise) and a valid IP.
func TestXDSNode(t *testing.T) {
	cfg, err := parseConfig(append(append([]string{}, localArgs...), "--pod-ip", "172.31.0.10", "--pod-namespace", "kube-system"), noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	id, md := xdsNode(cfg)
	if want := "ztunnel~172.31.0.10~ztunnel-node-a.kube-system~kube-system.svc.cluster.local"; id != want {
		t.Errorf("node ID %q, want %q", id, want)
	}
	want := map[string]string{"NAME": "ztunnel-node-a", "NAMESPACE": "kube-system", "NODE_NAME": "node-a", "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "172.31.0.10", "ISTIO_VERSION": version.Version}
	if fmt.Sprint(md) != fmt.Sprint(want) {
		t.Errorf("metadata %v, want %v", md, want)
	}
	cfg.PodIP = ""
	id, md = xdsNode(cfg)
	if parts := strings.Split(id, "~"); len(parts) != 4 || net.ParseIP(parts[1]) == nil || md["INSTANCE_IPS"] != parts[1] {
		t.Errorf("without --pod-ip: node ID %q, metadata %v", id, md)
	}
}

func TestParseConfigLimits(t *testing.T) {
	cfg, err := parseConfig(append(append([]string{}, localArgs...), "--conn-limit-in-progress", "0",
		"--conn-limit-open", "50", "--conn-limit-rate", "2.5", "--memory-limit", "512Mi"), noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := (limit.Config{MaxInProgress: 0, MaxOpen: 50, Rate: 2.5, Burst: 5}); cfg.Limits != want {
		t.Errorf("limits %+v; want %+v", cfg.Limits, want)
	}
	if cfg.MemoryLimit != 512<<20 {
		t.Errorf("memory limit %d", cfg.MemoryLimit)
	}
}

func TestParseMemoryLimit(t *testing.T) {
	none := func() (int64, bool) { return 0, false }
	for in, want := range map[string]int64{"0": 0, "auto": 0, "100": 100, "2Ki": 2048, "3Mi": 3 << 20, "1Gi": 1 << 30} {
		if got, err := parseMemoryLimit(in, none); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	if got, _ := parseMemoryLimit("auto", func() (int64, bool) { return 1 << 30, true }); got != (1<<30)/10*9 {
		t.Errorf("auto with a 1 GiB cgroup: %d", got)
	}
	for _, in := range []string{"-1", "x", "9999999999Gi", "1.5Gi"} {
		if _, err := parseMemoryLimit(in, none); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestReclaimer(t *testing.T) {
	r := reclaimer{threshold: 16, base: 100, peak: 10}
	steps := []struct {
		heap       uint64
		goroutines int
		want       bool
	}{
		{110, 10, false},  // within the threshold
		{400, 500, false}, // a load: heap grows, goroutines peak
		{400, 300, false}, // still above half the peak
		{400, 250, true},  // the load has passed
	}
	for i, s := range steps {
		if got := r.observe(s.heap, s.goroutines); got != s.want {
			t.Fatalf("step %d (%+v): reclaim %v", i, s, got)
		}
	}
	r.reclaimed(120, 250)
	if r.observe(130, 100) {
		t.Fatal("reclaims again within the threshold of the new base")
	}
	if !r.observe(200, 100) {
		t.Fatal("no reclaim of a grown heap with the load gone")
	}
}
