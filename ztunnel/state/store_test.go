package state

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/ztunnel/policy"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newStore() *Store { return New(Options{Logger: quiet()}) }

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func wl(uid, ns, addr string) *workloadapi.Workload {
	return &workloadapi.Workload{Uid: uid, Name: uid, Namespace: ns, Addresses: [][]byte{ip(addr)}}
}

func svc(ns, host, vip string, port uint32) *workloadapi.Service {
	return &workloadapi.Service{
		Name: host, Namespace: ns, Hostname: host,
		Addresses: []*workloadapi.NetworkAddress{{Address: ip(vip)}},
		Ports:     []*workloadapi.Port{{ServicePort: port}},
	}
}

func authz(ns, name string, scope security.Scope) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: ns, Scope: scope, Action: security.Action_ALLOW, Groups: []*security.Group{{}}}
}

func policyKeys(ps []*security.Authorization) []string {
	var out []string
	for _, p := range ps {
		out = append(out, PolicyKey(p))
	}
	return out
}

func TestValidation(t *testing.T) {
	bad := []struct {
		name  string
		snap  Snapshot
		field string // expected in the error, with the resource name
		res   string
	}{
		{"empty uid", Snapshot{Workloads: []*workloadapi.Workload{wl("", "ns", "10.0.0.1")}}, "field uid", `workload "#1"`},
		{"bad address", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{{1, 2, 3}}}}}, "field addresses[0]: 3 bytes", `workload "u"`},
		{"no address", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns"}}}, "field addresses", `"u"`},
		{"bad namespace", Snapshot{Workloads: []*workloadapi.Workload{wl("u", "NS", "10.0.0.1")}}, "field namespace", `"u"`},
		{"no namespace", Snapshot{Workloads: []*workloadapi.Workload{wl("u", "", "10.0.0.1")}}, "field namespace", `"u"`},
		{"bad sa", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, ServiceAccount: "Bad_SA"}}}, "field service_account", `"u"`},
		{"bad td", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, TrustDomain: "TD"}}}, "field trust_domain", `"u"`},
		{"bad tunnel", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, TunnelProtocol: 9}}}, "field tunnel_protocol", `"u"`},
		{"bad service key", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, Services: map[string]*workloadapi.PortList{"nohost": {}}}}}, "field services[nohost]", `"u"`},
		{"bad endpoint port", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, Services: map[string]*workloadapi.PortList{"ns/h": {Ports: []*workloadapi.Port{{ServicePort: 70000}}}}}}}, "field services[ns/h].ports[0].service_port", `"u"`},
		{"bad policy ref", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, AuthorizationPolicies: []string{"x"}}}}, "field authorization_policies[0]", `"u"`},
		{"bad waypoint", Snapshot{Workloads: []*workloadapi.Workload{{Uid: "u", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, Waypoint: &workloadapi.GatewayAddress{}}}}, "field waypoint", `"u"`},
		{"duplicate uid", Snapshot{Workloads: []*workloadapi.Workload{wl("u", "ns", "10.0.0.1"), wl("u", "ns", "10.0.0.2")}}, "duplicate uid", `"u"`},
		{"service port 0", Snapshot{Services: []*workloadapi.Service{svc("ns", "h", "10.96.0.1", 0)}}, "field ports[0].service_port", `service "ns/h"`},
		{"service target port", Snapshot{Services: []*workloadapi.Service{{Namespace: "ns", Hostname: "h", Ports: []*workloadapi.Port{{ServicePort: 1, TargetPort: 65536}}}}}, "field ports[0].target_port", `"ns/h"`},
		{"service address", Snapshot{Services: []*workloadapi.Service{{Namespace: "ns", Hostname: "h", Addresses: []*workloadapi.NetworkAddress{{Address: []byte{1}}}}}}, "field addresses[0].address", `"ns/h"`},
		{"service no hostname", Snapshot{Services: []*workloadapi.Service{{Namespace: "ns"}}}, "field hostname", `service "ns"`},
		{"policy no name", Snapshot{Policies: []*security.Authorization{authz("ns", "", security.Scope_NAMESPACE)}}, "field name", `policy "ns"`},
		{"policy GLOBAL outside root", Snapshot{Policies: []*security.Authorization{authz("ns", "p", security.Scope_GLOBAL)}}, "field scope: GLOBAL outside the root namespace", `"ns/p"`},
		{"policy action", Snapshot{Policies: []*security.Authorization{{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: 3}}}, "field action", `"ns/p"`},
		{"policy ip", Snapshot{Policies: []*security.Authorization{{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{SourceIps: []*security.Address{{Address: []byte{1, 2, 3, 4}, Length: 40}}}}}}}}}}}, "field groups[0].rules[0].matches[0].source_ips[0]", `"ns/p"`},
		{"policy port", Snapshot{Policies: []*security.Authorization{{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{NotDestinationPorts: []uint32{0}}}}}}}}}}, "field groups[0].rules[0].matches[0].not_destination_ports[0]", `"ns/p"`},
		{"policy string match", Snapshot{Policies: []*security.Authorization{{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{{}}}}}}}}}}}, "principals[0]: no match type", `"ns/p"`},
	}
	good := Snapshot{
		Workloads: []*workloadapi.Workload{wl("good", "ns", "10.1.0.1")},
		Services:  []*workloadapi.Service{svc("ns", "good", "10.96.1.1", 80)},
		Policies:  []*security.Authorization{authz("ns", "good", security.Scope_NAMESPACE)},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			s := newStore()
			snap := c.snap
			snap.Workloads = append(slices.Clone(good.Workloads), snap.Workloads...)
			snap.Services = append(slices.Clone(good.Services), snap.Services...)
			snap.Policies = append(slices.Clone(good.Policies), snap.Policies...)
			if err := s.Validate(snap); err == nil {
				t.Fatal("Validate accepted")
			}
			err := s.Set(snap)
			var re *ResourceError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &re) {
				t.Fatalf("Set error %v, want a *ResourceError", err)
			}
			if !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), c.res) {
				t.Fatalf("error %q does not name %s and %q", err, c.res, c.field)
			}
			v := s.Load()
			if v.WorkloadByUID("good") == nil || v.ServiceByName("ns", "good") == nil || v.Policy("ns/good") == nil {
				t.Fatal("the valid resources of the batch were not applied")
			}
		})
	}
}

