package local

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/config"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// clusterFor returns the cluster state of t with fixed uids and IPs for the
// named pods (the others have no IP yet).
func clusterFor(t *topology.Topology, ips map[string]string) *localcluster.State {
	cs := &localcluster.State{Generation: 1}
	for _, ns := range t.Namespaces {
		cs.Namespaces = append(cs.Namespaces, localcluster.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	for _, p := range t.Pods {
		cp := localcluster.Pod{UID: "uid-" + p.Namespace + "-" + p.Name, Name: p.Name, Namespace: p.Namespace, Node: p.Node,
			ServiceAccount: p.ServiceAccount, Labels: p.Labels, Netns: "/var/run/netns/" + PodNetns(p.Namespace, p.Name)}
		if ip, ok := ips[p.Key()]; ok {
			cp.IPs = []netip.Addr{netip.MustParseAddr(ip)}
		}
		cs.Pods = append(cs.Pods, cp)
	}
	return cs
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the generated output (run with -update if the change is intended):\n%s", path, got)
	}
}

func meshFixture(t *testing.T) (*topology.Topology, *localcluster.State, map[string]bool) {
	t.Helper()
	topo, err := topology.Load("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cs := clusterFor(topo, map[string]string{
		"demo/client": "10.244.0.2", "demo/server-a": "10.244.0.3",
		"demo/server-b": "10.244.1.2", "legacy/legacy": "10.244.1.3",
	})
	// server-b is enrolled but not (yet) captured: no mark.
	red := map[string]bool{"uid-demo-client": true, "uid-demo-server-a": true}
	return topo, cs, red
}

