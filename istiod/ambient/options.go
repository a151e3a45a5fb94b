package ambient

// TunnelMode says how BuildWorkload decides that a pod accepts HBONE
// (Workload.tunnel_protocol = HBONE).
type TunnelMode int

const (
	// TunnelByAnnotation is Istio's rule: HBONE when the pod carries the
	// annotation ambient.istio.io/redirection=enabled, which the node agent
	// writes once the pod's traffic capture is in place (and removes when it
	// is taken down), or when the pod's label networking.istio.io/tunnel
	// lists "http" (a native HBONE workload; native_tunnel is then set).
	// The enrollment labels alone do not make a pod HBONE: until its capture
	// exists, ztunnel must reach it in plaintext. The default.
	TunnelByAnnotation TunnelMode = iota
	// TunnelByEnrollment: HBONE when the enrollment rule of pkg/enrollment
	// holds for the pod and its namespace (plus the native tunnel label as
	// above). For local mode, where no agent annotates pods and the CNI
	// plugin fails a pod's creation when its capture cannot be set up.
	TunnelByEnrollment
)

// Options are the mesh-wide settings the builders read. The zero value
// gets Istio's defaults (see withDefaults).
type Options struct {
	// ClusterID prefixes workload UIDs and fills cluster_id. Default
	// "Kubernetes", Istio's default cluster name.
	ClusterID string
	// DomainSuffix of service hostnames. Default "cluster.local".
	DomainSuffix string
	// RootNamespace holds mesh-wide policies. Default "istio-system".
	RootNamespace string
	// TrustDomain of SPIFFE identities. Default "cluster.local"; as in
	// Istio, Workload.trust_domain is left empty for "cluster.local".
	TrustDomain string
	// Network is the workloads' and VIPs' network. Default empty.
	Network string
	// Tunnel selects the HBONE rule. Default TunnelByAnnotation.
	Tunnel TunnelMode
	// DryRunPolicies sends AuthorizationPolicies annotated
	// istio.io/dry-run=true to ztunnel with dry_run set (Istio's
	// AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY, default off: such a
	// policy is then not sent at all).
	DryRunPolicies bool
	// AuditPolicies sends AuthorizationPolicies with action AUDIT to
	// ztunnel as dry-run DENY policies, so ztunnel logs the connections they
	// match without changing any decision. Istio sends no AUDIT policy to
	// ztunnel (the zero value, kept for comparisons with pilot-discovery);
	// Ambit's istiod turns it on (--audit-policies).
	AuditPolicies bool
}

// Defaults of Options.
const (
	DefaultClusterID     = "Kubernetes"
	DefaultDomainSuffix  = "cluster.local"
	DefaultRootNamespace = "istio-system"
	DefaultTrustDomain   = "cluster.local"
)

func (o Options) withDefaults() Options {
	if o.ClusterID == "" {
		o.ClusterID = DefaultClusterID
	}
	if o.DomainSuffix == "" {
		o.DomainSuffix = DefaultDomainSuffix
	}
	if o.RootNamespace == "" {
		o.RootNamespace = DefaultRootNamespace
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	return o
}

// Labels and annotations the builders read (Istio's names).
const (
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	LabelWaypointFor          = "istio.io/waypoint-for"
	LabelIngressUseWaypoint   = "istio.io/ingress-use-waypoint"
	LabelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	LabelGatewayManaged       = "gateway.istio.io/managed"
	LabelTunnel               = "networking.istio.io/tunnel"
	LabelWorkloadName         = "service.istio.io/workload-name"
	AnnotationRedirection     = "ambient.istio.io/redirection"
	AnnotationDryRun          = "istio.io/dry-run"
	AnnotationTrafficDistrib  = "networking.istio.io/traffic-distribution"

	managedMeshController     = "istio.io-mesh-controller"
	managedEastWestController = "istio.io-eastwest-controller"
	redirectionEnabled        = "enabled"
	// HBONEPort is the port waypoints accept HBONE on.
	HBONEPort = 15008
)

func (o Options) hostname(name, namespace string) string {
	return name + "." + namespace + ".svc." + o.DomainSuffix
}
