package state

import (
	"cmp"
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
	svc     svcEntry
}

// View is an immutable snapshot of the state. All methods are safe for
// concurrent use; returned resources must not be modified.
type View struct {
	version       uint64
	rootNamespace string

	workloads map[string]wlEntry                 // by uid
	services  map[string]svcEntry                // by namespace/hostname
	policies  map[string]*security.Authorization // by namespace/name

	workloadByAddr map[NetAddr]wlEntry
	serviceByAddr  map[NetAddr]svcEntry
	serviceRanges  []svcRange
	endpoints      map[string][]*workloadapi.Workload // by service key, sorted by uid
	global         []*security.Authorization          // sorted by key
	byNamespace    map[string][]*security.Authorization
}

func newView(root string, version uint64, wl map[string]wlEntry, sv map[string]svcEntry, po map[string]*security.Authorization) *View {
	v := &View{
		version: version, rootNamespace: root,
		workloads: wl, services: sv, policies: po,
		workloadByAddr: make(map[NetAddr]wlEntry, len(wl)),
		serviceByAddr:  make(map[NetAddr]svcEntry, len(sv)),
		endpoints:      map[string][]*workloadapi.Workload{},
		byNamespace:    map[string][]*security.Authorization{},
	}
	for _, e := range wl {
		w := e.w
		for key := range w.GetServices() {
			v.endpoints[key] = append(v.endpoints[key], w)
		}
		if w.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK {
			continue // shared IP: never looked up by address
		}
		for _, b := range w.GetAddresses() {
			ip, _ := netip.AddrFromSlice(b)
			k := NetAddr{w.GetNetwork(), ip.Unmap()}
			if old, ok := v.workloadByAddr[k]; !ok || old.seq < e.seq {
				v.workloadByAddr[k] = e
			}
		}
	}
	for _, eps := range v.endpoints {
		slices.SortFunc(eps, func(a, b *workloadapi.Workload) int { return strings.Compare(a.GetUid(), b.GetUid()) })
	}
	for _, e := range sv {
		for _, na := range e.s.GetAddresses() {
			ip, _ := netip.AddrFromSlice(na.GetAddress())
			ip = ip.Unmap()
			if na.Length != nil && int(na.GetLength()) < ip.BitLen() {
				v.serviceRanges = append(v.serviceRanges, svcRange{na.GetNetwork(), netip.PrefixFrom(ip, int(na.GetLength())).Masked(), e})
				continue
			}
			k := NetAddr{na.GetNetwork(), ip}
			if old, ok := v.serviceByAddr[k]; !ok || old.seq < e.seq {
				v.serviceByAddr[k] = e
			}
		}
	}
	// Longest prefix first, then latest write.
	slices.SortFunc(v.serviceRanges, func(a, b svcRange) int {
		if c := cmp.Compare(b.prefix.Bits(), a.prefix.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(b.svc.seq, a.svc.seq)
	})
	for _, p := range po {
		switch p.GetScope() {
		case security.Scope_GLOBAL:
			if p.GetNamespace() == root {
				v.global = append(v.global, p)
			}
		case security.Scope_NAMESPACE:
			v.byNamespace[p.GetNamespace()] = append(v.byNamespace[p.GetNamespace()], p)
		}
	}
	byKey := func(a, b *security.Authorization) int { return strings.Compare(PolicyKey(a), PolicyKey(b)) }
	slices.SortFunc(v.global, byKey)
	for _, ps := range v.byNamespace {
		slices.SortFunc(ps, byKey)
	}
	return v
}

// Version counts writes; it grows by one with each.
func (v *View) Version() uint64 { return v.version }

// WorkloadByAddr returns the workload with ip on network, or nil. Workloads
// in HOST_NETWORK mode are never returned. IPv4-mapped IPv6 addresses are
// looked up as IPv4.
func (v *View) WorkloadByAddr(network string, ip netip.Addr) *workloadapi.Workload {
	return v.workloadByAddr[NetAddr{network, ip.Unmap()}].w
}

// WorkloadByUID returns the workload with uid, or nil.
func (v *View) WorkloadByUID(uid string) *workloadapi.Workload { return v.workloads[uid].w }

// ServiceByAddr returns the service reachable at ip (a VIP, or inside a
// service's CIDR) on network, or nil.
func (v *View) ServiceByAddr(network string, ip netip.Addr) *workloadapi.Service {
	ip = ip.Unmap()
	if e, ok := v.serviceByAddr[NetAddr{network, ip}]; ok {
		return e.s
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
	return v.services[namespace+"/"+hostname].s
}

// Endpoints returns the workloads whose `services` map names
// namespace/hostname, healthy or not, sorted by uid.
func (v *View) Endpoints(namespace, hostname string) []*workloadapi.Workload {
	return v.endpoints[namespace+"/"+hostname]
}

// Policy returns the policy namespace/name, or nil.
func (v *View) Policy(key string) *security.Authorization { return v.policies[key] }

// PoliciesFor returns the policies that apply to w: GLOBAL policies of the
// root namespace, NAMESPACE policies of w's namespace (each group sorted
// by key), then those w lists in authorization_policies that are known, in
// its order, without duplicates.
func (v *View) PoliciesFor(w *workloadapi.Workload) []*security.Authorization {
	if w == nil {
		return nil
	}
	ns := v.byNamespace[w.GetNamespace()]
	out := make([]*security.Authorization, 0, len(v.global)+len(ns)+len(w.GetAuthorizationPolicies()))
	out = append(out, v.global...)
	out = append(out, ns...)
	for _, key := range w.GetAuthorizationPolicies() {
		p := v.policies[key]
		if p != nil && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Workloads returns every workload, sorted by uid.
func (v *View) Workloads() []*workloadapi.Workload {
	out := make([]*workloadapi.Workload, 0, len(v.workloads))
	for _, e := range v.workloads {
		out = append(out, e.w)
	}
	slices.SortFunc(out, func(a, b *workloadapi.Workload) int { return strings.Compare(a.GetUid(), b.GetUid()) })
	return out
}

// Services returns every service, sorted by namespace/hostname.
func (v *View) Services() []*workloadapi.Service {
	out := make([]*workloadapi.Service, 0, len(v.services))
	for _, e := range v.services {
		out = append(out, e.s)
	}
	slices.SortFunc(out, func(a, b *workloadapi.Service) int { return strings.Compare(ServiceKey(a), ServiceKey(b)) })
	return out
}

// Policies returns every policy, sorted by namespace/name.
func (v *View) Policies() []*security.Authorization {
	out := make([]*security.Authorization, 0, len(v.policies))
	for _, p := range v.policies {
		out = append(out, p)
	}
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
