package ambient

import (
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/pkg/workloadapi"
)

// ServiceName is the resource name of a service: "namespace/hostname".
func ServiceName(s *workloadapi.Service) string { return s.Namespace + "/" + s.Hostname }

// BuildService derives the workload API Service of a Kubernetes Service:
// its VIPs (clusterIPs; none for a headless service), ports (a named
// targetPort becomes target_port 0, resolved per workload in
// Workload.services), app protocols, waypoint, load balancing and IP
// families. It returns nil for an ExternalName service (ambient does not
// serve them; DNS does) and for a service whose cluster IP does not parse.
func BuildService(svc *corev1.Service, idx *Index, opts Options) *workloadapi.Service {
	o := opts.withDefaults()
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	ports := make([]*workloadapi.Port, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		ports = append(ports, &workloadapi.Port{
			ServicePort: uint32(p.Port),
			TargetPort:  uint32(p.TargetPort.IntVal),
			AppProtocol: appProtocol(p),
		})
	}
	var addrs []*workloadapi.NetworkAddress
	for _, vip := range vips(svc) {
		ip, err := netip.ParseAddr(vip)
		if err != nil {
			return nil
		}
		addrs = append(addrs, &workloadapi.NetworkAddress{Network: o.Network, Address: ip.AsSlice()})
	}
	var nsMeta *corev1.Namespace
	if idx != nil {
		nsMeta = idx.Namespace(svc.Namespace)
	}
	out := &workloadapi.Service{
		Name:          svc.Name,
		Namespace:     svc.Namespace,
		Hostname:      o.hostname(svc.Name, svc.Namespace),
		Addresses:     addrs,
		Ports:         ports,
		LoadBalancing: loadBalancing(svc, nsMeta),
		IpFamilies:    ipFamilies(svc),
		// A Kubernetes Service is canonical for its hostname.
		Canonical: true,
	}
	if idx != nil {
		if w := idx.serviceWaypoint(svc); w != nil {
			out.Waypoint = w.address(o)
			out.IngressUseWaypoint = ingressUseWaypoint(svc, nsMeta)
		}
	}
	return out
}

func vips(svc *corev1.Service) []string {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []string
	for _, ip := range ips {
		if ip != "" && ip != corev1.ClusterIPNone {
			out = append(out, ip)
		}
	}
	return out
}

func ingressUseWaypoint(svc *corev1.Service, ns *corev1.Namespace) bool {
	v, ok := svc.Labels[LabelIngressUseWaypoint]
	if !ok && ns != nil {
		v, ok = ns.Labels[LabelIngressUseWaypoint]
	}
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(v)
	return err == nil && b
}

func ipFamilies(svc *corev1.Service) workloadapi.IPFamilies {
	switch len(svc.Spec.IPFamilies) {
	case 2:
		return workloadapi.IPFamilies_DUAL
	case 1:
		if svc.Spec.IPFamilies[0] == corev1.IPv4Protocol {
			return workloadapi.IPFamilies_IPV4_ONLY
		}
		return workloadapi.IPFamilies_IPV6_ONLY
	}
	return workloadapi.IPFamilies_AUTOMATIC
}

// loadBalancing follows Istio: internalTrafficPolicy Local pins to the node;
// else spec.trafficDistribution, then the networking.istio.io/
// traffic-distribution annotation of the service, then of its namespace,
// selects zone or node preference; publishNotReadyAddresses admits
// unhealthy endpoints.
func loadBalancing(svc *corev1.Service, ns *corev1.Namespace) *workloadapi.LoadBalancing {
	var lb *workloadapi.LoadBalancing
	if itp := svc.Spec.InternalTrafficPolicy; itp != nil && *itp == corev1.ServiceInternalTrafficPolicyLocal {
		lb = &workloadapi.LoadBalancing{
			RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE},
			Mode:              workloadapi.LoadBalancing_STRICT,
		}
	} else {
		var nsAnn map[string]string
		if ns != nil {
			nsAnn = ns.Annotations
		}
		switch trafficDistribution(svc.Spec.TrafficDistribution, svc.Annotations, nsAnn) {
		case corev1.ServiceTrafficDistributionPreferSameZone:
			lb = &workloadapi.LoadBalancing{
				RoutingPreference: []workloadapi.LoadBalancing_Scope{
					workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
				},
				Mode: workloadapi.LoadBalancing_FAILOVER,
			}
		case corev1.ServiceTrafficDistributionPreferSameNode:
			lb = &workloadapi.LoadBalancing{
				RoutingPreference: []workloadapi.LoadBalancing_Scope{
					workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
					workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE,
				},
				Mode: workloadapi.LoadBalancing_FAILOVER,
			}
		}
	}
	if svc.Spec.PublishNotReadyAddresses {
		if lb == nil {
			lb = &workloadapi.LoadBalancing{}
		}
		lb.HealthPolicy = workloadapi.LoadBalancing_ALLOW_ALL
	}
	return lb
}

// trafficDistribution returns PreferSameZone, PreferSameNode or "".
func trafficDistribution(spec *string, svcAnn, nsAnn map[string]string) string {
	norm := func(v string) string {
		switch strings.ToLower(v) {
		case strings.ToLower(corev1.ServiceTrafficDistributionPreferClose), strings.ToLower(corev1.ServiceTrafficDistributionPreferSameZone):
			return corev1.ServiceTrafficDistributionPreferSameZone
		case strings.ToLower(corev1.ServiceTrafficDistributionPreferSameNode):
			return corev1.ServiceTrafficDistributionPreferSameNode
		}
		return ""
	}
	if spec != nil {
		if v := norm(*spec); v != "" {
			return v
		}
	}
	// A present but unknown annotation value stops the search (Istio: "any").
	if v := svcAnn[AnnotationTrafficDistrib]; v != "" {
		return norm(v)
	}
	if v := nsAnn[AnnotationTrafficDistrib]; v != "" {
		return norm(v)
	}
	return ""
}

// appProtocol derives a port's protocol as Istio does: UDP is not served;
// appProtocol (with Kubernetes' kubernetes.io/h2c, ws, wss) wins over the
// port name's prefix before "-"; well-known TCP ports (25, 53, 3306, 27017)
// are TCP. Only HTTP/1.1, HTTP/2, gRPC, TLS (and HTTPS, as TLS) and TCP have
// a workload API value; everything else is UNKNOWN.
func appProtocol(p corev1.ServicePort) workloadapi.AppProtocol {
	if p.Protocol == corev1.ProtocolUDP {
		return workloadapi.AppProtocol_UNKNOWN
	}
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return workloadapi.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadapi.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadapi.AppProtocol_TLS
		}
	}
	if len(name) >= len("grpc-web") && strings.EqualFold(name[:len("grpc-web")], "grpc-web") {
		return workloadapi.AppProtocol_UNKNOWN // gRPC-Web has no workload API value
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "http":
		return workloadapi.AppProtocol_HTTP11
	case "http2":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "tls", "https":
		return workloadapi.AppProtocol_TLS
	case "tcp":
		return workloadapi.AppProtocol_TCP
	case "udp", "http_proxy", "mongo", "redis", "mysql":
		return workloadapi.AppProtocol_UNKNOWN
	}
	switch p.Port {
	case 25, 53, 3306, 27017:
		return workloadapi.AppProtocol_TCP
	}
	return workloadapi.AppProtocol_UNKNOWN
}