// TestConfigDirGolden renders the config dir of a mesh, compares it with
// testdata/config/, and checks that istiod's own decoder and builder read
// it without a complaint and derive what local mode means.
func TestConfigDirGolden(t *testing.T) {
	topo, cs, red := meshFixture(t)
	if err := CheckConfig(topo, cs); err != nil {
		t.Fatalf("CheckConfig: %v", err)
	}
	files, err := ConfigFiles(topo, cs, red)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(ConfigFileNames) {
		t.Fatalf("%d files, want %d", len(files), len(ConfigFileNames))
	}
	dir := t.TempDir()
	for _, name := range ConfigFileNames {
		golden(t, filepath.Join("config", name), files[name])
		if err := os.WriteFile(filepath.Join(dir, name), files[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snap, errs := config.LoadDir(dir)
	if len(errs) > 0 {
		t.Fatalf("istiod rejects the generated config: %v", errors.Join(errs...))
	}
	if got := len(snap.Pods); got != 5 {
		t.Errorf("%d pods, want 5 (4 running, the pending one without IP)", got)
	}
	res, berrs := ambient.Build(snap, meshOptions(topo))
	if len(berrs) > 0 {
		t.Fatalf("istiod's builder: %v", errors.Join(berrs...))
	}
	if len(res.Workloads) != 4 {
		t.Errorf("%d workloads, want 4 (a pending pod without IP is none)", len(res.Workloads))
	}
	tunnel := map[string]workloadapi.TunnelProtocol{}
	for _, w := range res.Workloads {
		tunnel[w.Namespace+"/"+w.Name] = w.TunnelProtocol
	}
	want := map[string]workloadapi.TunnelProtocol{
		"demo/client": workloadapi.TunnelProtocol_HBONE, "demo/server-a": workloadapi.TunnelProtocol_HBONE,
		"demo/server-b": workloadapi.TunnelProtocol_NONE, "legacy/legacy": workloadapi.TunnelProtocol_NONE,
	}
	for k, v := range want {
		if tunnel[k] != v {
			t.Errorf("%s: tunnel %v, want %v", k, tunnel[k], v)
		}
	}
	w := res.Workloads[ambient.PodUID(ambient.DefaultClusterID, "demo", "server-b")]
	if w == nil || len(w.Services) != 1 || w.AuthorizationPolicies == nil {
		t.Errorf("server-b: services %v, policies %v", w.GetServices(), w.GetAuthorizationPolicies())
	}
	for _, name := range []string{"demo/echo-b-from-client", "istio-system/deny-legacy", "legacy/allow-nothing", "istio-system/istio_converted_static_strict"} {
		if res.Authorizations[name] == nil {
			t.Errorf("no Authorization %s; have %v", name, config.SortedKeys(res.Authorizations))
		}
	}
	svc := res.Services["demo/echo-b.demo.svc.cluster.local"]
	if svc == nil || len(svc.Ports) != 2 || svc.Ports[0].AppProtocol != workloadapi.AppProtocol_HTTP11 {
		t.Errorf("service echo-b: %v", svc)
	}

	// The sync wait reads back exactly what it expects.
	ex, err := expected(topo, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(ex.workloads) != 4 || len(ex.services) != 2 || len(ex.policies) != 4 {
		t.Errorf("expected state: %+v", ex)
	}
}

func TestConfigFilesDeterministic(t *testing.T) {
	topo, cs, red := meshFixture(t)
	a, err := ConfigFiles(topo, cs, red)
	if err != nil {
		t.Fatal(err)
	}
	// Reordered input, same cluster.
	r := *topo
	r.Pods = append([]topology.Pod(nil), topo.Pods...)
	r.Policies = append([]map[string]any(nil), topo.Policies...)
	r.Pods[0], r.Pods[len(r.Pods)-1] = r.Pods[len(r.Pods)-1], r.Pods[0]
	r.Policies[0], r.Policies[len(r.Policies)-1] = r.Policies[len(r.Policies)-1], r.Policies[0]
	b, err := ConfigFiles(&r, cs, red)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range ConfigFileNames {
		if !bytes.Equal(a[name], b[name]) {
			t.Errorf("%s depends on the topology's order", name)
		}
	}
}

func TestDumpStateDiff(t *testing.T) {
	want := expectedState{
		workloads: map[string]string{"Kubernetes//Pod/demo/a": "10.244.0.2 HBONE"},
		services:  map[string]bool{}, policies: map[string]bool{"demo/p": true},
	}
	got, err := dumpState([]byte(`{"workloads":[{"uid":"Kubernetes//Pod/demo/a","addresses":["10.244.0.2"],"tunnelProtocol":"HBONE"}],
		"services":[],"policies":[{"name":"p","namespace":"demo"}],"pods":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	if d := want.diff(got); d != "" {
		t.Errorf("diff: %s", d)
	}
	got, _ = dumpState([]byte(`{"workloads":[{"uid":"Kubernetes//Pod/demo/a","addresses":["10.244.0.2"]}],"policies":[]}`))
	if d := want.diff(got); !strings.Contains(d, `"10.244.0.2 NONE"`) || !strings.Contains(d, "policy demo/p missing") {
		t.Errorf("diff: %s", d)
	}
}

func TestCheckConfigRejects(t *testing.T) {
	base := `
nodes: [{name: n}]
namespaces: [{name: demo}]
policies:
`
	for _, tc := range []struct{ name, policy, want string }{
		{"L7 operation", `- {apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}}`,
			"AuthorizationPolicy demo/p: HTTP attributes not enforced by ztunnel (found: methods)"},
		{"custom action", `- {apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {action: CUSTOM}}`,
			"CUSTOM"},
		{"dry run", `- {apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: demo, annotations: {istio.io/dry-run: "true"}}, spec: {}}`,
			"not enforced by ztunnel"},
		{"misspelt field", `- {apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {rules: [{from: [{source: {principal: [x]}}]}]}}`,
			"policies[0]: document 1 (AuthorizationPolicy demo/p): field spec.rules[0].from[0].source.principal: unknown field"},
		{"port level mtls without selector", `- {apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: pa, namespace: demo}, spec: {portLevelMtls: {"80": {mode: DISABLE}}}}`,
			"(PeerAuthentication demo/pa): field spec.portLevelMtls"},
		{"no namespace", `- {apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: pa}, spec: {mtls: {mode: STRICT}}}`,
			"metadata.namespace is required"},
		{"no apiVersion", `- {kind: PeerAuthentication, metadata: {name: pa, namespace: demo}, spec: {mtls: {mode: STRICT}}}`,
			"apiVersion and kind are required"},
		{"bad ip", `- {apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {rules: [{from: [{source: {ipBlocks: ["nope"]}}]}]}}`,
			`"nope" is not an IP address or CIDR block`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo, err := topology.Parse([]byte(base + tc.policy))
			if err != nil {
				t.Fatal(err)
			}
			err = CheckConfig(topo, clusterFor(topo, nil))
			if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrPolicy containing %q", err, tc.want)
			}
		})
	}
}
