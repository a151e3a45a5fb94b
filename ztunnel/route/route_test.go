package route

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/policy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

const svcKey = "default/echo.default.svc.cluster.local"

func b(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func pod(uid, addr string, hbone bool, mut ...func(*workloadapi.Workload)) *workloadapi.Workload {
	w := &workloadapi.Workload{Uid: uid, Name: uid, Namespace: "default", ServiceAccount: uid, Addresses: [][]byte{b(addr)}, Node: "node-a"}
	if hbone {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	for _, m := range mut {
		m(w)
	}
	return w
}

// endpointOf makes w an endpoint of the echo service with the given
// port mapping (nil: inherit the service's).
func endpointOf(ports ...*workloadapi.Port) func(*workloadapi.Workload) {
	return func(w *workloadapi.Workload) {
		w.Services = map[string]*workloadapi.PortList{svcKey: {Ports: ports}}
	}
}

func unhealthy(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY }

func echoService(mut ...func(*workloadapi.Service)) *workloadapi.Service {
	s := &workloadapi.Service{
		Name: "echo", Namespace: "default", Hostname: "echo.default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: b("10.96.0.10")}, {Address: b("fd00:96::10")}},
		Ports: []*workloadapi.Port{
			{ServicePort: 80, TargetPort: 8080},
			{ServicePort: 9000}, // target 0: same as service port
			{ServicePort: 443, TargetPort: 8443},
		},
	}
	for _, m := range mut {
		m(s)
	}
	return s
}

func gw(addr string, port uint32) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: b(addr)}},
		HboneMtlsPort: port,
	}
}

func view(t *testing.T, snap state.Snapshot) *state.View {
	t.Helper()
	s := state.New(state.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.Set(snap); err != nil {
		t.Fatal(err)
	}
	return s.Load()
}

func id(sa string) spiffe.ID {
	return spiffe.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: sa}
}

func fixed(i int) Picker { return func(int) int { return i } }

