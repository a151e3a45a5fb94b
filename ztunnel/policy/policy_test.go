package policy

import (
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Builders keep the tables short.

func pol(name string, action security.Action, groups ...*security.Group) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: "ns", Action: action, Groups: groups}
}

func allow(name string, groups ...*security.Group) *security.Authorization {
	return pol(name, security.Action_ALLOW, groups...)
}

func deny(name string, groups ...*security.Group) *security.Authorization {
	return pol(name, security.Action_DENY, groups...)
}

func dry(p *security.Authorization) *security.Authorization { p.DryRun = true; return p }

// group builds one Group whose rules each hold the given alternatives.
func group(rules ...[]*security.Match) *security.Group {
	g := &security.Group{Rules: []*security.Rules{}}
	for _, r := range rules {
		g.Rules = append(g.Rules, &security.Rules{Matches: r})
	}
	return g
}

// one is a group with one rule of one match.
func one(m *security.Match) *security.Group { return group([]*security.Match{m}) }

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}
func prefix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: s}}
}
func suffix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: s}}
}
func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

func cidr(s string) *security.Address {
	p := netip.MustParsePrefix(s)
	return &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

func id(ns, sa string) *spiffe.ID {
	return &spiffe.ID{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
}

var (
	// mtls: client in namespace "a", service account "client".
	mtls = Conn{SourceIdentity: id("a", "client"), SourceIP: netip.MustParseAddr("10.0.0.1"), DestIP: netip.MustParseAddr("10.0.1.1"), DestPort: 8080}
	// other: namespace "b", service account "other", another port.
	other = Conn{SourceIdentity: id("b", "other"), SourceIP: netip.MustParseAddr("10.9.0.1"), DestIP: netip.MustParseAddr("10.0.1.2"), DestPort: 9090}
	// plain: no identity.
	plain = Conn{SourceIP: netip.MustParseAddr("10.0.0.1"), DestIP: netip.MustParseAddr("10.0.1.1"), DestPort: 8080}
	// v6: IPv6 mTLS connection.
	v6 = Conn{SourceIdentity: id("a", "client"), SourceIP: netip.MustParseAddr("fd00::1"), DestIP: netip.MustParseAddr("fd00:1::1"), DestPort: 8080}
)

// TestMatchFields checks each Match field, positive and not_ form, against
// the four connections: want[i] is the match result for
// {mtls, other, plain, v6}.
func TestMatchFields(t *testing.T) {
	conns := []Conn{mtls, other, plain, v6}
	cases := []struct {
		name string
		m    *security.Match
		want [4]bool
	}{
		{"namespaces exact", &security.Match{Namespaces: []*security.StringMatch{exact("a")}}, [4]bool{true, false, false, true}},
		{"not_namespaces exact", &security.Match{NotNamespaces: []*security.StringMatch{exact("a")}}, [4]bool{false, true, true, false}},
		{"namespaces OR", &security.Match{Namespaces: []*security.StringMatch{exact("x"), exact("b")}}, [4]bool{false, true, false, false}},
		{"namespaces prefix empty never matches plaintext", &security.Match{Namespaces: []*security.StringMatch{prefix("")}}, [4]bool{true, true, false, true}},
		{"namespaces presence", &security.Match{Namespaces: []*security.StringMatch{presence()}}, [4]bool{true, true, false, true}},
		{"principals exact (no scheme)", &security.Match{Principals: []*security.StringMatch{exact("cluster.local/ns/a/sa/client")}}, [4]bool{true, false, false, true}},
		{"principals exact with scheme never matches", &security.Match{Principals: []*security.StringMatch{exact("spiffe://cluster.local/ns/a/sa/client")}}, [4]bool{false, false, false, false}},
		{"principals prefix", &security.Match{Principals: []*security.StringMatch{prefix("cluster.local/ns/b/")}}, [4]bool{false, true, false, false}},
		{"principals suffix", &security.Match{Principals: []*security.StringMatch{suffix("/sa/client")}}, [4]bool{true, false, false, true}},
		{"principals presence", &security.Match{Principals: []*security.StringMatch{presence()}}, [4]bool{true, true, false, true}},
		{"not_principals presence = plaintext only", &security.Match{NotPrincipals: []*security.StringMatch{presence()}}, [4]bool{false, false, true, false}},
		{"not_principals exact", &security.Match{NotPrincipals: []*security.StringMatch{exact("cluster.local/ns/a/sa/client")}}, [4]bool{false, true, true, false}},
		{"principals with no match type", &security.Match{Principals: []*security.StringMatch{{}}}, [4]bool{false, false, false, false}},
		{"service_accounts", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "a", ServiceAccount: "client"}}}, [4]bool{true, false, false, true}},
		{"not_service_accounts", &security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "a", ServiceAccount: "client"}}}, [4]bool{false, true, true, false}},
		{"service_accounts wrong namespace", &security.Match{ServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "b", ServiceAccount: "client"}}}, [4]bool{false, false, false, false}},
		{"source_ips /32", &security.Match{SourceIps: []*security.Address{cidr("10.0.0.1/32")}}, [4]bool{true, false, true, false}},
		{"source_ips /8", &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/8")}}, [4]bool{true, true, true, false}},
		{"source_ips /16 OR v6", &security.Match{SourceIps: []*security.Address{cidr("10.9.0.0/16"), cidr("fd00::/64")}}, [4]bool{false, true, false, true}},
		{"not_source_ips", &security.Match{NotSourceIps: []*security.Address{cidr("10.0.0.0/24")}}, [4]bool{false, true, false, true}},
		{"source_ips v4-mapped v6 address", &security.Match{SourceIps: []*security.Address{{Address: netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(), Length: 128}}}, [4]bool{true, false, true, false}},
		{"source_ips /0 v4 only", &security.Match{SourceIps: []*security.Address{cidr("0.0.0.0/0")}}, [4]bool{true, true, true, false}},
		{"source_ips bad length never matches", &security.Match{SourceIps: []*security.Address{{Address: []byte{10, 0, 0, 1}, Length: 33}}}, [4]bool{false, false, false, false}},
		{"destination_ips", &security.Match{DestinationIps: []*security.Address{cidr("10.0.1.1/32")}}, [4]bool{true, false, true, false}},
		{"destination_ips v6", &security.Match{DestinationIps: []*security.Address{cidr("fd00:1::/32")}}, [4]bool{false, false, false, true}},
		{"not_destination_ips", &security.Match{NotDestinationIps: []*security.Address{cidr("10.0.1.0/31")}}, [4]bool{false, true, false, true}},
		{"destination_ports", &security.Match{DestinationPorts: []uint32{9090, 1}}, [4]bool{false, true, false, false}},
		{"not_destination_ports", &security.Match{NotDestinationPorts: []uint32{8080}}, [4]bool{false, true, false, false}},
		{"fields ANDed", &security.Match{Namespaces: []*security.StringMatch{exact("a")}, DestinationPorts: []uint32{8080}, SourceIps: []*security.Address{cidr("10.0.0.0/8")}}, [4]bool{true, false, false, false}},
		{"positive and not_ of one field", &security.Match{SourceIps: []*security.Address{cidr("10.0.0.0/8")}, NotSourceIps: []*security.Address{cidr("10.9.0.0/16")}}, [4]bool{true, false, true, false}},
	}
	for _, c := range cases {
		p := allow("p", one(c.m))
		for i, conn := range conns {
			if got := Matches(p, conn); got != c.want[i] {
				t.Errorf("%s: conn %d (%v): got %v, want %v", c.name, i, conn.SourceIdentity, got, c.want[i])
			}
		}
	}
}

