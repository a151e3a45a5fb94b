package ambient

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/ambit-mesh/ambit/istiod/config"
)

func paYAML(ns, name, created, selector, spec string) string {
	s := fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: %s\n  namespace: %s\n", name, ns)
	if created != "" {
		s += fmt.Sprintf("  creationTimestamp: %q\n", created)
	}
	s += "spec:\n"
	if selector != "" {
		s += "  selector:\n    matchLabels:\n      " + selector + "\n"
	}
	if spec == "" && selector == "" {
		spec = "  {}\n"
	}
	return s + spec
}

const (
	strictSpec     = "  mtls:\n    mode: STRICT\n"
	permissiveSpec = "  mtls:\n    mode: PERMISSIVE\n"
	disableSpec    = "  mtls:\n    mode: DISABLE\n"
	staticStrict   = "istio-system/istio_converted_static_strict"
)

func TestPeerAuthentication(t *testing.T) {
	pod := podYAML("ns1", "p", map[string]string{"app": "shop"}, nil)
	for _, tc := range []struct {
		name string
		pas  []string
		want []string // the pod's authorization_policies
	}{
		{"none", nil, nil},
		{"mesh strict", []string{paYAML("istio-system", "mesh", "", "", strictSpec)}, []string{staticStrict}},
		{"mesh permissive", []string{paYAML("istio-system", "mesh", "", "", permissiveSpec)}, nil},
		{"mesh strict, namespace permissive", []string{paYAML("istio-system", "mesh", "", "", strictSpec), paYAML("ns1", "ns", "", "", permissiveSpec)}, nil},
		{"mesh permissive, namespace strict", []string{paYAML("istio-system", "mesh", "", "", permissiveSpec), paYAML("ns1", "ns", "", "", strictSpec)}, []string{staticStrict}},
		{"mesh strict, namespace unset", []string{paYAML("istio-system", "mesh", "", "", strictSpec), paYAML("ns1", "ns", "", "", "")}, []string{staticStrict}},
		{"namespace strict, workload permissive", []string{paYAML("ns1", "ns", "", "", strictSpec), paYAML("ns1", "wl", "", "app: shop", permissiveSpec)}, nil},
		{"namespace disable, workload strict", []string{paYAML("ns1", "ns", "", "", disableSpec), paYAML("ns1", "wl", "", "app: shop", strictSpec)}, []string{staticStrict}},
		{"workload policy selects another pod", []string{paYAML("ns1", "wl", "", "app: other", strictSpec)}, nil},
		{"other namespace's policy", []string{paYAML("ns2", "ns", "", "", strictSpec)}, nil},
		{"selector policy in root namespace ignored", []string{paYAML("istio-system", "wl", "", "app: shop", strictSpec)}, nil},
		{"oldest namespace policy wins", []string{
			paYAML("ns1", "b-old", "2020-01-01T00:00:00Z", "", strictSpec),
			paYAML("ns1", "a-new", "2024-01-01T00:00:00Z", "", permissiveSpec),
		}, []string{staticStrict}},
		{"workload strict, port permissive", []string{
			paYAML("ns1", "wl", "", "app: shop", strictSpec+"  portLevelMtls:\n    8080:\n      mode: PERMISSIVE\n"),
		}, []string{"ns1/converted_peer_authentication_wl"}},
		{"workload strict, all ports strict", []string{
			paYAML("ns1", "wl", "", "app: shop", strictSpec+"  portLevelMtls:\n    8080:\n      mode: STRICT\n"),
		}, []string{staticStrict}},
		{"permissive mesh, workload port strict", []string{
			paYAML("istio-system", "mesh", "", "", permissiveSpec),
			paYAML("ns1", "wl", "", "app: shop", "  portLevelMtls:\n    9090:\n      mode: STRICT\n    8080:\n      mode: STRICT\n"),
		}, []string{"ns1/converted_peer_authentication_wl"}},
		{"namespace strict, workload unset, port permissive", []string{
			paYAML("ns1", "ns", "", "", strictSpec),
			paYAML("ns1", "wl", "", "app: shop", "  portLevelMtls:\n    8080:\n      mode: PERMISSIVE\n"),
		}, []string{"ns1/converted_peer_authentication_wl"}},
		{"workload permissive, port strict", []string{
			paYAML("ns1", "wl", "", "app: shop", permissiveSpec+"  portLevelMtls:\n    15000:\n      mode: STRICT\n"),
		}, []string{"ns1/converted_peer_authentication_wl"}},
		{"no policy at all for the pod, but one elsewhere", []string{paYAML("ns2", "x", "", "", permissiveSpec)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := append([]string{pod}, tc.pas...)
			r, errs := Build(snapshot(t, docs...), Options{})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			w := r.Workloads["Kubernetes//Pod/ns1/p"]
			if !slices.Equal(w.AuthorizationPolicies, tc.want) {
				t.Errorf("authorization_policies %q, want %q", w.AuthorizationPolicies, tc.want)
			}
			// Every listed policy is served.
			for _, n := range w.AuthorizationPolicies {
				if r.Authorizations[n] == nil {
					t.Errorf("%s listed but not built", n)
				}
			}
			_, hasStatic := r.Authorizations[staticStrict]
			if hasStatic != (len(tc.pas) > 0) {
				t.Errorf("static STRICT policy present=%v with %d PeerAuthentications", hasStatic, len(tc.pas))
			}
			var out bytes.Buffer
			for _, k := range config.SortedKeys(r.Authorizations) {
				fmt.Fprintf(&out, "// %s\n", k)
				out.Write(stableJSON(t, r.Authorizations[k]))
			}
			golden(t, "peerauth/"+slug(tc.name)+".golden", out.Bytes())
		})
	}
}

