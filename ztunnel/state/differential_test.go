package state

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// gen draws resources from small name and address pools, so that writes
// collide: replaced workloads, shared addresses, services changing VIPs
// and CIDRs, policies changing scope, and some invalid resources.
type gen struct {
	r *rand.Rand
}

var (
	diffNamespaces = []string{"ns0", "ns1", "ns2", DefaultRootNamespace}
	diffNetworks   = []string{"", "n1"}
	diffWorkIPs    = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "fd00::1", "fd00::2", "fd00::3", "10.96.0.1"}
	diffVIPs       = []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4", "fd00:96::1", "fd00:96::2", "10.0.0.1"}
	diffCIDRs      = []string{"10.200.0.0/16", "10.200.1.0/24", "10.200.1.128/25", "10.0.0.0/29", "fd00:200::/64", "10.96.0.0/30"}
	// diffProbes are looked up besides the pools: inside the CIDRs.
	diffProbes = []string{"10.200.1.130", "10.200.1.5", "10.200.9.9", "10.0.0.7", "fd00:200::9", "10.96.0.2", "10.201.0.1", "fd00::9"}
)

func (g gen) pick(s []string) string { return s[g.r.IntN(len(s))] }

func (g gen) uid() string { return fmt.Sprintf("w%d", g.r.IntN(30)) }

func (g gen) svcKey() string {
	return fmt.Sprintf("%s/s%d", diffNamespaces[g.r.IntN(3)], g.r.IntN(6))
}

func (g gen) policyKey() string {
	return fmt.Sprintf("%s/p%d", g.pick(diffNamespaces), g.r.IntN(4))
}

// addr encodes an IP as 4 or 16 bytes; an IPv4 one sometimes IPv4-mapped.
func (g gen) addr(s string) []byte {
	a := netip.MustParseAddr(s)
	if a.Is4() && g.r.IntN(4) == 0 {
		return netip.AddrFrom16(a.As16()).AsSlice()
	}
	return a.AsSlice()
}

func (g gen) workload() *workloadapi.Workload {
	w := &workloadapi.Workload{Uid: g.uid(), Namespace: diffNamespaces[g.r.IntN(3)], Network: g.pick(diffNetworks)}
	w.Name = w.Uid
	for range g.r.IntN(4) {
		w.Addresses = append(w.Addresses, g.addr(g.pick(diffWorkIPs)))
	}
	if len(w.Addresses) == 0 {
		w.Hostname = w.Uid + ".example"
	}
	if g.r.IntN(8) == 0 {
		w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	}
	if n := g.r.IntN(4); n > 0 {
		w.Services = map[string]*workloadapi.PortList{}
		for range n {
			w.Services[g.svcKey()] = &workloadapi.PortList{}
		}
	}
	for range g.r.IntN(4) {
		w.AuthorizationPolicies = append(w.AuthorizationPolicies, g.policyKey())
	}
	if g.r.IntN(4) == 0 {
		w.TrustDomain = "example.org"
	}
	if g.r.IntN(4) == 0 {
		w.ServiceAccount = "sa"
	}
	switch g.r.IntN(30) {
	case 0:
		w.Uid = ""
	case 1:
		w.Addresses = append(w.Addresses, []byte{1, 2, 3})
	}
	return w
}

func (g gen) service() *workloadapi.Service {
	ns, host, _ := cutKey(g.svcKey())
	s := &workloadapi.Service{Name: host, Namespace: ns, Hostname: host, Ports: []*workloadapi.Port{{ServicePort: 80}}}
	for range g.r.IntN(4) {
		na := &workloadapi.NetworkAddress{Network: g.pick(diffNetworks)}
		switch g.r.IntN(5) {
		case 0, 1:
			p := netip.MustParsePrefix(g.pick(diffCIDRs))
			na.Address = g.addr(p.Addr().String())
			na.Length = ptr(uint32(p.Bits()))
		case 2:
			na.Address = g.addr(g.pick(diffVIPs))
			na.Length = ptr(uint32(len(na.Address) * 8)) // a full-length prefix is one address
		default:
			na.Address = g.addr(g.pick(diffVIPs))
		}
		s.Addresses = append(s.Addresses, na)
	}
	if g.r.IntN(30) == 0 {
		s.Ports[0].ServicePort = 0
	}
	return s
}