// TestStructure checks the OR/AND nesting and the empty forms.
func TestStructure(t *testing.T) {
	nsA := &security.Match{Namespaces: []*security.StringMatch{exact("a")}}
	nsB := &security.Match{Namespaces: []*security.StringMatch{exact("b")}}
	port8080 := &security.Match{DestinationPorts: []uint32{8080}}
	empty := &security.Match{}
	conns := []Conn{mtls, other, plain}
	cases := []struct {
		name string
		p    *security.Authorization
		want [3]bool // mtls, other, plain
	}{
		{"ALLOW no groups matches nothing", allow("p"), [3]bool{false, false, false}},
		{"DENY no groups matches nothing", deny("p"), [3]bool{false, false, false}},
		{"group with no rules matches all", allow("p", &security.Group{}), [3]bool{true, true, true}},
		{"rules with no matches match all", allow("p", group([]*security.Match{})), [3]bool{true, true, true}},
		{"matches ORed", allow("p", group([]*security.Match{nsA, nsB})), [3]bool{true, true, false}},
		{"rules ANDed", allow("p", group([]*security.Match{nsA, nsB}, []*security.Match{port8080})), [3]bool{true, false, false}},
		{"groups ORed", allow("p", one(nsB), one(port8080)), [3]bool{true, true, true}},
		{"ALLOW empty match matches nothing", allow("p", one(empty)), [3]bool{false, false, false}},
		{"ALLOW empty match beside a real one", allow("p", group([]*security.Match{empty, nsB})), [3]bool{false, true, false}},
		{"DENY empty match matches all (L7 stripped)", deny("p", one(empty)), [3]bool{true, true, true}},
		{"DENY empty match ANDed with port", deny("p", group([]*security.Match{empty}, []*security.Match{port8080})), [3]bool{true, false, true}},
		{"unknown action treated as DENY for empty match", pol("p", security.Action(7), one(empty)), [3]bool{true, true, true}},
	}
	for _, c := range cases {
		for i, conn := range conns {
			if got := Matches(c.p, conn); got != c.want[i] {
				t.Errorf("%s: conn %d: got %v, want %v", c.name, i, got, c.want[i])
			}
		}
	}
}

