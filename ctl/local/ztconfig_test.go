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

	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/ztunnel/state"
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

func TestZtunnelConfigGolden(t *testing.T) {
	topo, err := topology.Load("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cs := clusterFor(topo, map[string]string{
		"demo/client": "10.244.0.2", "demo/server-a": "10.244.0.3",
		"demo/server-b": "10.244.1.2", "legacy/legacy": "10.244.1.3",
	})
	got, err := ZtunnelConfig(topo, cs)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "mesh.ztunnel-config.yaml", got)

	// ztunnel reads it back unchanged.
	snap, err := state.ParseConfig(got)
	if err != nil {
		t.Fatalf("ztunnel cannot parse the generated config: %v", err)
	}
	store := state.New(state.Options{RootNamespace: RootNamespace})
	if err := store.Set(snap); err != nil {
		t.Fatalf("ztunnel rejects the generated config: %v", err)
	}
	v := store.Load()
	if n := len(v.Workloads()); n != 4 {
		t.Errorf("%d workloads, want 4 (the pod without an IP is left out)", n)
	}
	w := v.WorkloadByAddr("", netip.MustParseAddr("10.244.1.2"))
	if w == nil || w.GetUid() != "uid-demo-server-b" || w.GetTunnelProtocol().String() != "HBONE" {
		t.Fatalf("server-b workload = %v", w)
	}
	var names []string
	for _, p := range v.PoliciesFor(w) {
		names = append(names, p.GetNamespace()+"/"+p.GetName())
	}
	if want := "istio-system/deny-legacy demo/echo-b-from-client istio-system/istio_converted_static_strict"; strings.Join(names, " ") != want {
		t.Errorf("policies for server-b = %v, want %s", names, want)
	}
	if a := v.WorkloadByAddr("", netip.MustParseAddr("10.244.0.3")); len(a.GetAuthorizationPolicies()) != 0 {
		t.Errorf("server-a (PERMISSIVE by selector) lists %v", a.GetAuthorizationPolicies())
	}
	if l := v.WorkloadByAddr("", netip.MustParseAddr("10.244.1.3")); l.GetTunnelProtocol().String() != "NONE" {
		t.Errorf("legacy tunnel protocol %v, want NONE", l.GetTunnelProtocol())
	}
	if s := v.ServiceByAddr("", netip.MustParseAddr("10.96.0.10")); s == nil || len(v.Endpoints("demo", s.GetHostname())) != 1 {
		t.Errorf("echo-b service %v or its endpoints missing", s)
	}
}

func TestZtunnelConfigDeterministic(t *testing.T) {
	topo, err := topology.Load("testdata/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cs := clusterFor(topo, map[string]string{"demo/client": "10.244.0.2"})
	a, err := ZtunnelConfig(topo, cs)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, _ := ZtunnelConfig(topo, cs)
		if !bytes.Equal(a, b) {
			t.Fatal("ZtunnelConfig is not deterministic")
		}
	}
}

func TestPolicyErrors(t *testing.T) {
	base := `
nodes: [{name: n}]
namespaces: [{name: demo}]
policies:
`
	for _, tc := range []struct{ name, policy, want string }{
		{"L7 operation", `- {kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}}`,
			"AuthorizationPolicy demo/p): spec.rules[0].to[0].operation.methods is not supported at L4"},
		{"when", `- {kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {rules: [{when: [{key: x}]}]}}`,
			"spec.rules[0].when is not supported"},
		{"custom action", `- {kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {action: CUSTOM}}`,
			`spec.action "CUSTOM" is not supported`},
		{"request principals", `- {kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]}}`,
			"requestPrincipals is not supported at L4"},
		{"port level mtls", `- {kind: PeerAuthentication, metadata: {name: pa, namespace: demo}, spec: {portLevelMtls: {"80": {mode: DISABLE}}}}`,
			"PeerAuthentication demo/pa): spec.portLevelMtls is not supported"},
		{"no namespace", `- {kind: PeerAuthentication, metadata: {name: pa}, spec: {mtls: {mode: STRICT}}}`,
			"metadata.namespace is required"},
		{"bad ip", `- {kind: AuthorizationPolicy, metadata: {name: p, namespace: demo}, spec: {rules: [{from: [{source: {ipBlocks: ["nope"]}}]}]}}`,
			`ipBlocks: "nope" is neither a CIDR nor an IP`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo, err := topology.Parse([]byte(base + tc.policy))
			if err != nil {
				t.Fatal(err)
			}
			_, err = ZtunnelConfig(topo, clusterFor(topo, nil))
			if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrPolicy containing %q", err, tc.want)
			}
		})
	}
}