func (g gen) policy() *security.Authorization {
	ns, name, _ := cutKey(g.policyKey())
	p := authz(ns, name, security.Scope(g.r.IntN(3)))
	if ns != DefaultRootNamespace && p.Scope == security.Scope_GLOBAL && g.r.IntN(2) == 0 {
		p.Scope = security.Scope_NAMESPACE // mostly valid
	}
	if g.r.IntN(30) == 0 {
		p.Action = 7
	}
	return p
}

func cutKey(k string) (string, string, bool) {
	for i := range len(k) {
		if k[i] == '/' {
			return k[:i], k[i+1:], true
		}
	}
	return k, "", false
}

func (g gen) snapshot(nw, ns, np int) Snapshot {
	var snap Snapshot
	for range g.r.IntN(nw + 1) {
		snap.Workloads = append(snap.Workloads, g.workload())
	}
	for range g.r.IntN(ns + 1) {
		snap.Services = append(snap.Services, g.service())
	}
	for range g.r.IntN(np + 1) {
		snap.Policies = append(snap.Policies, g.policy())
	}
	return snap
}

func (g gen) removals() ([]string, []string) {
	var addrs, pols []string
	for range g.r.IntN(4) {
		switch g.r.IntN(3) {
		case 0:
			addrs = append(addrs, g.uid())
		case 1:
			addrs = append(addrs, g.svcKey())
		default:
			addrs = append(addrs, "unknown/"+g.uid())
		}
	}
	for range g.r.IntN(3) {
		pols = append(pols, g.policyKey())
	}
	return addrs, pols
}

// TestDifferential applies one long random sequence of writes to a Store
// and to the full-rebuild reference (reference_test.go), and after each
// compares every lookup over every key of the pools, the listings, the
// errors and (every few steps) the Dump; and re-checks older Views, which
// must not have changed.
func TestDifferential(t *testing.T) {
	steps := 3000
	if testing.Short() || raceEnabled {
		steps = 600 // single goroutine: the race detector only slows it
	}
	g := gen{rand.New(rand.NewPCG(42, 7))}
	s := newStore()
	ref := newRefStore(Options{})
	type pair struct {
		v   *View
		ref *refView
	}
	var kept []pair
	for step := range steps {
		var err, refErr error
		var what string
		switch n := g.r.IntN(100); {
		case n < 3:
			what = "Set"
			snap := g.snapshot(25, 10, 8)
			err, refErr = s.Set(snap), ref.Set(snap)
		case n < 60:
			what = "Apply"
			addrs, pols := g.removals()
			d := Delta{Upsert: g.snapshot(4, 2, 2), RemoveAddresses: addrs, RemovePolicies: pols}
			err, refErr = s.Apply(d), ref.Apply(d)
		case n < 80:
			what = "Upsert"
			snap := g.snapshot(3, 2, 2)
			err, refErr = s.Upsert(snap), ref.Apply(Delta{Upsert: snap})
		case n < 90:
			what = "RemoveAddresses"
			addrs, _ := g.removals()
			s.RemoveAddresses(addrs...)
			refErr = ref.Apply(Delta{RemoveAddresses: addrs})
		default:
			what = "RemovePolicies"
			_, pols := g.removals()
			s.RemovePolicies(pols...)
			refErr = ref.Apply(Delta{RemovePolicies: pols})
		}
		if fmt.Sprint(err) != fmt.Sprint(refErr) {
			t.Fatalf("step %d (%s): error %v, reference %v", step, what, err, refErr)
		}
		cur := pair{s.Load(), ref.Load()}
		// Dump follows from the listings compared each step; marshal it
		// now and then.
		compareViews(t, fmt.Sprintf("step %d (%s)", step, what), cur.v, cur.ref, step%50 == 0)
		if len(kept) > 0 {
			old := kept[g.r.IntN(len(kept))]
			compareViews(t, fmt.Sprintf("step %d: the View of version %d", step, old.ref.Version()), old.v, old.ref, false)
		}
		if step%25 == 0 || len(kept) < 5 {
			kept = append(kept, cur)
		}
	}
	v := s.Load()
	t.Logf("final state: %d workloads, %d services, %d policies", len(v.Workloads()), len(v.Services()), len(v.Policies()))
}