func TestEvaluate(t *testing.T) {
	matchAll := &security.Group{}
	fromA := one(&security.Match{Namespaces: []*security.StringMatch{exact("a")}})
	fromB := one(&security.Match{Namespaces: []*security.StringMatch{exact("b")}})
	cases := []struct {
		name    string
		ps      []*security.Authorization
		conn    Conn
		allow   bool
		matched string
		audits  []string
	}{
		{"no policies", nil, mtls, true, "", nil},
		{"nil policy ignored", []*security.Authorization{nil}, mtls, true, "", nil},
		{"allow-nothing (spec: {})", []*security.Authorization{allow("nothing")}, mtls, false, "", nil},
		{"allow-all (rules: [{}])", []*security.Authorization{allow("all", matchAll)}, plain, true, "ns/all", nil},
		{"ALLOW matches", []*security.Authorization{allow("a", fromA)}, mtls, true, "ns/a", nil},
		{"ALLOW does not match", []*security.Authorization{allow("a", fromA)}, other, false, "", nil},
		{"ALLOW plaintext cannot match namespace", []*security.Authorization{allow("a", fromA)}, plain, false, "", nil},
		{"second ALLOW matches", []*security.Authorization{allow("a", fromA), allow("b", fromB)}, other, true, "ns/b", nil},
		{"DENY matches", []*security.Authorization{deny("d", fromA)}, mtls, false, "ns/d", nil},
		{"DENY does not match, no ALLOW", []*security.Authorization{deny("d", fromA)}, other, true, "", nil},
		{"DENY wins over matching ALLOW", []*security.Authorization{allow("all", matchAll), deny("d", fromA)}, mtls, false, "ns/d", nil},
		{"DENY misses, ALLOW matches", []*security.Authorization{allow("all", matchAll), deny("d", fromA)}, other, true, "ns/all", nil},
		{"DENY misses, ALLOW misses", []*security.Authorization{allow("b", fromB), deny("d", fromA)}, plain, false, "", nil},
		{"first matching DENY reported", []*security.Authorization{deny("d1", matchAll), deny("d2", matchAll)}, mtls, false, "ns/d1", nil},
		{"dry-run DENY audits, no effect", []*security.Authorization{dry(deny("d", fromA))}, mtls, true, "", []string{"ns/d"}},
		{"dry-run ALLOW does not select", []*security.Authorization{dry(allow("a", fromB))}, mtls, true, "", nil},
		{"dry-run ALLOW audit beside deny", []*security.Authorization{dry(allow("a", fromA)), deny("d", matchAll)}, mtls, false, "ns/d", []string{"ns/a"}},
		{"audits with enforced ALLOW miss", []*security.Authorization{dry(deny("x", matchAll)), dry(deny("y", fromB)), allow("b", fromB)}, mtls, false, "", []string{"ns/x"}},
		{"STRICT denies plaintext", []*security.Authorization{StrictPolicy(security.Scope_WORKLOAD_SELECTOR, "istio-system")}, plain, false, "istio-system/istio_converted_static_strict", nil},
		{"STRICT allows mTLS", []*security.Authorization{StrictPolicy(security.Scope_WORKLOAD_SELECTOR, "istio-system")}, mtls, true, "", nil},
		{"STRICT plus ALLOW", []*security.Authorization{StrictPolicy(security.Scope_NAMESPACE, "ns"), allow("a", fromA)}, mtls, true, "ns/a", nil},
		{"unknown action fails safe", []*security.Authorization{pol("u", security.Action(9), matchAll)}, mtls, false, "ns/u", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Evaluate(c.ps, c.conn)
			if got.Allow != c.allow || got.Matched != c.matched || !slices.Equal(got.Audits, c.audits) {
				t.Fatalf("got %+v, want allow=%v matched=%q audits=%v", got, c.allow, c.matched, c.audits)
			}
			if got.Reason == "" {
				t.Fatal("empty reason")
			}
		})
	}
}

func TestAddrPrefix(t *testing.T) {
	good := map[string]*security.Address{
		"10.0.0.0/8":     cidr("10.1.2.3/8"),
		"fd00::/16":      cidr("fd00::1/16"),
		"10.0.0.1/32":    {Address: netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(), Length: 128},
		"0.0.0.0/0":      {Address: []byte{1, 2, 3, 4}},
		"192.168.0.0/16": {Address: netip.MustParseAddr("::ffff:192.168.9.9").AsSlice(), Length: 112},
	}
	for want, a := range good {
		p, err := AddrPrefix(a)
		if err != nil || p.String() != want {
			t.Errorf("AddrPrefix(%v) = %v, %v; want %s", a, p, err, want)
		}
	}
	for _, a := range []*security.Address{{}, {Address: []byte{1, 2, 3}}, {Address: []byte{1, 2, 3, 4}, Length: 33}, {Address: make([]byte, 16), Length: 129}} {
		if p, err := AddrPrefix(a); err == nil {
			t.Errorf("AddrPrefix(%v) = %v, want error", a, p)
		}
	}
}
