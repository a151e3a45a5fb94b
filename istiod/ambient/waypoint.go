package ambient

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"istio.io/istio/pkg/workloadapi"
)

// Traffic types of a waypoint (label istio.io/waypoint-for).
const (
	waypointForService  = "service"
	waypointForWorkload = "workload"
	waypointForAll      = "all"
	waypointForNone     = "none"
)

// waypoint is a waypoint as the builders see it. Istio resolves
// istio.io/use-waypoint to a Gateway API Gateway; the snapshot holds no
// Gateways, so Ambit resolves it to the waypoint's Service of the same name
// (what Istio's deployment controller creates for each waypoint Gateway, and
// what the Gateway's status address names), and reads the traffic type from
// that Service's istio.io/waypoint-for label (default "service", as for a
// Gateway).
type waypoint struct {
	namespace, name string
	trafficType     string
}

func (w *waypoint) address(o Options) *workloadapi.GatewayAddress {
	if w == nil {
		return nil
	}
	return &workloadapi.GatewayAddress{
		Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
			Namespace: w.namespace,
			Hostname:  o.hostname(w.name, w.namespace),
		}},
		HboneMtlsPort: HBONEPort,
	}
}

// useWaypoint reads istio.io/use-waypoint (and -namespace) from meta.
// none reports the explicit opt-out "none".
func useWaypoint(meta metav1.ObjectMeta, defaultNamespace string) (namespace, name string, none bool) {
	v, ok := meta.Labels[LabelUseWaypoint]
	if !ok {
		return "", "", false
	}
	if v == "none" {
		return "", "", true
	}
	namespace = defaultNamespace
	if ns, ok := meta.Labels[LabelUseWaypointNamespace]; ok {
		namespace = ns
	}
	return namespace, v, false
}

// waypointFor finds the waypoint meta's object uses: its own label first
// ("none" opts out of the namespace's), then its namespace's label. A label
// naming a Service that does not exist yields none (Istio: the waypoint is
// not ready yet). directLabel reports whether the object carried the label
// itself.
func (x *Index) waypointFor(meta metav1.ObjectMeta) (w *waypoint, directLabel bool) {
	wns, wname, none := useWaypoint(meta, meta.Namespace)
	if none {
		return nil, true
	}
	if wname != "" {
		return x.lookupWaypoint(wns, wname), true
	}
	if ns := x.Namespace(meta.Namespace); ns != nil {
		if wns, wname, _ := useWaypoint(ns.ObjectMeta, meta.Namespace); wname != "" {
			return x.lookupWaypoint(wns, wname), false
		}
	}
	return nil, false
}

func (x *Index) lookupWaypoint(namespace, name string) *waypoint {
	svc := x.service(namespace, name)
	if svc == nil {
		return nil
	}
	tt := svc.Labels[LabelWaypointFor]
	if tt == "" {
		tt = waypointForService
	}
	return &waypoint{namespace: namespace, name: name, trafficType: tt}
}

// serviceWaypoint is the waypoint of a Service, or nil.
func (x *Index) serviceWaypoint(svc *corev1.Service) *waypoint {
	switch svc.Labels[LabelGatewayManaged] {
	case managedMeshController, managedEastWestController:
		return nil // a waypoint or east-west gateway has no waypoint
	}
	w, _ := x.waypointFor(svc.ObjectMeta)
	if w == nil || (w.trafficType != waypointForService && w.trafficType != waypointForAll) {
		return nil
	}
	return w
}

// workloadWaypoint is the waypoint of a pod, or nil. A pod that is itself
// an instance of a waypoint (label gateway.networking.k8s.io/gateway-name
// naming an existing waypoint) has none.
func (x *Index) workloadWaypoint(pod *corev1.Pod) *waypoint {
	if gw := pod.Labels[LabelGatewayName]; gw != "" && x.lookupWaypoint(pod.Namespace, gw) != nil {
		return nil
	}
	w, _ := x.waypointFor(pod.ObjectMeta)
	if w == nil || (w.trafficType != waypointForWorkload && w.trafficType != waypointForAll) {
		return nil
	}
	return w
}
