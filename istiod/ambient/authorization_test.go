package ambient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/policy"
)

func apYAML(ns, name, spec string, annotations map[string]string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: %s\n  namespace: %s\n%sspec:\n%s",
		name, ns, labelBlock("annotations", annotations, "  "), spec)
}

var authzCases = []struct {
	name, ns, spec string
	ann            map[string]string
	wantErr        error
	wantNil        bool
}{
	{name: "allow-nothing", ns: "ns1", spec: "  {}\n"},
	{name: "allow-all", ns: "ns1", spec: "  rules:\n  - {}\n"},
	{name: "deny-namespace-scope", ns: "ns1", spec: "  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [evil]\n"},
	{name: "root-namespace-global", ns: "istio-system", spec: "  action: DENY\n  rules:\n  - to:\n    - operation:\n        ports: [\"22\"]\n"},
	{name: "selector-principals", ns: "ns1", spec: `  selector:
    matchLabels: {app: shop}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/ns1/sa/web", "*", "cluster.local/ns/ns2/*", "*/sa/admin"]
        notPrincipals: ["cluster.local/ns/ns1/sa/bad"]
`},
	{name: "namespaces-serviceaccounts", ns: "ns1", spec: `  rules:
  - from:
    - source:
        namespaces: [ns1, "team-*"]
        notNamespaces: [kube-system]
        serviceAccounts: [web, ns2/api]
        notServiceAccounts: [ns3/x]
`},
	{name: "ipblocks", ns: "ns1", spec: `  rules:
  - from:
    - source:
        ipBlocks: [10.0.0.0/8, 192.168.1.7, "fd00::/64"]
        notIpBlocks: [10.1.2.3/16]
`},
	{name: "ports-notports", ns: "ns1", spec: `  rules:
  - to:
    - operation:
        ports: ["80", "8080"]
    - operation:
        notPorts: ["9090"]
    from:
    - source:
        namespaces: [ns1]
    - source:
        principals: [p]
`},
	{name: "when-l4", ns: "ns1", spec: `  rules:
  - when:
    - key: source.ip
      values: [10.0.0.1]
    - key: destination.port
      notValues: ["22"]
    - key: source.principal
      values: [a]
    - key: destination.ip
      values: [10.96.0.0/12]
    - key: source.namespace
      notValues: [x]
`},
	{name: "allow-l7-rule-dropped", ns: "ns1", spec: `  rules:
  - to:
    - operation:
        methods: [GET]
        paths: ["/admin"]
  - from:
    - source:
        namespaces: [ns1]
`, wantErr: ErrHTTPAttributes},
	{name: "deny-l7-kept-without-http", ns: "ns1", spec: `  action: DENY
  rules:
  - to:
    - operation:
        methods: [POST]
        ports: ["8080"]
    from:
    - source:
        requestPrincipals: ["*"]
    when:
    - key: request.headers[x-user]
      values: [bob]
`, wantErr: ErrHTTPAttributes},
	{name: "audit-not-sent", ns: "ns1", spec: "  action: AUDIT\n  rules:\n  - {}\n", wantErr: ErrNotForZtunnel, wantNil: true},
	{name: "custom-not-sent", ns: "ns1", spec: "  action: CUSTOM\n  provider:\n    name: ext\n  rules:\n  - {}\n", wantErr: ErrNotForZtunnel, wantNil: true},
	{name: "dry-run-not-sent", ns: "ns1", spec: "  rules:\n  - {}\n", ann: map[string]string{AnnotationDryRun: "true"}, wantErr: ErrNotForZtunnel, wantNil: true},
	{name: "targetref-not-for-ztunnel", ns: "ns1", spec: "  targetRefs:\n  - kind: Service\n    group: \"\"\n    name: shop\n  rules:\n  - {}\n", wantNil: true},
}

func TestBuildAuthorizationGolden(t *testing.T) {
	for _, tc := range authzCases {
		t.Run(tc.name, func(t *testing.T) {
			s := snapshot(t, apYAML(tc.ns, tc.name, tc.spec, tc.ann))
			a, err := BuildAuthorization(s.AuthorizationPolicies[tc.ns+"/"+tc.name], Options{})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if (a == nil) != tc.wantNil {
				t.Fatalf("authorization %v, want nil=%v", a, tc.wantNil)
			}
			out := []byte("null\n")
			if a != nil {
				out = stableJSON(t, a)
			}
			if err != nil {
				e, _ := json.Marshal(err.Error())
				out = append(out, fmt.Sprintf("// error: %s\n", e)...)
			}
			golden(t, "authz/"+tc.name+".golden", out)
		})
	}
}

