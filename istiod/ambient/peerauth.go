package ambient

import (
	"slices"

	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/ztunnel/policy"
)

// PeerAuthPolicyPrefix starts the name of the Authorization derived from a
// workload PeerAuthentication with port-level modes (Istio's
// "converted_peer_authentication_"; '_' keeps it apart from Kubernetes
// names).
const PeerAuthPolicyPrefix = "converted_peer_authentication_"

// StrictPolicy is the one static Authorization that expresses STRICT mTLS
// (deny connections without a peer identity): ztunnel/policy.StrictPolicy,
// named "istio_converted_static_strict" in the root namespace with scope
// WORKLOAD_SELECTOR. Build sends it whenever any PeerAuthentication exists,
// and lists "<root>/istio_converted_static_strict" in the
// authorization_policies of every workload whose effective mode is STRICT.
func StrictPolicy(opts Options) *security.Authorization {
	return policy.StrictPolicy(security.Scope_WORKLOAD_SELECTOR, opts.withDefaults().RootNamespace)
}

func mode(m *v1beta1.PeerAuthentication_MutualTLS) v1beta1.PeerAuthentication_MutualTLS_Mode {
	return m.GetMode() // UNSET for nil
}

func notPresent() *security.Match {
	return &security.Match{NotPrincipals: []*security.StringMatch{{
		MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}},
	}}}
}

// BuildPeerAuthentication derives the Authorization of a workload
// PeerAuthentication with portLevelMtls, as Istio does; nil for every other
// PeerAuthentication (mesh-wide, namespace-wide, or without port-level
// modes: those act through StrictPolicy alone) and when the port-level
// modes change nothing. namespaceWide and meshWide are the effective
// PeerAuthentications without selector of pa's namespace and of the root
// namespace (the oldest of each; nil when none).
//
// The result is a DENY policy "converted_peer_authentication_<name>" in pa's
// namespace with scope WORKLOAD_SELECTOR: one group per port made STRICT
// where the inherited mode is not (deny plaintext to that port), and, where
// the effective mode is STRICT, one group denying plaintext except to the
// ports made PERMISSIVE or DISABLE. Ports are in increasing order.
func BuildPeerAuthentication(pa, namespaceWide, meshWide *securityv1.PeerAuthentication, opts Options) *security.Authorization {
	o := opts.withDefaults()
	spec := &pa.Spec
	if pa.Namespace == o.RootNamespace || spec.GetSelector() == nil || len(spec.GetPortLevelMtls()) == 0 {
		return nil
	}
	top := mode(spec.GetMtls())
	var nsMode, meshMode v1beta1.PeerAuthentication_MutualTLS_Mode
	if namespaceWide != nil {
		nsMode = mode(namespaceWide.Spec.GetMtls())
	}
	if meshWide != nil {
		meshMode = mode(meshWide.Spec.GetMtls())
	}
	const (
		unset      = v1beta1.PeerAuthentication_MutualTLS_UNSET
		strict     = v1beta1.PeerAuthentication_MutualTLS_STRICT
		permissive = v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
		disable    = v1beta1.PeerAuthentication_MutualTLS_DISABLE
	)
	var rules []*security.Rules
	var groups []*security.Group
	if top == strict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{notPresent()}})
	}
	portNums := make([]uint32, 0, len(spec.GetPortLevelMtls()))
	for p := range spec.GetPortLevelMtls() {
		portNums = append(portNums, p)
	}
	slices.Sort(portNums)
	// Istio's condition, operator precedence included: a STRICT port adds
	// nothing when the workload is STRICT, when it is UNSET under a STRICT
	// namespace, or when the namespace sets no mode under a STRICT mesh
	// (whatever the workload's own mode).
	inheritedStrict := top == strict ||
		(top == unset && namespaceWide != nil && nsMode == strict) ||
		((namespaceWide == nil || nsMode == unset) && meshWide != nil && meshMode == strict)
	foundNonStrict := false
	for _, port := range portNums {
		switch mode(spec.GetPortLevelMtls()[port]) {
		case strict:
			if inheritedStrict {
				continue
			}
			m := notPresent()
			m.DestinationPorts = []uint32{port}
			groups = append(groups, &security.Group{Rules: []*security.Rules{{Matches: []*security.Match{m}}}})
		case permissive, disable:
			if top == permissive || top == disable {
				continue
			}
			if top == unset && ((namespaceWide != nil && nsMode != strict) ||
				(namespaceWide == nil && meshWide != nil && meshMode != strict) ||
				(namespaceWide == nil && meshWide == nil)) {
				continue
			}
			foundNonStrict = true
			rules = append(rules, &security.Rules{Matches: []*security.Match{{NotDestinationPorts: []uint32{port}}}})
		}
	}
	if top == strict && !foundNonStrict {
		return nil
	}
	if len(rules) == 0 && len(groups) == 0 {
		return nil
	}
	mergeStrict := (meshWide != nil && meshMode == strict && (namespaceWide == nil || nsMode == unset || nsMode == strict)) ||
		(namespaceWide != nil && nsMode == strict)
	if mergeStrict && foundNonStrict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{notPresent()}})
	}
	if len(rules) > 0 {
		groups = append(groups, &security.Group{Rules: rules})
	}
	return &security.Authorization{
		Name:      PeerAuthPolicyPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups:    groups,
	}
}