func TestOutbound(t *testing.T) {
	client := pod("client", "10.0.1.1", true)
	cases := []struct {
		name     string
		snap     state.Snapshot
		dst      string
		pick     Picker
		kind     Kind
		target   string
		auth     string
		destID   string // service account of DestIdentity, "" for zero
		workload string
		err      error
		errText  string
	}{
		{
			name: "VIP to HBONE endpoint, port translated",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf())}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:80", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:8080", destID: "e1", workload: "e1",
		},
		{
			name: "target port 0 means the service port",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf())}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:9000", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:9000", destID: "e1", workload: "e1",
		},
		{
			name: "endpoint's own port mapping wins",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf(&workloadapi.Port{ServicePort: 80, TargetPort: 7070}))}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:80", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:7070", destID: "e1", workload: "e1",
		},
		{
			name: "endpoint mapping with target 0 falls back to the service's",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf(&workloadapi.Port{ServicePort: 80}))}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:80", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:8080", destID: "e1", workload: "e1",
		},
		{
			name: "endpoint not exposing the port is skipped",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{
				pod("e1", "10.0.1.6", true, endpointOf(&workloadapi.Port{ServicePort: 443, TargetPort: 8443})),
				pod("e2", "10.0.1.7", true, endpointOf(&workloadapi.Port{ServicePort: 80, TargetPort: 8080})),
			}, Services: []*workloadapi.Service{echoService()}},
			dst: "10.96.0.10:80", pick: fixed(0), kind: HBONE, target: "10.0.1.7:15008", auth: "10.0.1.7:8080", destID: "e2", workload: "e2",
		},
		{
			name: "VIP to plaintext endpoint",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", false, endpointOf())}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:443", kind: Passthrough, target: "10.0.1.6:8443", workload: "e1",
		},
		{
			name: "IPv6 VIP picks the endpoint's IPv6 address",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf(), func(w *workloadapi.Workload) { w.Addresses = append(w.Addresses, b("fd00::6")) })}, Services: []*workloadapi.Service{echoService()}},
			dst:  "[fd00:96::10]:80", kind: HBONE, target: "[fd00::6]:15008", auth: "[fd00::6]:8080", destID: "e1", workload: "e1",
		},
		{
			name: "unhealthy skipped",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{
				pod("e1", "10.0.1.6", true, endpointOf(), unhealthy),
				pod("e2", "10.0.1.7", true, endpointOf()),
			}, Services: []*workloadapi.Service{echoService()}},
			dst: "10.96.0.10:80", pick: fixed(0), kind: HBONE, target: "10.0.1.7:15008", auth: "10.0.1.7:8080", destID: "e2", workload: "e2",
		},
		{
			name: "health policy ALLOW_ALL keeps unhealthy",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf(), unhealthy)}, Services: []*workloadapi.Service{echoService(func(s *workloadapi.Service) {
				s.LoadBalancing = &workloadapi.LoadBalancing{HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}
			})}},
			dst: "10.96.0.10:80", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:8080", destID: "e1", workload: "e1",
		},
		{
			name: "no healthy endpoints",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf(), unhealthy)}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:80", err: ErrNoHealthyEndpoints, errText: "no healthy endpoints for service default/echo.default.svc.cluster.local port 80",
		},
		{
			name: "no endpoints at all",
			snap: state.Snapshot{Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:80", err: ErrNoHealthyEndpoints, errText: "port 80",
		},
		{
			name: "endpoint on another network skipped",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf(), func(w *workloadapi.Workload) { w.Network = "remote" })}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:80", err: ErrNoHealthyEndpoints,
		},
		{
			name: "port not on the service",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf())}, Services: []*workloadapi.Service{echoService()}},
			dst:  "10.96.0.10:81", err: ErrNoServicePort, errText: "service default/echo.default.svc.cluster.local has no port 81",
		},
		{
			name: "load balancing PASSTHROUGH keeps the VIP",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf())}, Services: []*workloadapi.Service{echoService(func(s *workloadapi.Service) {
				s.LoadBalancing = &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_PASSTHROUGH}
			})}},
			dst: "10.96.0.10:80", kind: Passthrough, target: "10.96.0.10:80",
		},
		{
			name: "direct to HBONE workload",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true)}},
			dst:  "10.0.1.6:8080", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:8080", destID: "e1", workload: "e1",
		},
		{
			name: "direct via IPv4-mapped address",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true)}},
			dst:  "[::ffff:10.0.1.6]:8080", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:8080", destID: "e1", workload: "e1",
		},
		{
			name: "direct to unhealthy workload still routes",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, unhealthy)}},
			dst:  "10.0.1.6:8080", kind: HBONE, target: "10.0.1.6:15008", auth: "10.0.1.6:8080", destID: "e1", workload: "e1",
		},
		{
			name: "direct to plaintext workload",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("legacy", "10.0.2.9", false)}},
			dst:  "10.0.2.9:5432", kind: Passthrough, target: "10.0.2.9:5432", workload: "legacy",
		},
		{
			name: "unknown destination passes through",
			snap: state.Snapshot{},
			dst:  "93.184.216.34:443", kind: Passthrough, target: "93.184.216.34:443",
		},
		{
			name: "deterministic pick among three",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{
				pod("e3", "10.0.1.8", true, endpointOf()),
				pod("e1", "10.0.1.6", true, endpointOf()),
				pod("e2", "10.0.1.7", true, endpointOf()),
			}, Services: []*workloadapi.Service{echoService()}},
			dst: "10.96.0.10:80", pick: fixed(2), kind: HBONE, target: "10.0.1.8:15008", auth: "10.0.1.8:8080", destID: "e3", workload: "e3",
		},
		{
			name: "out-of-range pick wraps",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{
				pod("e1", "10.0.1.6", true, endpointOf()),
				pod("e2", "10.0.1.7", true, endpointOf()),
			}, Services: []*workloadapi.Service{echoService()}},
			dst: "10.96.0.10:80", pick: fixed(-1), kind: HBONE, target: "10.0.1.7:15008", auth: "10.0.1.7:8080", destID: "e2", workload: "e2",
		},
		{
			name: "service waypoint",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, endpointOf())}, Services: []*workloadapi.Service{echoService(func(s *workloadapi.Service) { s.Waypoint = gw("10.0.3.1", 0) })}},
			dst:  "10.96.0.10:80", kind: Waypoint, target: "10.0.3.1:15008", auth: "10.96.0.10:80",
		},
		{
			name: "workload waypoint with its port",
			snap: state.Snapshot{Workloads: []*workloadapi.Workload{pod("e1", "10.0.1.6", true, func(w *workloadapi.Workload) { w.Waypoint = gw("10.0.3.1", 15009) })}},
			dst:  "10.0.1.6:8080", kind: Waypoint, target: "10.0.3.1:15009", auth: "10.0.1.6:8080",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap := c.snap
			snap.Workloads = append([]*workloadapi.Workload{client}, snap.Workloads...)
			v := view(t, snap)
			d, err := Outbound(v, v.WorkloadByUID("client"), ap(c.dst), c.pick)
			if c.err != nil {
				if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.errText) {
					t.Fatalf("error %v, want %v containing %q", err, c.err, c.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Kind != c.kind || d.Target.String() != orInvalid(c.target) || d.Authority.String() != orInvalid(c.auth) {
				t.Fatalf("got %v target %v authority %v; want %v %s %s", d.Kind, d.Target, d.Authority, c.kind, c.target, c.auth)
			}
			if d.SourceIdentity != id("client") {
				t.Fatalf("source identity %v", d.SourceIdentity)
			}
			wantID := spiffe.ID{}
			if c.destID != "" {
				wantID = id(c.destID)
			}
			if d.DestIdentity != wantID {
				t.Fatalf("dest identity %v, want %v", d.DestIdentity, wantID)
			}
			if d.Workload.GetUid() != c.workload {
				t.Fatalf("workload %q, want %q", d.Workload.GetUid(), c.workload)
			}
			if (c.kind == Waypoint) != (d.Waypoint != nil) {
				t.Fatalf("waypoint %v", d.Waypoint)
			}
		})
	}
}

