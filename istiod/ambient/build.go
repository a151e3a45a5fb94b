package ambient

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// Resources is the derived state the workload xDS server serves, keyed by
// xDS resource name. Read-only once built.
type Resources struct {
	// Workloads by uid (PodUID).
	Workloads map[string]*workloadapi.Workload
	// Services by "namespace/hostname".
	Services map[string]*workloadapi.Service
	// Authorizations by "namespace/name".
	Authorizations map[string]*security.Authorization
}

// Addresses returns the workloads and services as Address resources, keyed
// by their resource names (uids and "namespace/hostname" do not collide: a
// uid has "//").
func (r *Resources) Addresses() map[string]*workloadapi.Address {
	out := make(map[string]*workloadapi.Address, len(r.Workloads)+len(r.Services))
	for k, w := range r.Workloads {
		out[k] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	for k, s := range r.Services {
		out[k] = &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
	}
	return out
}

// Build derives every resource of a snapshot: one Workload per pod that is
// a workload (see BuildWorkload), one Service per Service (see
// BuildService), one Authorization per AuthorizationPolicy sent to ztunnel
// (see BuildAuthorization), the port-level PeerAuthentication policies (see
// BuildPeerAuthentication) and, when any PeerAuthentication exists,
// StrictPolicy. The errors name each policy not sent or sent with HTTP
// attributes dropped (wrapping ErrNotForZtunnel or ErrHTTPAttributes), and
// each pod or service left out for a malformed address; they never stop
// the rest.
func Build(s *config.Snapshot, opts Options) (*Resources, []error) {
	o := opts.withDefaults()
	if s == nil {
		s = config.NewSnapshot()
	}
	idx := NewIndex(s)
	r := &Resources{
		Workloads:      map[string]*workloadapi.Workload{},
		Services:       map[string]*workloadapi.Service{},
		Authorizations: map[string]*security.Authorization{},
	}
	var errs []error
	for _, k := range config.SortedKeys(s.Pods) {
		pod := s.Pods[k]
		w := BuildWorkload(pod, idx.Namespace(pod.Namespace), idx, o)
		if w == nil {
			if hasBadIP(pod.Status.PodIP, pod.Status.PodIPs) {
				errs = append(errs, fmt.Errorf("pod %s: field status.podIPs: an address does not parse; the pod is left out", k))
			}
			continue
		}
		r.Workloads[w.Uid] = w
	}
	for _, k := range config.SortedKeys(s.Services) {
		svc := s.Services[k]
		ws := BuildService(svc, idx, o)
		if ws == nil {
			if len(vips(svc)) > 0 && svc.Spec.Type != corev1.ServiceTypeExternalName {
				errs = append(errs, fmt.Errorf("service %s: field spec.clusterIPs: an address does not parse; the service is left out", k))
			}
			continue
		}
		r.Services[ServiceName(ws)] = ws
	}
	for _, k := range config.SortedKeys(s.AuthorizationPolicies) {
		a, err := BuildAuthorization(s.AuthorizationPolicies[k], o)
		if err != nil {
			errs = append(errs, fmt.Errorf("AuthorizationPolicy %s: %w", k, err))
		}
		if a != nil {
			r.Authorizations[AuthorizationName(a)] = a
		}
	}
	for _, k := range config.SortedKeys(s.PeerAuthentications) {
		pa := s.PeerAuthentications[k]
		a := BuildPeerAuthentication(pa, idx.oldestNamespaceWide(pa.Namespace), idx.oldestNamespaceWide(o.RootNamespace), o)
		if a != nil {
			r.Authorizations[AuthorizationName(a)] = a
		}
	}
	if len(s.PeerAuthentications) > 0 {
		sp := StrictPolicy(o)
		r.Authorizations[AuthorizationName(sp)] = sp
	}
	return r, errs
}

func hasBadIP(ip string, ips []corev1.PodIP) bool {
	if ip != "" {
		if _, err := netip.ParseAddr(ip); err != nil {
			return true
		}
	}
	for _, p := range ips {
		if _, err := netip.ParseAddr(p.IP); err != nil {
			return true
		}
	}
	return false
}
