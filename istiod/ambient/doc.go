// Package ambient derives Istio's workload API from Kubernetes objects:
// Pod → istio.workload.Workload, Service → istio.workload.Service,
// AuthorizationPolicy and PeerAuthentication → istio.security.Authorization.
// Each builder is pure (no I/O, no clock, no goroutines): BuildWorkload,
// BuildService, BuildAuthorization, BuildPeerAuthentication, StrictPolicy;
// Build applies them to a whole config.Snapshot and returns Resources keyed
// by xDS resource name (workload uid, "namespace/hostname",
// "namespace/name") for the workload xDS server. A Builder does the same
// for successive snapshots, rebuilding only the resources whose inputs
// changed and keeping every other one the same pointer (which the xDS
// server does not encode again).
//
// The output matches what Istio's pilot-discovery sends ztunnel for the same
// objects (pilot/pkg/serviceregistry/ambient), field by field, so that the
// two can be diffed; the builders' docs say what each field holds. Known
// differences, by design or for want of the input:
//
//   - Waypoints: Istio resolves istio.io/use-waypoint to a Gateway API
//     Gateway; the snapshot has no Gateways, so the label resolves to the
//     waypoint's Service of that name, and the traffic type to the Service's
//     istio.io/waypoint-for label (default "service"). The address is the
//     hostname <name>.<ns>.svc.<suffix> port 15008, which is what Istio's
//     Gateway status holds for its own waypoints. Cross-namespace use
//     (istio.io/use-waypoint-namespace) is always allowed (Istio checks the
//     Gateway's allowedRoutes). Canary waypoints (weighted_waypoints), the
//     application_tunnel of waypoint pods with an inbound binding, and the
//     synthetic allow-from-waypoint policies (PILOT_AUTO_ALLOW_WAYPOINT_POLICY,
//     off by default in Istio) are not produced.
//   - No locality (needs Node objects), network gateways, multi-network or
//     multi-cluster, ServiceEntry/WorkloadEntry, or workloads from
//     EndpointSlices of selector-less services.
//   - Tunnel protocol: Istio's rule by default (annotation
//     ambient.istio.io/redirection=enabled written by the node agent), or the
//     enrollment labels (pkg/enrollment) with TunnelByEnrollment; see
//     TunnelMode.
//   - A container port with no protocol counts as TCP when resolving named
//     target ports (the API server defaults it; Istio requires TCP).
//   - An AuthorizationPolicy whose selector has no labels (`selector: {}`)
//     has scope WORKLOAD_SELECTOR, as in Istio, and is listed on no
//     workload.
//
// Workload.services lists the Services in the pod's namespace whose
// non-empty selector matches the pod's labels, keyed "namespace/hostname",
// with per-pod target ports. Workload.authorization_policies lists the
// selecting WORKLOAD_SELECTOR AuthorizationPolicies of the pod's namespace
// and the root namespace (sorted), then the PeerAuthentication-derived
// names: "<root>/istio_converted_static_strict" when the effective mode is
// STRICT (mesh, then namespace, then workload policy; the oldest wins within
// a level) and "<ns>/converted_peer_authentication_<name>" when a workload
// policy's portLevelMtls changes the mode of some ports.
//
// Enrollment (pkg/enrollment): namespace or pod label
// istio.io/dataplane-mode=ambient enrolls; pod label =none opts out.
package ambient
