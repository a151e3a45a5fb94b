package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/workloadapi"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestConfigGolden(t *testing.T) {
	snap, err := LoadFile("testdata/sample.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := newStore()
	if err := s.Set(snap); err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(s.Dump(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	const golden = "testdata/sample.golden.json"
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("dump differs from %s (run go test -update and review the diff):\n%s", golden, got)
	}

	// Spot checks of the conversions.
	v := s.Load()
	echo := v.WorkloadByAddr("", netip.MustParseAddr("fd00::6"))
	if echo.GetUid() != "cluster1//Pod/default/echo-1" || echo.GetServiceAccount() != "echo" || echo.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		t.Fatalf("echo: %v", echo)
	}
	if v.ServiceByAddr("", netip.MustParseAddr("10.96.0.10")).GetHostname() != "echo.default.svc.cluster.local" {
		t.Fatal("service VIP")
	}
	old := v.WorkloadByUID("cluster1//Pod/legacy/old")
	if wp, _ := netip.AddrFromSlice(old.GetWaypoint().GetAddress().GetAddress()); wp != netip.MustParseAddr("10.0.3.1") {
		t.Fatalf("waypoint %v", wp)
	}
	m := v.Policy("default/echo-allow-client").Groups[0].Rules[1].Matches[0]
	if len(m.SourceIps) != 3 || m.SourceIps[0].Length != 16 || m.SourceIps[1].Length != 64 || m.SourceIps[2].Length != 32 {
		t.Fatalf("source ips %v", m.SourceIps)
	}
	if keys := policyKeys(v.PoliciesFor(echo)); strings.Join(keys, ",") != "istio-system/deny-legacy,istio-system/istio_converted_static_strict,default/echo-allow-client" {
		t.Fatalf("echo policies %v", keys)
	}

	// The dump reads back as a local config and dumps the same.
	back, err := ParseConfig(got)
	if err != nil {
		t.Fatal(err)
	}
	s2 := newStore()
	if err := s2.Set(back); err != nil {
		t.Fatal(err)
	}
	got2, _ := json.MarshalIndent(s2.Dump(), "", "  ")
	if string(got2)+"\n" != string(got) {
		t.Fatalf("round trip differs:\n%s", got2)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := map[string]string{
		"workloads: {}":                   "workloads: want a list",
		"extra: []":                       `unknown top-level key "extra"`,
		"workloads: [{uid: a, bogus: 1}]": `workloads[0] (a)`,
		"workloads: [{uid: a, tunnelProtocol: HBONEX}]":                                "HBONEX",
		"services: [{hostname: h, namespace: ns, ports: 1}]":                           "services[0] (ns/h)",
		"policies: [{name: p, groups: [{rules: [{matches: [{sourceIps: [nope]}]}]}]}]": "sourceIps[0]",
		"workloads: [a]": "workloads[0]: want an object",
		":":              "",
	}
	for in, want := range cases {
		_, err := ParseConfig([]byte(in))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%q) = %v, want ErrConfig containing %q", in, err, want)
		}
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
	snap, err := ParseConfig(nil)
	if err != nil || len(snap.Workloads)+len(snap.Services)+len(snap.Policies) != 0 {
		t.Errorf("empty document: %v %v", snap, err)
	}
}

