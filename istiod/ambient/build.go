package ambient

import (
	"maps"
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

	// addresses are the Address wrappers made by Builder.Build.
	addresses map[string]*workloadapi.Address
}

// Addresses returns the workloads and services as Address resources, keyed
// by their resource names (uids and "namespace/hostname" do not collide: a
// uid has "//").
//
// The wrappers of a Resources made by a Builder are the previous Build's
// for the same Workload or Service pointer.
func (r *Resources) Addresses() map[string]*workloadapi.Address {
	if r.addresses != nil {
		return maps.Clone(r.addresses)
	}
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
	return NewBuilder().Build(s, opts)
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
