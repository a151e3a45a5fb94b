package state

import (
	"net/netip"
	"slices"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// NetAddr is an IP on a network ("" is the default network), the key by
// which workloads and services are looked up.
type NetAddr struct {
	Network string
	Addr    netip.Addr
}

type wlEntry struct {
	w   *workloadapi.Workload
	seq uint64 // write order: on an address conflict the latest wins
}

type svcEntry struct {
	s   *workloadapi.Service
	seq uint64
}

type svcRange struct {
	network string
	prefix  netip.Prefix
	key     string // the service's
	svc     svcEntry
}

func (e wlEntry) order() uint64  { return e.seq }
func (e svcEntry) order() uint64 { return e.seq }

// claims are the resources that list one address, latest write (highest
// seq) first: top answers lookups; rest (usually empty) takes over when
// top goes. Immutable once published.
type claims[E interface{ order() uint64 }] struct {
	top  E
	rest []E
}

// View is an immutable snapshot of the state. All methods are safe for
// concurrent use; returned resources must not be modified.
//
// Every index is a persistent map (pmap) or an immutable slice, shared
// with the View it was derived from except along the paths a write
// touched; see Store and doc.go.
type View struct {
	version       uint64
	rootNamespace string

	workloads pmap[string, wlEntry]                 // by uid
	services  pmap[string, svcEntry]                // by namespace/hostname
	policies  pmap[string, *security.Authorization] // by namespace/name

	workloadByAddr pmap[NetAddr, claims[wlEntry]]
	serviceByAddr  pmap[NetAddr, claims[svcEntry]]         // VIPs; CIDRs are in serviceRanges
	serviceRanges  []svcRange                              // longest prefix first, then latest write
	endpoints      pmap[string, []*workloadapi.Workload]   // by service key, sorted by uid; never empty
	global         []*security.Authorization               // GLOBAL policies of the root namespace, sorted by key
	byNamespace    pmap[string, []*security.Authorization] // NAMESPACE policies, sorted by key; never empty
}

// Version counts writes; it grows by one with each.
func (v *View) Version() uint64 { return v.version }

// WorkloadByAddr returns the workload with ip on network, or nil. Workloads
// in HOST_NETWORK mode are never returned. IPv4-mapped IPv6 addresses are
// looked up as IPv4.
func (v *View) WorkloadByAddr(network string, ip netip.Addr) *workloadapi.Workload {
	k := NetAddr{network, ip.Unmap()}
	c, _ := v.workloadByAddr.get(addrHash(k), k)
	return c.top.w
}

// WorkloadByUID returns the workload with uid, or nil.
func (v *View) WorkloadByUID(uid string) *workloadapi.Workload {
	e, _ := v.workloads.get(strHash(uid), uid)
	return e.w
}

// ServiceByAddr returns the service reachable at ip (a VIP, or inside a
// service's CIDR) on network, or nil.
func (v *View) ServiceByAddr(network string, ip netip.Addr) *workloadapi.Service {
	ip = ip.Unmap()
	k := NetAddr{network, ip}
	if c, ok := v.serviceByAddr.get(addrHash(k), k); ok {
		return c.top.s
	}
	for _, r := range v.serviceRanges {
		if r.network == network && r.prefix.Contains(ip) {
			return r.svc.s
		}
	}
	return nil
}

// ServiceByName returns the service namespace/hostname, or nil.
func (v *View) ServiceByName(namespace, hostname string) *workloadapi.Service {
	e, _ := getJoined(&v.services, namespace, hostname)
	return e.s
}

// Endpoints returns the workloads whose `services` map names
// namespace/hostname, healthy or not, sorted by uid.
func (v *View) Endpoints(namespace, hostname string) []*workloadapi.Workload {
	eps, _ := getJoined(&v.endpoints, namespace, hostname)
	return eps
}

// Policy returns the policy namespace/name, or nil.
func (v *View) Policy(key string) *security.Authorization {
	p, _ := v.policies.get(strHash(key), key)
	return p
}

// PoliciesFor returns the policies that apply to w: GLOBAL policies of the
// root namespace, NAMESPACE policies of w's namespace (each group sorted
// by key), then those w lists in authorization_policies that are known, in
// its order, without duplicates.
func (v *View) PoliciesFor(w *workloadapi.Workload) []*security.Authorization {
	if w == nil {
		return nil
	}
	ns, _ := v.byNamespace.get(strHash(w.GetNamespace()), w.GetNamespace())
	out := make([]*security.Authorization, 0, len(v.global)+len(ns)+len(w.GetAuthorizationPolicies()))
	out = append(out, v.global...)
	out = append(out, ns...)
	for _, key := range w.GetAuthorizationPolicies() {
		p, _ := v.policies.get(strHash(key), key)
		if p != nil && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Workloads returns every workload, sorted by uid.
func (v *View) Workloads() []*workloadapi.Workload {
	out := make([]*workloadapi.Workload, 0, v.workloads.len())
	v.workloads.each(func(_ string, e wlEntry) bool {
		out = append(out, e.w)
		return true
	})
	slices.SortFunc(out, func(a, b *workloadapi.Workload) int { return strings.Compare(a.GetUid(), b.GetUid()) })
	return out
}

// Services returns every service, sorted by namespace/hostname.
func (v *View) Services() []*workloadapi.Service {
	out := make([]*workloadapi.Service, 0, v.services.len())
	v.services.each(func(_ string, e svcEntry) bool {
		out = append(out, e.s)
		return true
	})
	slices.SortFunc(out, func(a, b *workloadapi.Service) int { return strings.Compare(ServiceKey(a), ServiceKey(b)) })
	return out
}

// Policies returns every policy, sorted by namespace/name.
func (v *View) Policies() []*security.Authorization {
	out := make([]*security.Authorization, 0, v.policies.len())
	v.policies.each(func(_ string, p *security.Authorization) bool {
		out = append(out, p)
		return true
	})
	slices.SortFunc(out, func(a, b *security.Authorization) int { return strings.Compare(PolicyKey(a), PolicyKey(b)) })
	return out
}

// ServiceKey is a service's resource name, "namespace/hostname".
func ServiceKey(s *workloadapi.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

// PolicyKey is a policy's resource name, "namespace/name".
func PolicyKey(p *security.Authorization) string { return p.GetNamespace() + "/" + p.GetName() }

// Identity returns a workload's SPIFFE ID, with the defaults for elided
// parts (DefaultTrustDomain, DefaultServiceAccount). Workloads from a Store
// already carry the Store's defaults.
func Identity(w *workloadapi.Workload) spiffe.ID {
	id := spiffe.ID{TrustDomain: w.GetTrustDomain(), Namespace: w.GetNamespace(), ServiceAccount: w.GetServiceAccount()}
	if id.TrustDomain == "" {
		id.TrustDomain = DefaultTrustDomain
	}
	if id.ServiceAccount == "" {
		id.ServiceAccount = DefaultServiceAccount
	}
	return id
}