func orInvalid(s string) string {
	if s == "" {
		return netip.AddrPort{}.String()
	}
	return s
}

func TestOutboundPickerSeesAllCandidates(t *testing.T) {
	v := view(t, state.Snapshot{
		Workloads: []*workloadapi.Workload{
			pod("client", "10.0.1.1", true),
			pod("e1", "10.0.1.6", true, endpointOf()),
			pod("e2", "10.0.1.7", true, endpointOf(), unhealthy),
			pod("e3", "10.0.1.8", true, endpointOf()),
		},
		Services: []*workloadapi.Service{echoService()},
	})
	seen := map[string]bool{}
	for i := range 2 {
		var n int
		d, err := Outbound(v, v.WorkloadByUID("client"), ap("10.96.0.10:80"), func(k int) int { n = k; return i })
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("picker offered %d candidates, want 2 healthy", n)
		}
		seen[d.Workload.GetUid()] = true
	}
	if !seen["e1"] || !seen["e3"] {
		t.Fatalf("picked %v", seen)
	}
	// nil picker: random, always a healthy one.
	for range 20 {
		d, err := Outbound(v, v.WorkloadByUID("client"), ap("10.96.0.10:80"), nil)
		if err != nil || d.Workload.GetUid() == "e2" {
			t.Fatalf("random pick %v, %v", d.Workload.GetUid(), err)
		}
	}
}