func TestValidationReportsAll(t *testing.T) {
	s := newStore()
	err := s.Set(Snapshot{Workloads: []*workloadapi.Workload{wl("", "ns", "10.0.0.1"), {Uid: "b", Namespace: "ns", Addresses: [][]byte{{1}}}}})
	if n := strings.Count(err.Error(), ErrInvalid.Error()); n != 2 {
		t.Fatalf("want 2 errors, got %d: %v", n, err)
	}
}

func TestDefaultsAndLookups(t *testing.T) {
	s := New(Options{Logger: quiet(), TrustDomain: "example.org"})
	a := wl("a", "ns", "10.0.0.1")
	a.Addresses = append(a.Addresses, netip.MustParseAddr("fd00::1").AsSlice())
	a.Services = map[string]*workloadapi.PortList{"ns/svc": {}}
	b := wl("b", "ns", "10.0.0.2")
	b.Network = "net2"
	b.Services = map[string]*workloadapi.PortList{"ns/svc": {}}
	host := wl("h", "ns", "10.0.0.3")
	host.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	cidrSvc := &workloadapi.Service{Namespace: "ns", Hostname: "range", Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.200.0.0"), Length: ptr(uint32(16))}}}
	if err := s.Set(Snapshot{Workloads: []*workloadapi.Workload{a, b, host}, Services: []*workloadapi.Service{svc("ns", "svc", "10.96.0.1", 80), cidrSvc}}); err != nil {
		t.Fatal(err)
	}
	v := s.Load()
	if id := Identity(v.WorkloadByUID("a")); id.String() != "spiffe://example.org/ns/ns/sa/default" {
		t.Fatalf("identity %s", id)
	}
	if v.WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")) != a ||
		v.WorkloadByAddr("", netip.MustParseAddr("::ffff:10.0.0.1")) != a ||
		v.WorkloadByAddr("", netip.MustParseAddr("fd00::1")) != a {
		t.Fatal("lookup of a by its addresses")
	}
	if v.WorkloadByAddr("", netip.MustParseAddr("10.0.0.2")) != nil || v.WorkloadByAddr("net2", netip.MustParseAddr("10.0.0.2")) != b {
		t.Fatal("network is part of the address key")
	}
	if v.WorkloadByAddr("", netip.MustParseAddr("10.0.0.3")) != nil {
		t.Fatal("HOST_NETWORK workload looked up by IP")
	}
	if v.ServiceByAddr("", netip.MustParseAddr("10.96.0.1")) == nil || v.ServiceByAddr("x", netip.MustParseAddr("10.96.0.1")) != nil {
		t.Fatal("service VIP lookup")
	}
	if v.ServiceByAddr("", netip.MustParseAddr("10.200.3.4")) != cidrSvc || v.ServiceByAddr("", netip.MustParseAddr("10.201.0.1")) != nil {
		t.Fatal("service CIDR lookup")
	}
	if eps := v.Endpoints("ns", "svc"); len(eps) != 2 || eps[0] != a || eps[1] != b {
		t.Fatalf("endpoints %v", eps)
	}
	if len(v.Workloads()) != 3 || len(v.Services()) != 2 {
		t.Fatal("listings")
	}
}

func ptr[T any](v T) *T { return &v }

func TestAddressConflictLatestWins(t *testing.T) {
	s := newStore()
	if err := s.Upsert(Snapshot{Workloads: []*workloadapi.Workload{wl("old", "ns", "10.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Upsert(Snapshot{Workloads: []*workloadapi.Workload{wl("new", "ns", "10.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	if got := s.Load().WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")).GetUid(); got != "new" {
		t.Fatalf("got %s, want the latest write", got)
	}
	s.RemoveAddresses("new")
	if got := s.Load().WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")).GetUid(); got != "old" {
		t.Fatalf("got %s after removing the newer", got)
	}
}

func TestPolicyScopes(t *testing.T) {
	s := newStore()
	w1 := wl("w1", "app", "10.0.0.1")
	w1.AuthorizationPolicies = []string{"app/selected", "istio-system/" + policy.StrictPolicyName, "app/missing", "app/ns-wide"}
	w2 := wl("w2", "other", "10.0.0.2")
	err := s.Set(Snapshot{
		Workloads: []*workloadapi.Workload{w1, w2},
		Policies: []*security.Authorization{
			authz("istio-system", "mesh-b", security.Scope_GLOBAL),
			authz("istio-system", "mesh-a", security.Scope_GLOBAL),
			authz("istio-system", "root-only", security.Scope_NAMESPACE),
			authz("app", "ns-wide", security.Scope_NAMESPACE),
			authz("app", "selected", security.Scope_WORKLOAD_SELECTOR),
			authz("app", "unselected", security.Scope_WORKLOAD_SELECTOR),
			policy.StrictPolicy(security.Scope_WORKLOAD_SELECTOR, "istio-system"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := s.Load()
	want1 := []string{"istio-system/mesh-a", "istio-system/mesh-b", "app/ns-wide", "app/selected", "istio-system/" + policy.StrictPolicyName}
	if got := policyKeys(v.PoliciesFor(w1)); !slices.Equal(got, want1) {
		t.Fatalf("w1: %v, want %v", got, want1)
	}
	want2 := []string{"istio-system/mesh-a", "istio-system/mesh-b"}
	if got := policyKeys(v.PoliciesFor(w2)); !slices.Equal(got, want2) {
		t.Fatalf("w2: %v, want %v", got, want2)
	}
	// A different root namespace.
	s2 := New(Options{Logger: quiet(), RootNamespace: "mesh-root"})
	if err := s2.Set(Snapshot{Policies: []*security.Authorization{authz("mesh-root", "g", security.Scope_GLOBAL)}}); err != nil {
		t.Fatal(err)
	}
	if got := policyKeys(s2.Load().PoliciesFor(w2)); !slices.Equal(got, []string{"mesh-root/g"}) {
		t.Fatalf("custom root: %v", got)
	}
	// Removing a namespace policy changes the set.
	s.RemovePolicies("app/ns-wide")
	if got := policyKeys(s.Load().PoliciesFor(w1)); slices.Contains(got, "app/ns-wide") {
		t.Fatalf("removed policy still applies: %v", got)
	}
}

func TestIncremental(t *testing.T) {
	s := newStore()
	ch, cancel := s.Subscribe()
	defer cancel()
	a := wl("a", "ns", "10.0.0.1")
	a.Services = map[string]*workloadapi.PortList{"ns/svc": {}}
	if err := s.Apply(Delta{Upsert: Snapshot{Workloads: []*workloadapi.Workload{a}, Services: []*workloadapi.Service{svc("ns", "svc", "10.96.0.1", 80)}, Policies: []*security.Authorization{authz("ns", "p", security.Scope_NAMESPACE)}}}); err != nil {
		t.Fatal(err)
	}
	<-ch
	v1 := s.Load()
	if v1.Version() != 1 || len(v1.Endpoints("ns", "svc")) != 1 {
		t.Fatalf("after upsert: version %d, endpoints %d", v1.Version(), len(v1.Endpoints("ns", "svc")))
	}
	// Replace a by name: new address, no longer an endpoint.
	if err := s.Upsert(Snapshot{Workloads: []*workloadapi.Workload{wl("a", "ns", "10.0.0.9")}}); err != nil {
		t.Fatal(err)
	}
	<-ch
	v2 := s.Load()
	if v2.WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")) != nil || v2.WorkloadByAddr("", netip.MustParseAddr("10.0.0.9")) == nil || len(v2.Endpoints("ns", "svc")) != 0 {
		t.Fatal("replace by uid did not reindex")
	}
	// The old view is unchanged (immutable snapshot).
	if v1.WorkloadByAddr("", netip.MustParseAddr("10.0.0.1")) == nil || len(v1.Endpoints("ns", "svc")) != 1 {
		t.Fatal("an old view changed")
	}
	// Remove a service by namespace/hostname and a workload by uid.
	s.RemoveAddresses("ns/svc", "a", "unknown")
	<-ch
	v3 := s.Load()
	if v3.ServiceByName("ns", "svc") != nil || v3.WorkloadByUID("a") != nil || v3.Policy("ns/p") == nil {
		t.Fatal("removal")
	}
	// A bad upsert is rejected and leaves the old resource in place.
	err := s.Upsert(Snapshot{Policies: []*security.Authorization{{Name: "p", Namespace: "ns", Action: 5, Scope: security.Scope_NAMESPACE}}})
	if !errors.Is(err, ErrInvalid) || s.Load().Policy("ns/p").GetAction() != security.Action_ALLOW {
		t.Fatalf("bad upsert: %v", err)
	}
	// Set replaces everything.
	if err := s.Set(Snapshot{}); err != nil {
		t.Fatal(err)
	}
	if v := s.Load(); len(v.Policies()) != 0 || len(v.Workloads()) != 0 {
		t.Fatal("Set did not replace")
	}
}

func TestSubscribeCoalescesAndCancels(t *testing.T) {
	s := newStore()
	ch, cancel := s.Subscribe()
	for i := range 5 {
		_ = s.Upsert(Snapshot{Workloads: []*workloadapi.Workload{wl(fmt.Sprint(i), "ns", "10.0.0.1")}})
	}
	<-ch
	select {
	case <-ch:
		t.Fatal("signals did not coalesce")
	default:
	}
	cancel()
	_ = s.Set(Snapshot{})
	select {
	case <-ch:
		t.Fatal("signal after cancel")
	default:
	}
}

// TestConcurrentConsistency: writers alternate whole states and deltas
// while readers check every View is internally consistent. Run with -race.
func TestConcurrentConsistency(t *testing.T) {
	s := newStore()
	const n = 20
	gen := func(g int) Snapshot {
		var snap Snapshot
		host := fmt.Sprintf("svc-%d", g)
		for i := range n {
			w := wl(fmt.Sprintf("w%d", i), "ns", fmt.Sprintf("10.%d.0.%d", g%200, i+1))
			w.Name = host
			w.Services = map[string]*workloadapi.PortList{"ns/" + host: {}}
			snap.Workloads = append(snap.Workloads, w)
		}
		snap.Services = []*workloadapi.Service{svc("ns", host, "10.96.0.1", 80)}
		return snap
	}
	if err := s.Set(gen(0)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, 4)
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				v := s.Load()
				svc := v.ServiceByAddr("", netip.MustParseAddr("10.96.0.1"))
				if svc == nil {
					errs <- fmt.Errorf("version %d: no service", v.Version())
					return
				}
				eps := v.Endpoints("ns", svc.Hostname)
				if len(eps) != n {
					errs <- fmt.Errorf("version %d: %d endpoints of %s", v.Version(), len(eps), svc.Hostname)
					return
				}
				for _, w := range v.Workloads() {
					if w.Name != svc.Hostname {
						errs <- fmt.Errorf("version %d: workload of %s in a view of %s", v.Version(), w.Name, svc.Hostname)
						return
					}
				}
			}
		})
	}
	for g := 1; g <= 200; g++ {
		var err error
		if g%2 == 0 {
			err = s.Set(gen(g))
		} else {
			d := Delta{Upsert: gen(g), RemoveAddresses: []string{fmt.Sprintf("ns/svc-%d", g-1)}}
			err = s.Apply(d)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if v := s.Load().Version(); v != 201 {
		t.Fatalf("version %d, want 201", v)
	}
}

// TestIncrementalIndexes: the derived indexes follow a resource's changes
// (the differential test covers the same at random).
func TestIncrementalIndexes(t *testing.T) {
	s := newStore()
	at := func(a string) netip.Addr { return netip.MustParseAddr(a) }
	up := func(snap Snapshot) {
		t.Helper()
		if err := s.Upsert(snap); err != nil {
			t.Fatal(err)
		}
	}
	withSvc := func(w *workloadapi.Workload, keys ...string) *workloadapi.Workload {
		w.Services = map[string]*workloadapi.PortList{}
		for _, k := range keys {
			w.Services[k] = &workloadapi.PortList{}
		}
		return w
	}

	// A workload moves to another address and service.
	up(Snapshot{Workloads: []*workloadapi.Workload{withSvc(wl("a", "ns", "10.0.0.1"), "ns/s1")}})
	up(Snapshot{Workloads: []*workloadapi.Workload{withSvc(wl("a", "ns", "10.0.0.2"), "ns/s2")}})
	v := s.Load()
	if v.WorkloadByAddr("", at("10.0.0.1")) != nil || v.WorkloadByAddr("", at("10.0.0.2")).GetUid() != "a" {
		t.Fatal("address change")
	}
	if v.Endpoints("ns", "s1") != nil || len(v.Endpoints("ns", "s2")) != 1 {
		t.Fatal("service change")
	}

	// Address conflict: latest write wins, also when the older one is
	// rewritten; removing the winner exposes the other.
	up(Snapshot{Workloads: []*workloadapi.Workload{wl("b", "ns", "10.0.0.2")}})
	if s.Load().WorkloadByAddr("", at("10.0.0.2")).GetUid() != "b" {
		t.Fatal("latest write does not win")
	}
	up(Snapshot{Workloads: []*workloadapi.Workload{withSvc(wl("a", "ns", "10.0.0.2"), "ns/s2")}})
	if s.Load().WorkloadByAddr("", at("10.0.0.2")).GetUid() != "a" {
		t.Fatal("rewritten workload does not win")
	}
	s.RemoveAddresses("a")
	if v := s.Load(); v.WorkloadByAddr("", at("10.0.0.2")).GetUid() != "b" || v.Endpoints("ns", "s2") != nil {
		t.Fatal("removing the winner, which listed a service")
	}

	// A service changes VIP, becomes a CIDR, and a VIP again.
	up(Snapshot{Services: []*workloadapi.Service{svc("ns", "s", "10.96.0.1", 80)}})
	up(Snapshot{Services: []*workloadapi.Service{svc("ns", "s", "10.96.0.2", 80)}})
	if v := s.Load(); v.ServiceByAddr("", at("10.96.0.1")) != nil || v.ServiceByAddr("", at("10.96.0.2")) == nil {
		t.Fatal("VIP change")
	}
	cidr := svc("ns", "s", "10.200.0.0", 80)
	cidr.Addresses[0].Length = ptr(uint32(16))
	up(Snapshot{Services: []*workloadapi.Service{cidr}})
	if v := s.Load(); v.ServiceByAddr("", at("10.96.0.2")) != nil || v.ServiceByAddr("", at("10.200.7.7")) != cidr {
		t.Fatal("VIP to CIDR")
	}
	up(Snapshot{Services: []*workloadapi.Service{svc("ns", "s", "10.96.0.3", 80)}})
	if v := s.Load(); v.ServiceByAddr("", at("10.200.7.7")) != nil || v.ServiceByAddr("", at("10.96.0.3")) == nil {
		t.Fatal("CIDR to VIP")
	}

	// A policy changes scope.
	w := wl("w", "ns", "10.0.0.9")
	scopes := func() []string { return policyKeys(s.Load().PoliciesFor(w)) }
	up(Snapshot{Policies: []*security.Authorization{authz("ns", "p", security.Scope_NAMESPACE)}})
	if got := scopes(); !slices.Equal(got, []string{"ns/p"}) {
		t.Fatalf("NAMESPACE: %v", got)
	}
	up(Snapshot{Policies: []*security.Authorization{authz("ns", "p", security.Scope_WORKLOAD_SELECTOR)}})
	if got := scopes(); len(got) != 0 {
		t.Fatalf("NAMESPACE to WORKLOAD_SELECTOR: %v", got)
	}
	up(Snapshot{Policies: []*security.Authorization{authz("istio-system", "g", security.Scope_GLOBAL)}})
	up(Snapshot{Policies: []*security.Authorization{authz("istio-system", "g", security.Scope_NAMESPACE)}})
	if got := scopes(); len(got) != 0 {
		t.Fatalf("GLOBAL to NAMESPACE of the root: %v", got)
	}
	if got := policyKeys(s.Load().PoliciesFor(wl("r", "istio-system", "10.0.0.8"))); !slices.Equal(got, []string{"istio-system/g"}) {
		t.Fatalf("root namespace workload: %v", got)
	}
}
