package ambient

import (
	"cmp"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// Builder builds Resources from successive snapshots, rebuilding only what
// may have changed since its previous Build: a resource whose inputs are the
// same objects (same pointers: config sources keep an unchanged object's
// pointer across snapshots, and snapshot objects are never modified) is the
// previous resource, the same pointer. A rebuilt resource equal to the
// previous one is also replaced by the previous pointer. The workload xDS
// server skips encoding a resource passed as the same pointer as before, so
// the cost of a change follows what it touches.
//
// The inputs of a resource are tracked per namespace, in two parts: its
// Namespace object with its Services, and its AuthorizationPolicies with
// its PeerAuthentications. A Workload depends on its pod, both parts of its
// namespace, the policies of the root namespace and the Services of the
// namespaces its waypoint labels (pod's or namespace's
// istio.io/use-waypoint-namespace) name; a Service on itself, its
// namespace's Services and the waypoint namespaces; an Authorization on its
// policy (and, for a PeerAuthentication, the namespace-wide and mesh-wide
// ones). Any change of Options rebuilds everything.
//
// The output of Build is the same as the package-level Build's for the same
// snapshot. A Builder is not safe for concurrent use.
type Builder struct {
	opts   Options
	primed bool
	next   uint64 // last generation handed out

	svcParts map[string]svcPart // by namespace
	polParts map[string]polPart

	workloads map[string]workloadMemo // by pod key
	services  map[string]serviceMemo  // by service key
	authz     map[string]authzMemo    // by AuthorizationPolicy key
	peerAuth  map[string]peerAuthMemo // by PeerAuthentication key
	strict    *security.Authorization
	addresses map[string]*workloadapi.Address // by resource name

	// nsDeps caches, during one Build, workloadDeps for a pod of a
	// namespace without its own waypoint namespace label.
	nsDeps map[string]deps
}

// svcPart is a namespace's Namespace object and Services (sorted by name)
// as of the last Build, and its generation.
type svcPart struct {
	ns       *corev1.Namespace
	services []*corev1.Service
	gen      uint64
}

// polPart is a namespace's policies as of the last Build.
type polPart struct {
	authz    []*securityv1.AuthorizationPolicy
	peerAuth []*securityv1.PeerAuthentication
	gen      uint64
}

// maxDeps bounds the generations a memo compares: the namespace parts a
// workload reads.
const maxDeps = 5

type deps [maxDeps]uint64

type workloadMemo struct {
	pod  *corev1.Pod
	deps deps
	w    *workloadapi.Workload
}

type serviceMemo struct {
	svc  *corev1.Service
	deps deps
	s    *workloadapi.Service
}

type authzMemo struct {
	ap  *securityv1.AuthorizationPolicy
	a   *security.Authorization
	err error
}

type peerAuthMemo struct {
	pa, nsWide, meshWide *securityv1.PeerAuthentication
	a                    *security.Authorization
}

// NewBuilder returns a Builder with nothing built yet.
func NewBuilder() *Builder { return &Builder{} }

// Build derives every resource of s, as the package-level Build does.
func (b *Builder) Build(s *config.Snapshot, opts Options) (*Resources, []error) {
	o := opts.withDefaults()
	if s == nil {
		s = config.NewSnapshot()
	}
	if !b.primed || b.opts != o {
		*b = Builder{next: b.next}
		b.opts, b.primed = o, true
	}
	idx := NewIndex(s)
	b.updateParts(s, idx)
	b.nsDeps = map[string]deps{}

	r := &Resources{
		Workloads:      make(map[string]*workloadapi.Workload, len(s.Pods)),
		Services:       make(map[string]*workloadapi.Service, len(s.Services)),
		Authorizations: map[string]*security.Authorization{},
	}
	var errs, catErrs []keyedErr

	workloads := make(map[string]workloadMemo, len(s.Pods))
	for k, pod := range s.Pods {
		d := b.workloadDeps(pod, idx)
		if m, ok := b.workloads[k]; ok && m.pod == pod && m.deps == d {
			workloads[k] = m
			r.Workloads[m.w.Uid] = m.w
			continue
		}
		w := BuildWorkload(pod, idx.Namespace(pod.Namespace), idx, o)
		if w == nil {
			if hasBadIP(pod.Status.PodIP, pod.Status.PodIPs) {
				catErrs = append(catErrs, keyedErr{k, fmt.Errorf("pod %s: field status.podIPs: an address does not parse; the pod is left out", k)})
			}
			continue
		}
		if m, ok := b.workloads[k]; ok && proto.Equal(m.w, w) {
			w = m.w
		}
		workloads[k] = workloadMemo{pod: pod, deps: d, w: w}
		r.Workloads[w.Uid] = w
	}
	b.workloads = workloads
	errs = appendSorted(errs, catErrs)

	catErrs = nil
	services := make(map[string]serviceMemo, len(s.Services))
	for k, svc := range s.Services {
		d := b.serviceDeps(svc, idx)
		if m, ok := b.services[k]; ok && m.svc == svc && m.deps == d {
			services[k] = m
			r.Services[ServiceName(m.s)] = m.s
			continue
		}
		ws := BuildService(svc, idx, o)
		if ws == nil {
			if len(vips(svc)) > 0 && svc.Spec.Type != corev1.ServiceTypeExternalName {
				catErrs = append(catErrs, keyedErr{k, fmt.Errorf("service %s: field spec.clusterIPs: an address does not parse; the service is left out", k)})
			}
			continue
		}
		if m, ok := b.services[k]; ok && proto.Equal(m.s, ws) {
			ws = m.s
		}
		services[k] = serviceMemo{svc: svc, deps: d, s: ws}
		r.Services[ServiceName(ws)] = ws
	}
	b.services = services
	errs = appendSorted(errs, catErrs)

	catErrs = nil
	authz := make(map[string]authzMemo, len(s.AuthorizationPolicies))
	for k, ap := range s.AuthorizationPolicies {
		m, ok := b.authz[k]
		if !ok || m.ap != ap {
			a, err := BuildAuthorization(ap, o)
			if ok && a != nil && m.a != nil && proto.Equal(m.a, a) {
				a = m.a
			}
			m = authzMemo{ap: ap, a: a, err: err}
		}
		authz[k] = m
		if m.err != nil {
			catErrs = append(catErrs, keyedErr{k, fmt.Errorf("AuthorizationPolicy %s: %w", k, m.err)})
		}
		if m.a != nil {
			r.Authorizations[AuthorizationName(m.a)] = m.a
		}
	}
	b.authz = authz
	errs = appendSorted(errs, catErrs)

	// PeerAuthentication-derived names may shadow an AuthorizationPolicy's
	// (as in Build: they are set after them); their own keys are unique.
	peerAuth := make(map[string]peerAuthMemo, len(s.PeerAuthentications))
	for k, pa := range s.PeerAuthentications {
		nsWide, meshWide := idx.oldestNamespaceWide(pa.Namespace), idx.oldestNamespaceWide(o.RootNamespace)
		m, ok := b.peerAuth[k]
		if !ok || m.pa != pa || m.nsWide != nsWide || m.meshWide != meshWide {
			a := BuildPeerAuthentication(pa, nsWide, meshWide, o)
			if ok && a != nil && m.a != nil && proto.Equal(m.a, a) {
				a = m.a
			}
			m = peerAuthMemo{pa: pa, nsWide: nsWide, meshWide: meshWide, a: a}
		}
		peerAuth[k] = m
		if m.a != nil {
			r.Authorizations[AuthorizationName(m.a)] = m.a
		}
	}
	b.peerAuth = peerAuth
	if len(s.PeerAuthentications) > 0 {
		if b.strict == nil {
			b.strict = StrictPolicy(o)
		}
		r.Authorizations[AuthorizationName(b.strict)] = b.strict
	}

	r.addresses = b.wrapAddresses(r)
	var out []error
	for _, e := range errs {
		out = append(out, e.err)
	}
	return r, out
}

type keyedErr struct {
	key string
	err error
}

// appendSorted appends one category's errors in key order (Build's order:
// it walks each kind's objects sorted by key).
func appendSorted(dst, cat []keyedErr) []keyedErr {
	slices.SortFunc(cat, func(a, b keyedErr) int { return cmp.Compare(a.key, b.key) })
	return append(dst, cat...)
}

// updateParts compares each namespace's parts with the previous Build's and
// gives a changed part a new generation. An empty part has generation 0
// (and is not stored), so a namespace that is emptied changes too.
func (b *Builder) updateParts(s *config.Snapshot, idx *Index) {
	svcParts := make(map[string]svcPart, len(b.svcParts)+1)
	for name, ns := range s.Namespaces {
		svcParts[name] = svcPart{ns: ns}
	}
	for name, list := range idx.servicesByNS {
		p := svcParts[name]
		p.services = list
		svcParts[name] = p
	}
	for name, p := range svcParts {
		old, ok := b.svcParts[name]
		if ok && old.ns == p.ns && slices.Equal(old.services, p.services) {
			p.gen = old.gen
		} else {
			b.next++
			p.gen = b.next
		}
		svcParts[name] = p
	}
	b.svcParts = svcParts

	polParts := make(map[string]polPart, len(b.polParts)+1)
	for name, list := range idx.authzByNS {
		polParts[name] = polPart{authz: list}
	}
	for name, list := range idx.peerAuthByNS {
		p := polParts[name]
		p.peerAuth = list
		polParts[name] = p
	}
	for name, p := range polParts {
		old, ok := b.polParts[name]
		if ok && slices.Equal(old.authz, p.authz) && slices.Equal(old.peerAuth, p.peerAuth) {
			p.gen = old.gen
		} else {
			b.next++
			p.gen = b.next
		}
		polParts[name] = p
	}
	b.polParts = polParts
}

// workloadDeps are the generations of what BuildWorkload reads besides the
// pod. The namespaces named come from the pod and its Namespace object, so
// for the same pod and the same first generation they are the same list.
func (b *Builder) workloadDeps(pod *corev1.Pod, idx *Index) deps {
	d, ok := b.nsDeps[pod.Namespace]
	if !ok {
		d = deps{
			b.svcParts[pod.Namespace].gen,
			b.polParts[pod.Namespace].gen,
			b.polParts[b.opts.RootNamespace].gen,
			b.svcParts[pod.Namespace].gen,
		}
		if ns := idx.Namespace(pod.Namespace); ns != nil {
			d[4] = b.svcParts[waypointNamespace(ns.Labels, pod.Namespace)].gen
		}
		b.nsDeps[pod.Namespace] = d
	}
	if wns, ok := pod.Labels[LabelUseWaypointNamespace]; ok {
		d[3] = b.svcParts[wns].gen
	}
	return d
}

// serviceDeps are the generations of what BuildService reads besides the
// Service.
func (b *Builder) serviceDeps(svc *corev1.Service, idx *Index) deps {
	d := deps{
		b.svcParts[svc.Namespace].gen,
		b.svcParts[waypointNamespace(svc.Labels, svc.Namespace)].gen,
	}
	if ns := idx.Namespace(svc.Namespace); ns != nil {
		d[2] = b.svcParts[waypointNamespace(ns.Labels, svc.Namespace)].gen
	}
	return d
}

// waypointNamespace is the namespace a waypoint label set may look a
// waypoint Service up in (defaulting to the object's own).
func waypointNamespace(labels map[string]string, own string) string {
	if ns, ok := labels[LabelUseWaypointNamespace]; ok {
		return ns
	}
	return own
}

// wrapAddresses returns r's workloads and services as Address resources,
// reusing the previous wrapper of a resource that is the same pointer.
func (b *Builder) wrapAddresses(r *Resources) map[string]*workloadapi.Address {
	out := make(map[string]*workloadapi.Address, len(r.Workloads)+len(r.Services))
	for k, w := range r.Workloads {
		if a := b.addresses[k]; a != nil && a.GetWorkload() == w {
			out[k] = a
			continue
		}
		out[k] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	for k, s := range r.Services {
		if a := b.addresses[k]; a != nil && a.GetService() == s {
			out[k] = a
			continue
		}
		out[k] = &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
	}
	b.addresses = out
	return out
}