func compareViews(t *testing.T, at string, v *View, ref *refView, dump bool) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s: %s", at, fmt.Sprintf(format, args...))
	}
	if v.Version() != ref.Version() {
		fail("version %d, reference %d", v.Version(), ref.Version())
	}
	if got, want := v.Workloads(), ref.Workloads(); !slices.Equal(got, want) {
		fail("Workloads %v, reference %v", uids(got), uids(want))
	}
	if got, want := v.Services(), ref.Services(); !slices.Equal(got, want) {
		fail("Services differ: %d, reference %d", len(got), len(want))
	}
	if got, want := v.Policies(), ref.Policies(); !slices.Equal(got, want) {
		fail("Policies %v, reference %v", policyKeys(got), policyKeys(want))
	}
	for i := range 30 {
		uid := fmt.Sprintf("w%d", i)
		if v.WorkloadByUID(uid) != ref.WorkloadByUID(uid) {
			fail("WorkloadByUID(%s)", uid)
		}
	}
	ips := slices.Concat(diffWorkIPs, diffVIPs, diffProbes)
	for _, cidr := range diffCIDRs {
		ips = append(ips, netip.MustParsePrefix(cidr).Addr().String())
	}
	for _, network := range append(diffNetworks, "n2") {
		for _, s := range ips {
			a := netip.MustParseAddr(s)
			for _, a := range []netip.Addr{a, netip.AddrFrom16(a.As16())} {
				if got, want := v.WorkloadByAddr(network, a), ref.WorkloadByAddr(network, a); got != want {
					fail("WorkloadByAddr(%q, %s) = %s, reference %s", network, a, got.GetUid(), want.GetUid())
				}
				if got, want := v.ServiceByAddr(network, a), ref.ServiceByAddr(network, a); got != want {
					fail("ServiceByAddr(%q, %s) = %s, reference %s", network, a, got.GetHostname(), want.GetHostname())
				}
			}
		}
	}
	for _, ns := range diffNamespaces {
		for i := range 6 {
			host := fmt.Sprintf("s%d", i)
			if v.ServiceByName(ns, host) != ref.ServiceByName(ns, host) {
				fail("ServiceByName(%s, %s)", ns, host)
			}
			got, want := v.Endpoints(ns, host), ref.Endpoints(ns, host)
			if !slices.Equal(got, want) || (got == nil) != (want == nil) {
				fail("Endpoints(%s, %s) = %v, reference %v", ns, host, uids(got), uids(want))
			}
		}
		var all []string
		for i := range 4 {
			key := fmt.Sprintf("%s/p%d", ns, i)
			all = append(all, key)
			if v.Policy(key) != ref.Policy(key) {
				fail("Policy(%s)", key)
			}
		}
		probe := &workloadapi.Workload{Namespace: ns, AuthorizationPolicies: append(all, "ns0/p1", "istio-system/p0")}
		if got, want := v.PoliciesFor(probe), ref.PoliciesFor(probe); !slices.Equal(got, want) {
			fail("PoliciesFor(a workload in %s) = %v, reference %v", ns, policyKeys(got), policyKeys(want))
		}
	}
	for _, w := range ref.Workloads() {
		if got, want := v.PoliciesFor(w), ref.PoliciesFor(w); !slices.Equal(got, want) {
			fail("PoliciesFor(%s) = %v, reference %v", w.GetUid(), policyKeys(got), policyKeys(want))
		}
	}
	if v.PoliciesFor(nil) != nil {
		fail("PoliciesFor(nil)")
	}
	if dump && !reflect.DeepEqual(v.Dump(), ref.Dump()) {
		fail("Dump differs")
	}
}

func uids(ws []*workloadapi.Workload) []string {
	out := make([]string, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.GetUid())
	}
	return out
}