// peerAuthKeys returns the PeerAuthentication-derived policy names a
// workload lists, from the PeerAuthentications that apply to it (Istio's
// selection: mesh-wide ones of the root namespace, and those of the
// workload's namespace without selector or selecting it): the static
// STRICT policy when the effective mode is STRICT, and/or the workload
// policy's converted form when its port-level modes matter.
func peerAuthKeys(pas []*securityv1.PeerAuthentication, root string) []string {
	var mesh, ns, wl *securityv1.PeerAuthentication
	older := func(a, b *securityv1.PeerAuthentication) bool {
		return b == nil || a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	for _, pa := range pas {
		if len(pa.Spec.GetSelector().GetMatchLabels()) == 0 {
			if pa.Namespace == root {
				if older(pa, mesh) {
					mesh = pa
				}
			} else if older(pa, ns) {
				ns = pa
			}
		} else if pa.Namespace != root && older(pa, wl) {
			wl = pa
		}
	}
	const (
		strict     = v1beta1.PeerAuthentication_MutualTLS_STRICT
		permissive = v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
		disable    = v1beta1.PeerAuthentication_MutualTLS_DISABLE
	)
	isStrict := false
	if mesh != nil {
		isStrict = mode(mesh.Spec.GetMtls()) == strict
	}
	if ns != nil && mode(ns.Spec.GetMtls()) != v1beta1.PeerAuthentication_MutualTLS_UNSET {
		isStrict = mode(ns.Spec.GetMtls()) == strict
	}
	portKey := ""
	if wl != nil {
		wm := mode(wl.Spec.GetMtls())
		switch wm {
		case strict:
			isStrict = true
		case permissive, disable:
			isStrict = false
		}
		anyPort := func(want ...v1beta1.PeerAuthentication_MutualTLS_Mode) bool {
			for _, m := range wl.Spec.GetPortLevelMtls() {
				if slices.Contains(want, mode(m)) {
					return true
				}
			}
			return false
		}
		key := wl.Namespace + "/" + PeerAuthPolicyPrefix + wl.Name
		if wl.Spec.GetPortLevelMtls() != nil {
			switch wm {
			case strict:
				if anyPort(permissive, disable) {
					portKey, isStrict = key, false
				}
			case permissive, disable:
				if anyPort(strict) {
					portKey = key
				}
			default:
				if isStrict {
					// Istio looks for PERMISSIVE only here (not DISABLE).
					if anyPort(permissive) {
						portKey, isStrict = key, false
					}
				} else if anyPort(strict) {
					portKey = key
				}
			}
		}
	}
	var out []string
	if isStrict {
		out = append(out, root+"/"+policy.StrictPolicyName)
	}
	if portKey != "" {
		out = append(out, portKey)
	}
	return sortedUnique(out)
}

// workloadPolicies lists, for a pod, the WORKLOAD_SELECTOR
// AuthorizationPolicies (of its namespace or the root namespace) that
// select it and are sent to ztunnel, sorted, then the
// PeerAuthentication-derived names (peerAuthKeys).
func (x *Index) workloadPolicies(pod *corev1.Pod, o Options) []string {
	var names []string
	nss := []string{pod.Namespace}
	if o.RootNamespace != pod.Namespace {
		nss = append(nss, o.RootNamespace)
	}
	for _, ns := range nss {
		for _, ap := range x.authzByNS[ns] {
			sel := ap.Spec.GetSelector().GetMatchLabels()
			if len(sel) == 0 || !subset(sel, pod.Labels) || !sentToZtunnel(ap, o) {
				continue
			}
			names = append(names, ap.Namespace+"/"+ap.Name)
		}
	}
	names = sortedUnique(names)
	var pas []*securityv1.PeerAuthentication
	for _, ns := range nss {
		for _, pa := range x.peerAuthByNS[ns] {
			sel := pa.Spec.GetSelector()
			switch {
			case pa.Namespace == o.RootNamespace && sel == nil:
				pas = append(pas, pa)
			case pa.Namespace != pod.Namespace:
			case sel == nil || subset(sel.GetMatchLabels(), pod.Labels):
				pas = append(pas, pa)
			}
		}
	}
	return append(names, peerAuthKeys(pas, o.RootNamespace)...)
}
