package topology

import (
	"errors"
	"strings"
	"testing"
)

func TestLoadExample(t *testing.T) {
	top, err := Load("../../../deploy/examples/local/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Nodes) != 2 || top.TrustDomain != "cluster.local" {
		t.Fatalf("nodes %d, trust domain %q", len(top.Nodes), top.TrustDomain)
	}
	enrolled := map[string]bool{}
	for _, p := range top.Pods {
		enrolled[p.Key()] = top.Enrolled(p)
	}
	want := map[string]bool{"demo/client": true, "demo/server-a": true, "demo/server-b": true, "legacy/legacy": false}
	for k, v := range want {
		if enrolled[k] != v {
			t.Errorf("Enrolled(%s) = %v, want %v", k, enrolled[k], v)
		}
	}
	if got := top.Services[0].Ports[1].TargetPort; got != 9000 {
		t.Errorf("targetPort default = %d, want 9000", got)
	}
	if got := top.Identity(top.Pods[0]).String(); got != "spiffe://cluster.local/ns/demo/sa/client" {
		t.Errorf("identity %s", got)
	}
}

func TestEnrollment(t *testing.T) {
	top := &Topology{Namespaces: []Namespace{
		{Name: "in", Labels: map[string]string{LabelDataplaneMode: ModeAmbient}},
		{Name: "out"},
	}}
	cases := []struct {
		ns     string
		labels map[string]string
		want   bool
	}{
		{"in", nil, true},
		{"in", map[string]string{LabelDataplaneMode: ModeNone}, false},
		{"out", nil, false},
		{"out", map[string]string{LabelDataplaneMode: ModeAmbient}, true},
		{"missing", nil, false},
	}
	for _, c := range cases {
		if got := top.Enrolled(Pod{Namespace: c.ns, Labels: c.labels}); got != c.want {
			t.Errorf("ns %s labels %v: enrolled %v, want %v", c.ns, c.labels, got, c.want)
		}
	}
}

func TestValidationNamesFieldAndFix(t *testing.T) {
	cases := map[string]string{
		"nodes: []":                     "nodes: at least one node",
		"nodes: [{name: a}, {name: a}]": "nodes[1].name: duplicate node",
		"nodes: [{name: A}]":            "nodes[0].name",
		"nodes: [{name: a}]\nbogus: 1":  "unknown field",
		"nodes: [{name: a}]\npods: [{name: p, namespace: x, node: a}]":                                                                                           "pods[0].namespace: namespace \"x\" is not declared",
		"nodes: [{name: a}]\nnamespaces: [{name: x}]\npods: [{name: p, namespace: x, node: b}]":                                                                  "pods[0].node: node \"b\" is not declared",
		"nodes: [{name: a}]\nnamespaces: [{name: x, labels: {istio.io/dataplane-mode: on}}]":                                                                     "use \"ambient\" or \"none\"",
		"nodes: [{name: a}]\nnamespaces: [{name: x}]\nservices: [{name: s, namespace: x, vip: 1.2.3.4, selector: {a: b}, ports: [{port: 80}]}]":                  "outside the local service range",
		"nodes: [{name: a}]\nnamespaces: [{name: x}]\nservices: [{name: s, namespace: x, vip: 10.96.0.1, ports: [{port: 80}]}]":                                  "services[0].selector",
		"nodes: [{name: a}]\nnamespaces: [{name: x}]\nservices: [{name: s, namespace: x, vip: 10.96.0.1, selector: {a: b}, ports: [{port: 80, protocol: UDP}]}]": "services[0].ports[0].protocol",
		"nodes: [{name: a}]\npolicies: [{kind: Secret, metadata: {name: x}}]":                                                                                    "policies[0].kind",
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid containing %q", in, err, want)
		}
	}
}

func TestSelects(t *testing.T) {
	s := Service{Namespace: "a", Selector: map[string]string{"app": "x"}}
	if !s.Selects(Pod{Namespace: "a", Labels: map[string]string{"app": "x", "v": "1"}}) {
		t.Error("selector did not match")
	}
	if s.Selects(Pod{Namespace: "b", Labels: map[string]string{"app": "x"}}) {
		t.Error("selector matched another namespace")
	}
}