func TestConfigIPForms(t *testing.T) {
	snap, err := ParseConfig([]byte(`
workloads:
- uid: a
  namespace: ns
  addresses: ["10.0.0.1", "CgAAAg=="]   # text and base64 bytes
  network_gateway: {address: {address: "fd00::1"}}
services:
- namespace: ns
  hostname: h
  weighted_waypoints: [{destination: {address: {address: "10.0.3.3"}}, weight: 1}]
policies:
- name: p
  namespace: ns
  groups: [{rules: [{matches: [{
      not_destination_ips: [{address: "10.0.0.0", length: 8}],
      destinationIps: ["fd00::/16"]}]}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	w := snap.Workloads[0]
	if len(w.Addresses) != 2 || netip.AddrFrom4([4]byte(w.Addresses[1])) != netip.MustParseAddr("10.0.0.2") || len(w.NetworkGateway.GetAddress().GetAddress()) != 16 {
		t.Fatalf("workload %v", w)
	}
	if len(snap.Services[0].WeightedWaypoints[0].GetDestination().GetAddress().GetAddress()) != 4 {
		t.Fatal("weighted waypoint address")
	}
	m := snap.Policies[0].Groups[0].Rules[0].Matches[0]
	if m.NotDestinationIps[0].Length != 8 || m.DestinationIps[0].Length != 16 || len(m.DestinationIps[0].Address) != 16 {
		t.Fatalf("policy ips %v", m)
	}
}

const goodA = `
workloads:
- {uid: a, namespace: ns, addresses: ["10.0.0.1"]}
`

const goodB = `
workloads:
- {uid: b, namespace: ns, addresses: ["10.0.0.2"]}
- {uid: c, namespace: ns, addresses: ["10.0.0.3"]}
policies:
- {name: p, namespace: ns, scope: NAMESPACE, action: DENY}
`

// TestWatch: initial load, reload on change, bad files (syntax, validation)
// keep the last good state, and recovery.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	write := func(s string) {
		t.Helper()
		// Write elsewhere and rename, as editors and ConfigMaps do.
		tmp := filepath.Join(dir, "tmp")
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(goodA)
	s := newStore()
	results := make(chan error, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- Watch(ctx, path, s, WatchOptions{Interval: 5 * time.Millisecond, Logger: quiet(), Reloaded: func(err error) { results <- err }})
	}()
	next := func() error {
		t.Helper()
		select {
		case err := <-results:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("no reload within 10s")
			return nil
		}
	}
	if err := next(); err != nil {
		t.Fatal(err)
	}
	if s.Load().WorkloadByUID("a") == nil {
		t.Fatal("initial load")
	}

	write(goodB)
	if err := next(); err != nil {
		t.Fatal(err)
	}
	if v := s.Load(); v.WorkloadByUID("a") != nil || v.WorkloadByUID("c") == nil || v.Policy("ns/p") == nil {
		t.Fatal("reload did not replace the state")
	}
	version := s.Load().Version()

	write("workloads: [{uid: x, namespace: ns, addresses: [\"10.0.0.9\"], bogus: true}]")
	if err := next(); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("syntax error not reported with file and field: %v", err)
	}
	write("workloads: [{uid: wy, namespace: ns, addresses: [\"10.0.0.9\"]}, {uid: wz, namespace: ns, addresses: [\"1.2.3\"]}]")
	if err := next(); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "wz") {
		t.Fatalf("invalid IP not reported with file and resource: %v", err)
	}
	write(`policies: [{name: g, namespace: ns, scope: GLOBAL}]`)
	if err := next(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field scope") {
		t.Fatalf("validation error: %v", err)
	}
	if v := s.Load(); v.Version() != version || v.WorkloadByUID("c") == nil || v.WorkloadByUID("wy") != nil {
		t.Fatal("a bad file changed the state")
	}

	write(goodA)
	if err := next(); err != nil {
		t.Fatal(err)
	}
	if v := s.Load(); v.WorkloadByUID("a") == nil || v.Policy("ns/p") != nil {
		t.Fatal("recovery")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch returned %v", err)
	}
}

// TestWatchMissingFile: a file that appears later is picked up.
func TestWatchMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "later.yaml")
	s := newStore()
	results := make(chan error, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = Watch(ctx, path, s, WatchOptions{Interval: 5 * time.Millisecond, Logger: quiet(), Reloaded: func(err error) { results <- err }})
	}()
	if err := <-results; !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if err := os.WriteFile(path, []byte(goodA), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-results:
			if err == nil {
				if s.Load().WorkloadByUID("a") == nil {
					t.Fatal("applied but not in the store")
				}
				return
			}
		case <-deadline:
			t.Fatal("file never applied")
		}
	}
}