// TestAuthorizationSemantics evaluates built policies with ztunnel's own
// evaluator, so that the fail-safe handling of HTTP attributes is checked
// end to end, not just by shape.
func TestAuthorizationSemantics(t *testing.T) {
	build := func(name, spec string) *security.Authorization {
		s := snapshot(t, apYAML("ns1", name, spec, nil))
		a, _ := BuildAuthorization(s.AuthorizationPolicies["ns1/"+name], Options{})
		return a
	}
	var allowL7, denyL7 *security.Authorization
	for _, tc := range authzCases {
		switch tc.name {
		case "allow-l7-rule-dropped":
			allowL7 = build(tc.name, tc.spec)
		case "deny-l7-kept-without-http":
			denyL7 = build(tc.name, tc.spec)
		}
	}
	conn := policy.Conn{SourceIP: netip.MustParseAddr("10.9.9.9"), DestIP: netip.MustParseAddr("10.0.0.1"), DestPort: 8080}
	// A plaintext connection to port 8080, from nowhere in ns1.
	if policy.Matches(allowL7, conn) {
		t.Error("ALLOW with HTTP-only rule matched a connection outside its L4 rule")
	}
	if !policy.Matches(denyL7, conn) {
		t.Error("DENY with HTTP attributes did not match (must fail safe and deny)")
	}
	if !strings.Contains(fmt.Sprint(allowL7.Groups), "ns1") || len(allowL7.Groups) != 1 {
		t.Errorf("ALLOW kept %d groups, want only the L4 rule's", len(allowL7.Groups))
	}
}

func TestDryRunEnabled(t *testing.T) {
	s := snapshot(t, apYAML("ns1", "d", "  rules:\n  - {}\n", map[string]string{AnnotationDryRun: "true"}))
	a, err := BuildAuthorization(s.AuthorizationPolicies["ns1/d"], Options{DryRunPolicies: true})
	if err != nil || a == nil || !a.DryRun {
		t.Fatalf("got %v, %v; want a dry-run policy", a, err)
	}
}

// TestAuditPolicies: with AuditPolicies an AUDIT policy reaches ztunnel as a
// dry-run DENY that ztunnel reports as an audit and never enforces; it is
// listed on the workloads it selects.
func TestAuditPolicies(t *testing.T) {
	s := snapshot(t, apYAML("ns1", "audit-client", `  action: AUDIT
  selector:
    matchLabels: {app: a}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/ns1/sa/client"]
`, nil))
	ap := s.AuthorizationPolicies["ns1/audit-client"]
	if a, err := BuildAuthorization(ap, Options{}); a != nil || !errors.Is(err, ErrNotForZtunnel) {
		t.Fatalf("default options: got %v, %v; want nothing sent (Istio's behaviour)", a, err)
	}
	a, err := BuildAuthorization(ap, Options{AuditPolicies: true})
	if err != nil || a == nil {
		t.Fatalf("AuditPolicies: got %v, %v", a, err)
	}
	if !a.DryRun || a.Action != security.Action_DENY || a.Scope != security.Scope_WORKLOAD_SELECTOR {
		t.Fatalf("audit policy %v: want a dry-run DENY with workload-selector scope", a)
	}
	client, _ := spiffe.Parse("spiffe://cluster.local/ns/ns1/sa/client")
	other, _ := spiffe.Parse("spiffe://cluster.local/ns/ns1/sa/other")
	for _, c := range []struct {
		peer      spiffe.ID
		wantAudit bool
	}{{client, true}, {other, false}} {
		r := policy.Evaluate([]*security.Authorization{a}, policy.Conn{SourceIdentity: &c.peer,
			SourceIP: netip.MustParseAddr("10.0.0.1"), DestIP: netip.MustParseAddr("10.0.0.2"), DestPort: 80})
		if !r.Allow {
			t.Errorf("peer %s: an AUDIT policy denied the connection: %s", c.peer, r.Reason)
		}
		if got := len(r.Audits) > 0; got != c.wantAudit {
			t.Errorf("peer %s: audited %v, want %v", c.peer, got, c.wantAudit)
		}
	}
	if !sentToZtunnel(ap, Options{AuditPolicies: true}) || sentToZtunnel(ap, Options{}) {
		t.Error("sentToZtunnel disagrees with BuildAuthorization")
	}
}
