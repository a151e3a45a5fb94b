package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/istiod/ca/catest"
)

// TestReadinessWithoutAgent runs ztunnel with a CA and a local config but
// no node agent: it must report not ready, naming ZDS, and serve metrics
// and the admin dump meanwhile.
func TestReadinessWithoutAgent(t *testing.T) {
	ca := catest.Start(t, catest.Options{})
	dir := t.TempDir()
	rootFile, tokenFile, cfgFile := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "token"), filepath.Join(dir, "c.yaml")
	writeFile(t, rootFile, string(ca.RootsPEM))
	writeFile(t, tokenFile, ca.Token)
	writeFile(t, cfgFile, "workloads: []\n")
	cfg, err := parseConfig([]string{
		"--node", "node-a", "--zds-socket", filepath.Join(dir, "absent.sock"), "--ca-addr", ca.Addr, "--ca-root", rootFile,
		"--ca-server-name", ca.ServerName, "--token-file", tokenFile, "--local-config", cfgFile,
		"--metrics-addr", "127.0.0.1:0", "--readiness-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
	}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	got := make(chan addrs, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler), func(a addrs) { got <- a }) }()
	defer func() { cancel(); <-done }()
	var a addrs
	select {
	case a = <-got:
	case err := <-done:
		t.Fatalf("exited: %v", err)
	}
	// The state loads; ZDS never does.
	eventually(t, "state loaded, ZDS pending", 10*time.Second, func() error {
		code, body, err := httpGet("http://" + a.Readiness.String() + "/healthz/ready")
		if err != nil {
			return err
		}
		if code != 503 || strings.Contains(body, "state:") || !strings.Contains(body, "zds: ZDS snapshot") {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
	if code, body, err := httpGet("http://" + a.Metrics.String() + "/stats/prometheus"); err != nil || code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("metrics: %d %v", code, err)
	}
	if code, body, err := httpGet("http://" + a.Admin.String() + "/config_dump"); err != nil || code != 200 || !strings.Contains(body, `"node": "node-a"`) {
		t.Errorf("config_dump: %d %v %s", code, err, body)
	}

	// A bad --ca-root fails at start with the flag named.
	writeFile(t, rootFile, "not pem")
	err = run(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "--ca-root") {
		t.Errorf("bad root: %v", err)
	}
}
