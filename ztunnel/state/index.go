package state

import (
	"cmp"
	"net/netip"
	"slices"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// txn is one write: the next View under construction, plus the pending
// edits of the indexes kept as sorted slices, which are merged once per
// touched key at commit (so a bulk write sorts each slice once).
//
// Cost of a write of k resources over a state of N: O(k·log32 N) for the
// maps (O(k) node allocations for a bulk load, as nodes made by this write
// are edited in place), plus, per touched service, namespace or the global
// group, one merge of its slice (O(its length + its edits·log)), plus, if a
// service CIDR changed, one sort of the CIDR list. Nothing is O(N).
type txn struct {
	v   *View
	gen uint64 // = v.version: the generation that owns the nodes it makes

	endpoints   map[string]map[string]*workloadapi.Workload   // service key → uid → workload; nil removes
	byNamespace map[string]map[string]*security.Authorization // namespace → policy key → policy; nil removes
	global      map[string]*security.Authorization            // policy key → policy; nil removes
	ranges      map[string]bool                               // services whose CIDRs to re-list
}

// begin starts the write after cur: from cur's state, or empty for a
// whole-state Set.
func begin(cur *View, empty bool) *txn {
	var v View
	if empty {
		v = View{rootNamespace: cur.rootNamespace}
	} else {
		v = *cur
	}
	v.version = cur.version + 1
	return &txn{
		v: &v, gen: v.version,
		endpoints:   map[string]map[string]*workloadapi.Workload{},
		byNamespace: map[string]map[string]*security.Authorization{},
		ranges:      map[string]bool{},
	}
}

func (t *txn) putWorkload(e wlEntry) {
	uid := e.w.GetUid()
	h := strHash(uid)
	if old, ok := t.v.workloads.get(h, uid); ok {
		t.indexWorkload(old, false)
	}
	t.v.workloads.set(t.gen, h, uid, e)
	t.indexWorkload(e, true)
}

// removeWorkload removes the workload uid if present and reports whether
// it was.
func (t *txn) removeWorkload(uid string) bool {
	h := strHash(uid)
	old, ok := t.v.workloads.get(h, uid)
	if ok {
		t.indexWorkload(old, false)
		t.v.workloads.del(t.gen, h, uid)
	}
	return ok
}

// indexWorkload adds e to (or removes it from) the derived indexes.
func (t *txn) indexWorkload(e wlEntry, add bool) {
	w := e.w
	for key := range w.GetServices() {
		ops := t.endpoints[key]
		if ops == nil {
			ops = map[string]*workloadapi.Workload{}
			t.endpoints[key] = ops
		}
		if add {
			ops[w.GetUid()] = w
		} else {
			ops[w.GetUid()] = nil
		}
	}
	if w.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK {
		return // shared IP: never looked up by address
	}
	for _, b := range w.GetAddresses() {
		ip, _ := netip.AddrFromSlice(b)
		claim(t, &t.v.workloadByAddr, NetAddr{w.GetNetwork(), ip.Unmap()}, e, add)
	}
}

func (t *txn) putService(e svcEntry) {
	key := ServiceKey(e.s)
	h := strHash(key)
	if old, ok := t.v.services.get(h, key); ok {
		t.indexService(key, old, false)
	}
	t.v.services.set(t.gen, h, key, e)
	t.indexService(key, e, true)
}

func (t *txn) removeService(key string) {
	h := strHash(key)
	if old, ok := t.v.services.get(h, key); ok {
		t.indexService(key, old, false)
		t.v.services.del(t.gen, h, key)
	}
}

func (t *txn) indexService(key string, e svcEntry, add bool) {
	for _, na := range e.s.GetAddresses() {
		ip, _ := netip.AddrFromSlice(na.GetAddress())
		ip = ip.Unmap()
		if isRange(na, ip) {
			t.ranges[key] = true
			continue
		}
		claim(t, &t.v.serviceByAddr, NetAddr{na.GetNetwork(), ip}, e, add)
	}
}

// isRange reports whether na (whose address is ip) is a CIDR rather than
// a single address.
func isRange(na *workloadapi.NetworkAddress, ip netip.Addr) bool {
	return na.Length != nil && int(na.GetLength()) < ip.BitLen()
}

func (t *txn) putPolicy(p *security.Authorization) {
	key := PolicyKey(p)
	h := strHash(key)
	if old, ok := t.v.policies.get(h, key); ok {
		t.groupPolicy(key, old, false)
	}
	t.v.policies.set(t.gen, h, key, p)
	t.groupPolicy(key, p, true)
}

func (t *txn) removePolicy(key string) {
	h := strHash(key)
	if old, ok := t.v.policies.get(h, key); ok {
		t.groupPolicy(key, old, false)
		t.v.policies.del(t.gen, h, key)
	}
}

// groupPolicy adds p to (or removes it from) the group its scope puts it
// in: the global list or its namespace's.
func (t *txn) groupPolicy(key string, p *security.Authorization, add bool) {
	var ops map[string]*security.Authorization
	switch p.GetScope() {
	case security.Scope_GLOBAL:
		if p.GetNamespace() != t.v.rootNamespace {
			return
		}
		if t.global == nil {
			t.global = map[string]*security.Authorization{}
		}
		ops = t.global
	case security.Scope_NAMESPACE:
		ns := p.GetNamespace()
		if ops = t.byNamespace[ns]; ops == nil {
			ops = map[string]*security.Authorization{}
			t.byNamespace[ns] = ops
		}
	default:
		return
	}
	if add {
		ops[key] = p
	} else {
		ops[key] = nil
	}
}

// commit merges the pending slice edits and returns the finished View.
func (t *txn) commit() *View {
	v := t.v
	for key, ops := range t.endpoints {
		h := strHash(key)
		old, _ := v.endpoints.get(h, key)
		if eps := mergeSorted(old, ops, (*workloadapi.Workload).GetUid); eps != nil {
			v.endpoints.set(t.gen, h, key, eps)
		} else {
			v.endpoints.del(t.gen, h, key)
		}
	}
	for ns, ops := range t.byNamespace {
		h := strHash(ns)
		old, _ := v.byNamespace.get(h, ns)
		if ps := mergeSorted(old, ops, PolicyKey); ps != nil {
			v.byNamespace.set(t.gen, h, ns, ps)
		} else {
			v.byNamespace.del(t.gen, h, ns)
		}
	}
	if t.global != nil {
		v.global = mergeSorted(v.global, t.global, PolicyKey)
	}
	if len(t.ranges) > 0 {
		var rs []svcRange
		for _, r := range v.serviceRanges {
			if !t.ranges[r.key] {
				rs = append(rs, r)
			}
		}
		for key := range t.ranges {
			e, ok := v.services.get(strHash(key), key)
			if !ok {
				continue
			}
			for _, na := range e.s.GetAddresses() {
				ip, _ := netip.AddrFromSlice(na.GetAddress())
				ip = ip.Unmap()
				if isRange(na, ip) {
					rs = append(rs, svcRange{na.GetNetwork(), netip.PrefixFrom(ip, int(na.GetLength())).Masked(), key, e})
				}
			}
		}
		// Longest prefix first, then latest write.
		slices.SortFunc(rs, func(a, b svcRange) int {
			if c := cmp.Compare(b.prefix.Bits(), a.prefix.Bits()); c != 0 {
				return c
			}
			return cmp.Compare(b.svc.seq, a.svc.seq)
		})
		v.serviceRanges = rs
	}
	return v
}

// claim adds e to (or removes it from) the claims on address k. An added
// entry is the latest write, so it goes first.
func claim[E interface{ order() uint64 }](t *txn, m *pmap[NetAddr, claims[E]], k NetAddr, e E, add bool) {
	h := addrHash(k)
	c, ok := m.get(h, k)
	switch {
	case add && !ok:
		m.set(t.gen, h, k, claims[E]{top: e})
	case add:
		if c.top.order() == e.order() {
			return // the resource lists the address twice
		}
		rest := make([]E, 0, len(c.rest)+1)
		rest = append(append(rest, c.top), c.rest...)
		m.set(t.gen, h, k, claims[E]{top: e, rest: rest})
	case !ok:
	case c.top.order() == e.order():
		if len(c.rest) == 0 {
			m.del(t.gen, h, k)
		} else {
			m.set(t.gen, h, k, claims[E]{top: c.rest[0], rest: c.rest[1:]})
		}
	default:
		i := slices.IndexFunc(c.rest, func(x E) bool { return x.order() == e.order() })
		if i < 0 {
			return
		}
		rest := slices.Delete(slices.Clone(c.rest), i, i+1)
		if len(rest) == 0 {
			rest = nil
		}
		m.set(t.gen, h, k, claims[E]{top: c.top, rest: rest})
	}
}

// mergeSorted returns old (sorted by id, ids unique) with the elements
// whose id is in ops replaced by ops' non-nil values: a new slice, sorted
// by id, or nil if empty. old is not modified.
func mergeSorted[T comparable](old []T, ops map[string]T, id func(T) string) []T {
	var zero T
	adds := make([]T, 0, len(ops))
	for _, x := range ops {
		if x != zero {
			adds = append(adds, x)
		}
	}
	slices.SortFunc(adds, func(a, b T) int { return cmp.Compare(id(a), id(b)) })
	out := make([]T, 0, len(old)+len(adds))
	i := 0
	for _, x := range old {
		xid := id(x)
		if _, ok := ops[xid]; ok {
			continue
		}
		for i < len(adds) && id(adds[i]) < xid {
			out = append(out, adds[i])
			i++
		}
		out = append(out, x)
	}
	out = append(out, adds[i:]...)
	if len(out) == 0 {
		return nil
	}
	return out
}