func TestWorkloadAuthorizationPolicies(t *testing.T) {
	pod := podYAML("ns1", "p", map[string]string{"app": "shop", "tier": "web"}, nil)
	docs := []string{
		pod,
		apYAML("ns1", "b-selects", "  selector:\n    matchLabels: {app: shop}\n  rules:\n  - {}\n", nil),
		apYAML("ns1", "a-selects-two", "  selector:\n    matchLabels: {app: shop, tier: web}\n  rules:\n  - {}\n", nil),
		apYAML("ns1", "other-labels", "  selector:\n    matchLabels: {app: db}\n", nil),
		apYAML("ns1", "namespace-wide", "  rules:\n  - {}\n", nil),
		apYAML("ns1", "empty-selector", "  selector: {}\n", nil),
		apYAML("ns2", "other-ns", "  selector:\n    matchLabels: {app: shop}\n", nil),
		apYAML("istio-system", "root-selects", "  selector:\n    matchLabels: {app: shop}\n", nil),
		apYAML("ns1", "audit", "  action: AUDIT\n  selector:\n    matchLabels: {app: shop}\n", nil),
		apYAML("ns1", "dry", "  selector:\n    matchLabels: {app: shop}\n", map[string]string{AnnotationDryRun: "true"}),
	}
	r, errs := Build(snapshot(t, docs...), Options{})
	if len(errs) != 2 { // audit and dry
		t.Errorf("errors %v, want the AUDIT and the dry-run policy", errs)
	}
	want := []string{"istio-system/root-selects", "ns1/a-selects-two", "ns1/b-selects"}
	if got := r.Workloads["Kubernetes//Pod/ns1/p"].AuthorizationPolicies; !slices.Equal(got, want) {
		t.Errorf("authorization_policies %q, want %q", got, want)
	}
	r, _ = Build(snapshot(t, docs...), Options{DryRunPolicies: true})
	want = []string{"istio-system/root-selects", "ns1/a-selects-two", "ns1/b-selects", "ns1/dry"}
	if got := r.Workloads["Kubernetes//Pod/ns1/p"].AuthorizationPolicies; !slices.Equal(got, want) {
		t.Errorf("with dry run: authorization_policies %q, want %q", got, want)
	}
}
