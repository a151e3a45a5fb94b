package ambient

import (
	"sort"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// Index is the keyed view of a snapshot the builders look things up in:
// the objects a pod's workload depends on besides the pod itself. It is
// read-only after NewIndex; every list is sorted by name.
type Index struct {
	namespaces   map[string]*corev1.Namespace
	services     map[string]*corev1.Service // namespace/name
	servicesByNS map[string][]*corev1.Service
	authzByNS    map[string][]*securityv1.AuthorizationPolicy
	peerAuthByNS map[string][]*securityv1.PeerAuthentication
	anyPeerAuth  bool
}

// NewIndex indexes s (nil: empty).
func NewIndex(s *config.Snapshot) *Index {
	if s == nil {
		s = config.NewSnapshot()
	}
	idx := &Index{
		namespaces:   s.Namespaces,
		services:     s.Services,
		servicesByNS: map[string][]*corev1.Service{},
		authzByNS:    map[string][]*securityv1.AuthorizationPolicy{},
		peerAuthByNS: map[string][]*securityv1.PeerAuthentication{},
		anyPeerAuth:  len(s.PeerAuthentications) > 0,
	}
	for _, k := range config.SortedKeys(s.Services) {
		svc := s.Services[k]
		idx.servicesByNS[svc.Namespace] = append(idx.servicesByNS[svc.Namespace], svc)
	}
	for _, k := range config.SortedKeys(s.AuthorizationPolicies) {
		ap := s.AuthorizationPolicies[k]
		idx.authzByNS[ap.Namespace] = append(idx.authzByNS[ap.Namespace], ap)
	}
	for _, k := range config.SortedKeys(s.PeerAuthentications) {
		pa := s.PeerAuthentications[k]
		idx.peerAuthByNS[pa.Namespace] = append(idx.peerAuthByNS[pa.Namespace], pa)
	}
	return idx
}

// Namespace returns the namespace named name, or nil.
func (x *Index) Namespace(name string) *corev1.Namespace { return x.namespaces[name] }

func (x *Index) service(namespace, name string) *corev1.Service {
	return x.services[config.Key(namespace, name)]
}

// oldestNamespaceWide returns the oldest PeerAuthentication of namespace
// without a selector (Istio's choice when several exist), or nil.
func (x *Index) oldestNamespaceWide(namespace string) *securityv1.PeerAuthentication {
	var oldest *securityv1.PeerAuthentication
	for _, pa := range x.peerAuthByNS[namespace] {
		if pa.Spec.GetSelector() != nil {
			continue
		}
		if oldest == nil || pa.CreationTimestamp.Before(&oldest.CreationTimestamp) {
			oldest = pa
		}
	}
	return oldest
}

func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

func sortedUnique(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
