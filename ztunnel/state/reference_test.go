package state

// The reference for TestDifferential: the store as it was before the
// indexes became incremental, rebuilding every index on each write. Kept
// verbatim but for names (View → refView, Store → refStore) and the parts
// the comparison does not need (subscriptions, logging).

import (
	"cmp"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

type refStore struct {
	opts Options
	seq  uint64
	cur  *refView
}

func newRefStore(opts Options) *refStore {
	if opts.RootNamespace == "" {
		opts.RootNamespace = DefaultRootNamespace
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	s := &refStore{opts: opts}
	s.cur = newRefView(opts.RootNamespace, 0, map[string]wlEntry{}, map[string]svcEntry{}, map[string]*security.Authorization{})
	return s
}

func (s *refStore) Load() *refView { return s.cur }

func (s *refStore) swap(version uint64, wl map[string]wlEntry, sv map[string]svcEntry, po map[string]*security.Authorization) {
	s.cur = newRefView(s.opts.RootNamespace, version, wl, sv, po)
}

func (s *refStore) Set(snap Snapshot) error {
	cur := s.cur
	wl, sv, po, errs := s.accept(snap)
	s.swap(cur.version+1, wl, sv, po)
	return s.report(errs)
}

// Apply applies a delta: removals, then upserts of valid resources. It
// returns every validation error (joined).
func (s *refStore) Apply(d Delta) error {
	cur := s.cur
	wl := maps.Clone(cur.workloads)
	sv := maps.Clone(cur.services)
	po := maps.Clone(cur.policies)
	for _, name := range d.RemoveAddresses {
		if _, ok := wl[name]; ok {
			delete(wl, name)
		} else {
			delete(sv, name)
		}
	}
	for _, name := range d.RemovePolicies {
		delete(po, name)
	}
	wl2, sv2, po2, errs := s.accept(d.Upsert)
	maps.Copy(wl, wl2)
	maps.Copy(sv, sv2)
	maps.Copy(po, po2)
	s.swap(cur.version+1, wl, sv, po)
	return s.report(errs)
}

// accept validates snap and returns its valid resources keyed by name.
func (s *refStore) accept(snap Snapshot) (map[string]wlEntry, map[string]svcEntry, map[string]*security.Authorization, []error) {
	v := validator{rootNamespace: s.opts.RootNamespace}
	var errs []error
	wl := make(map[string]wlEntry, len(snap.Workloads))
	seen := map[string]bool{}
	for i, w := range snap.Workloads {
		if e := v.workload(i, w, seen); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		if w.TrustDomain == "" {
			w.TrustDomain = s.opts.TrustDomain
		}
		if w.ServiceAccount == "" {
			w.ServiceAccount = DefaultServiceAccount
		}
		s.seq++
		wl[w.Uid] = wlEntry{w: w, seq: s.seq}
	}
	sv := make(map[string]svcEntry, len(snap.Services))
	clear(seen)
	for i, svc := range snap.Services {
		if e := v.service(i, svc, seen); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		s.seq++
		sv[ServiceKey(svc)] = svcEntry{s: svc, seq: s.seq}
	}
	po := make(map[string]*security.Authorization, len(snap.Policies))
	clear(seen)
	for i, p := range snap.Policies {
		if e := v.policy(i, p, seen); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		po[PolicyKey(p)] = p
	}
	return wl, sv, po, errs
}

func (s *refStore) report(errs []error) error { return errors.Join(errs...) }

type refRange struct {
	network string
	prefix  netip.Prefix
	svc     svcEntry
}

// View is an immutable snapshot of the state. All methods are safe for
// concurrent use; returned resources must not be modified.
type refView struct {
	version       uint64
	rootNamespace string

	workloads map[string]wlEntry                 // by uid
	services  map[string]svcEntry                // by namespace/hostname
	policies  map[string]*security.Authorization // by namespace/name

	workloadByAddr map[NetAddr]wlEntry
	serviceByAddr  map[NetAddr]svcEntry
	serviceRanges  []refRange
	endpoints      map[string][]*workloadapi.Workload // by service key, sorted by uid
	global         []*security.Authorization          // sorted by key
	byNamespace    map[string][]*security.Authorization
}

func newRefView(root string, version uint64, wl map[string]wlEntry, sv map[string]svcEntry, po map[string]*security.Authorization) *refView {
	v := &refView{
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
				v.serviceRanges = append(v.serviceRanges, refRange{na.GetNetwork(), netip.PrefixFrom(ip, int(na.GetLength())).Masked(), e})
				continue
			}
			k := NetAddr{na.GetNetwork(), ip}
			if old, ok := v.serviceByAddr[k]; !ok || old.seq < e.seq {
				v.serviceByAddr[k] = e
			}
		}
	}
	// Longest prefix first, then latest write.
	slices.SortFunc(v.serviceRanges, func(a, b refRange) int {
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
func (v *refView) Version() uint64 { return v.version }

// WorkloadByAddr returns the workload with ip on network, or nil. Workloads
// in HOST_NETWORK mode are never returned. IPv4-mapped IPv6 addresses are
// looked up as IPv4.
func (v *refView) WorkloadByAddr(network string, ip netip.Addr) *workloadapi.Workload {
	return v.workloadByAddr[NetAddr{network, ip.Unmap()}].w
}

// WorkloadByUID returns the workload with uid, or nil.
func (v *refView) WorkloadByUID(uid string) *workloadapi.Workload { return v.workloads[uid].w }

// ServiceByAddr returns the service reachable at ip (a VIP, or inside a
// service's CIDR) on network, or nil.
func (v *refView) ServiceByAddr(network string, ip netip.Addr) *workloadapi.Service {
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
func (v *refView) ServiceByName(namespace, hostname string) *workloadapi.Service {
	return v.services[namespace+"/"+hostname].s
}

// Endpoints returns the workloads whose `services` map names
// namespace/hostname, healthy or not, sorted by uid.
func (v *refView) Endpoints(namespace, hostname string) []*workloadapi.Workload {
	return v.endpoints[namespace+"/"+hostname]
}

// Policy returns the policy namespace/name, or nil.
func (v *refView) Policy(key string) *security.Authorization { return v.policies[key] }

// PoliciesFor returns the policies that apply to w: GLOBAL policies of the
// root namespace, NAMESPACE policies of w's namespace (each group sorted
// by key), then those w lists in authorization_policies that are known, in
// its order, without duplicates.
func (v *refView) PoliciesFor(w *workloadapi.Workload) []*security.Authorization {
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
func (v *refView) Workloads() []*workloadapi.Workload {
	out := make([]*workloadapi.Workload, 0, len(v.workloads))
	for _, e := range v.workloads {
		out = append(out, e.w)
	}
	slices.SortFunc(out, func(a, b *workloadapi.Workload) int { return strings.Compare(a.GetUid(), b.GetUid()) })
	return out
}

// Services returns every service, sorted by namespace/hostname.
func (v *refView) Services() []*workloadapi.Service {
	out := make([]*workloadapi.Service, 0, len(v.services))
	for _, e := range v.services {
		out = append(out, e.s)
	}
	slices.SortFunc(out, func(a, b *workloadapi.Service) int { return strings.Compare(ServiceKey(a), ServiceKey(b)) })
	return out
}

// Policies returns every policy, sorted by namespace/name.
func (v *refView) Policies() []*security.Authorization {
	out := make([]*security.Authorization, 0, len(v.policies))
	for _, p := range v.policies {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *security.Authorization) int { return strings.Compare(PolicyKey(a), PolicyKey(b)) })
	return out
}

func (v *refView) Dump() Dump {
	d := Dump{Version: v.version, Workloads: []json.RawMessage{}, Services: []json.RawMessage{}, Policies: []json.RawMessage{}}
	for _, w := range v.Workloads() {
		d.Workloads = append(d.Workloads, dumpOne(w, workloadToText))
	}
	for _, s := range v.Services() {
		d.Services = append(d.Services, dumpOne(s, serviceToText))
	}
	for _, p := range v.Policies() {
		d.Policies = append(d.Policies, dumpOne(p, policyToText))
	}
	return d
}