func TestOutboundFromWaypointSkipsIt(t *testing.T) {
	wp := pod("waypoint", "10.0.3.1", true)
	v := view(t, state.Snapshot{
		Workloads: []*workloadapi.Workload{wp, pod("e1", "10.0.1.6", true, endpointOf())},
		Services:  []*workloadapi.Service{echoService(func(s *workloadapi.Service) { s.Waypoint = gw("10.0.3.1", 0) })},
	})
	d, err := Outbound(v, v.WorkloadByUID("waypoint"), ap("10.96.0.10:80"), nil)
	if err != nil || d.Kind != HBONE || d.Workload.GetUid() != "e1" {
		t.Fatalf("from the waypoint: %+v, %v", d, err)
	}
	// By hostname: the waypoint pod backs the waypoint service.
	byName := &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: "wp.default.svc.cluster.local"}}}
	wp2 := pod("waypoint", "10.0.3.1", true, func(w *workloadapi.Workload) {
		w.Services = map[string]*workloadapi.PortList{"default/wp.default.svc.cluster.local": {}}
	})
	v = view(t, state.Snapshot{
		Workloads: []*workloadapi.Workload{wp2, pod("client", "10.0.1.1", true), pod("e1", "10.0.1.6", true, endpointOf())},
		Services:  []*workloadapi.Service{echoService(func(s *workloadapi.Service) { s.Waypoint = byName })},
	})
	if d, _ := Outbound(v, v.WorkloadByUID("waypoint"), ap("10.96.0.10:80"), nil); d.Kind != HBONE {
		t.Fatalf("from the waypoint by hostname: %v", d.Kind)
	}
	d, err = Outbound(v, v.WorkloadByUID("client"), ap("10.96.0.10:80"), nil)
	if err != nil || d.Kind != Waypoint || d.Target.IsValid() || d.Waypoint.GetHostname().GetHostname() != "wp.default.svc.cluster.local" {
		t.Fatalf("to a hostname waypoint: %+v, %v", d, err)
	}
}

func TestOutboundUnknownSource(t *testing.T) {
	if _, err := Outbound(view(t, state.Snapshot{}), nil, ap("10.0.0.1:80"), nil); !errors.Is(err, ErrUnknownSource) {
		t.Fatalf("error %v", err)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Passthrough: "passthrough", HBONE: "hbone", Waypoint: "waypoint", 0: "Kind(0)"} {
		if k.String() != want {
			t.Errorf("%d: %s", k, k)
		}
	}
}

func TestInbound(t *testing.T) {
	allowClient := &security.Authorization{
		Name: "allow-client", Namespace: "default", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_ALLOW,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/default/sa/client"}}},
		}}}}}},
	}
	denyPort := &security.Authorization{
		Name: "deny-admin", Namespace: "default", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{DestinationPorts: []uint32{9901}}}}}}},
	}
	strict := policy.StrictPolicy(security.Scope_WORKLOAD_SELECTOR, "istio-system")
	echo := pod("echo", "10.0.1.6", true, func(w *workloadapi.Workload) {
		w.AuthorizationPolicies = []string{"default/allow-client", "istio-system/" + policy.StrictPolicyName}
	})
	open := pod("open", "10.0.1.7", true)
	remote := pod("remote", "10.0.9.9", true, func(w *workloadapi.Workload) { w.Node = "node-b" })
	v := view(t, state.Snapshot{
		Workloads: []*workloadapi.Workload{echo, open, remote},
		Policies:  []*security.Authorization{allowClient, denyPort, strict},
	})
	client := id("client")
	stranger := id("stranger")
	cases := []struct {
		name    string
		c       InboundConn
		allow   bool
		matched string
		err     error
	}{
		{"allowed client", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.1.6"), DstPort: 8080, Peer: &client}, true, "default/allow-client", nil},
		{"other identity not allowed", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.1.6"), DstPort: 8080, Peer: &stranger}, false, "", nil},
		{"plaintext denied by STRICT", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.1.6"), DstPort: 8080}, false, "istio-system/" + policy.StrictPolicyName, nil},
		{"namespace DENY wins", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.1.6"), DstPort: 9901, Peer: &client}, false, "default/deny-admin", nil},
		{"no ALLOW applies", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.1.7"), DstPort: 8080}, true, "", nil},
		{"namespace DENY on open", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.1.7"), DstPort: 9901}, false, "default/deny-admin", nil},
		{"node check skipped", InboundConn{DstIP: netip.MustParseAddr("10.0.9.9"), DstPort: 80}, true, "", nil},
		{"not on this node", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.9.9"), DstPort: 80}, false, "", ErrNotLocal},
		{"unknown destination", InboundConn{Node: "node-a", DstIP: netip.MustParseAddr("10.0.0.99"), DstPort: 80}, false, "", ErrUnknownDestination},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := Inbound(v, c.c)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("error %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Allow != c.allow || d.Matched != c.matched || d.Reason == "" || d.Workload == nil {
				t.Fatalf("got %+v, want allow=%v matched=%q", d.Result, c.allow, c.matched)
			}
		})
	}
}
