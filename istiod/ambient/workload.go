package ambient

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/pkg/enrollment"
)

// PodUID is the workload UID Istio gives a pod: "<cluster>//Pod/<ns>/<name>".
func PodUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// BuildWorkload derives the workload API Workload of a pod. ns is the pod's
// namespace (nil: unknown, no labels); idx supplies the services, policies
// and waypoints the pod relates to (nil: none).
//
// It returns nil for a pod that is no workload: finished (phase Succeeded
// or Failed), without an IP yet, or with an IP that does not parse. Every
// other pod gets a workload, enrolled or not: ztunnel needs non-mesh
// destinations too; enrollment shows in tunnel_protocol (see TunnelMode).
//
// Fields, as Istio fills them: uid (PodUID), name, namespace, addresses
// (status.podIPs, else status.podIP), network, cluster_id, service_account,
// node, trust_domain (empty for cluster.local), workload_name (the owning
// Deployment, CronJob, ... as Istio guesses it from owner references, or the
// label service.istio.io/workload-name), workload_type POD,
// canonical_name/revision (labels service.istio.io/canonical-name,
// app.kubernetes.io/name, app, else the workload name / labels
// service.istio.io/canonical-revision, app.kubernetes.io/version, version,
// else "latest"), status (HEALTHY only when the Ready condition is True and
// the pod is not being deleted), network_mode HOST_NETWORK for host-network
// pods, waypoint, services and authorization_policies (see the package doc).
func BuildWorkload(pod *corev1.Pod, ns *corev1.Namespace, idx *Index, opts Options) *workloadapi.Workload {
	o := opts.withDefaults()
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	ips := pod.Status.PodIPs
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: pod.Status.PodIP}}
	}
	if len(ips) == 0 {
		return nil
	}
	addrs := make([][]byte, 0, len(ips))
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			return nil
		}
		addrs = append(addrs, a.AsSlice())
	}
	if idx == nil {
		idx = NewIndex(nil)
	}
	status := workloadapi.WorkloadStatus_HEALTHY
	if !podReady(pod) || pod.DeletionTimestamp != nil {
		status = workloadapi.WorkloadStatus_UNHEALTHY
	}
	w := &workloadapi.Workload{
		Uid:                   PodUID(o.ClusterID, pod.Namespace, pod.Name),
		Name:                  pod.Name,
		Namespace:             pod.Namespace,
		Addresses:             addrs,
		Network:               o.Network,
		ServiceAccount:        pod.Spec.ServiceAccountName,
		Waypoint:              idx.workloadWaypoint(pod).address(o),
		Node:                  pod.Spec.NodeName,
		ClusterId:             o.ClusterID,
		Services:              idx.workloadServices(pod, o),
		AuthorizationPolicies: idx.workloadPolicies(pod, o),
		Status:                status,
		WorkloadType:          workloadapi.WorkloadType_POD,
		WorkloadName:          workloadName(pod),
	}
	if o.TrustDomain != DefaultTrustDomain {
		w.TrustDomain = o.TrustDomain
	}
	if pod.Spec.HostNetwork {
		w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	}
	w.CanonicalName = firstLabel(pod.Labels, w.WorkloadName, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	w.CanonicalRevision = firstLabel(pod.Labels, "latest", "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
	var nsLabels map[string]string
	if ns != nil {
		nsLabels = ns.Labels
	}
	setTunnel(w, pod, nsLabels, o.Tunnel)
	return w
}

func setTunnel(w *workloadapi.Workload, pod *corev1.Pod, nsLabels map[string]string, mode TunnelMode) {
	switch mode {
	case TunnelByEnrollment:
		if enrollment.Enrolled(pod.Labels, nsLabels) {
			w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
		}
	default:
		if pod.Annotations[AnnotationRedirection] == redirectionEnabled {
			w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
		}
	}
	if v, ok := pod.Labels[LabelTunnel]; ok && slices.Contains(strings.Split(v, ","), "http") {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
		w.NativeTunnel = true
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func firstLabel(labels map[string]string, def string, keys ...string) string {
	for _, k := range keys {
		if v, ok := labels[k]; ok {
			return v
		}
	}
	return def
}

var cronJobName = regexp.MustCompile(`(.+)-\d{8,10}$`)

// workloadName guesses the pod's owning workload as Istio does: for a pod
// with a generated name, its controller; a ReplicaSet whose name ends in
// the pod-template-hash is a Deployment (rollouts-pod-template-hash: an
// Argo Rollout); a ReplicationController with the deploymentconfig label is
// that DeploymentConfig; a Job named <cronjob>-<8 to 10 digits> is that
// CronJob. The label service.istio.io/workload-name overrides the guess.
func workloadName(pod *corev1.Pod) string {
	if v, ok := pod.Labels[LabelWorkloadName]; ok {
		return v
	}
	name := pod.Name
	if pod.GenerateName != "" {
		for _, ref := range pod.OwnerReferences {
			if ref.Controller == nil || !*ref.Controller {
				continue
			}
			name = ref.Name
			hash, rhash := pod.Labels["pod-template-hash"], pod.Labels["rollouts-pod-template-hash"]
			switch {
			case ref.Kind == "ReplicaSet" && hash != "" && strings.HasSuffix(ref.Name, hash):
				name = strings.TrimSuffix(ref.Name, "-"+hash)
			case ref.Kind == "ReplicaSet" && rhash != "" && strings.HasSuffix(ref.Name, rhash):
				name = strings.TrimSuffix(ref.Name, "-"+rhash)
			case ref.Kind == "ReplicationController" && pod.Labels["deploymentconfig"] != "":
				name = pod.Labels["deploymentconfig"]
			case ref.Kind == "Job":
				if m := cronJobName.FindStringSubmatch(ref.Name); len(m) == 2 {
					name = m[1]
				}
			}
			break
		}
	}
	if name == "" {
		name = pod.Name
	}
	return name
}

// workloadServices maps "namespace/hostname" of each Service selecting the
// pod (same namespace, non-empty selector, not ExternalName) to its ports
// for this pod: a numeric targetPort as is; a named one resolved against
// the pod's TCP container ports (and native sidecar init containers), the
// port left out when the pod has no port of that name.
func (x *Index) workloadServices(pod *corev1.Pod, o Options) map[string]*workloadapi.PortList {
	out := map[string]*workloadapi.PortList{}
	for _, svc := range x.servicesByNS[pod.Namespace] {
		if svc.Spec.Type == corev1.ServiceTypeExternalName || len(svc.Spec.Selector) == 0 || !subset(svc.Spec.Selector, pod.Labels) {
			continue
		}
		pl := &workloadapi.PortList{Ports: make([]*workloadapi.Port, 0, len(svc.Spec.Ports))}
		for _, p := range svc.Spec.Ports {
			target := uint32(p.TargetPort.IntVal)
			if name := p.TargetPort.StrVal; name != "" {
				n, ok := containerPort(pod, name)
				if !ok {
					continue
				}
				target = uint32(n)
			}
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: target})
		}
		out[svc.Namespace+"/"+o.hostname(svc.Name, svc.Namespace)] = pl
	}
	return out
}

func containerPort(pod *corev1.Pod, name string) (int32, bool) {
	find := func(cs []corev1.Container, initOnly bool) (int32, bool) {
		for _, c := range cs {
			if initOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, p := range c.Ports {
				if p.Name == name && (p.Protocol == corev1.ProtocolTCP || p.Protocol == "") {
					return p.ContainerPort, true
				}
			}
		}
		return 0, false
	}
	if n, ok := find(pod.Spec.Containers, false); ok {
		return n, true
	}
	return find(pod.Spec.InitContainers, true)
}
