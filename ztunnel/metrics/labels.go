package metrics

import (
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Unknown is the value of a label nothing is known about.
const Unknown = "unknown"

// Reporter says which side of the connection reports it.
type Reporter string

// Reporters.
const (
	ReporterSource      Reporter = "source"
	ReporterDestination Reporter = "destination"
)

// Values of connection_security_policy.
const (
	SecurityMutualTLS = "mutual_tls"
	SecurityNone      = "none"
)

// Values of response_flags (Envoy's short names, as Istio's ztunnel uses).
const (
	FlagNone    = "-"
	FlagDenied  = "DENY"    // refused by authorization policy
	FlagConnect = "CONNECT" // the upstream connection failed
)

// LabelNames are the labels of every TCP metric, in order.
var LabelNames = []string{
	"reporter",
	"source_workload",
	"source_canonical_service",
	"source_canonical_revision",
	"source_workload_namespace",
	"source_principal",
	"source_app",
	"source_version",
	"source_cluster",
	"destination_service",
	"destination_service_namespace",
	"destination_service_name",
	"destination_workload",
	"destination_canonical_service",
	"destination_canonical_revision",
	"destination_workload_namespace",
	"destination_principal",
	"destination_app",
	"destination_version",
	"destination_cluster",
	"request_protocol",
	"response_flags",
	"connection_security_policy",
}

// Labels are the label values of one connection.
type Labels struct {
	Reporter Reporter

	SourceWorkload          string
	SourceCanonicalService  string
	SourceCanonicalRevision string
	SourceNamespace         string
	SourcePrincipal         string
	SourceApp               string
	SourceVersion           string
	SourceCluster           string

	DestinationService          string
	DestinationServiceNamespace string
	DestinationServiceName      string
	DestinationWorkload         string
	DestinationCanonicalService string
	DestinationCanonicalRev     string
	DestinationNamespace        string
	DestinationPrincipal        string
	DestinationApp              string
	DestinationVersion          string
	DestinationCluster          string

	RequestProtocol          string
	ResponseFlags            string
	ConnectionSecurityPolicy string
}

// Values returns the label values in LabelNames order, "unknown" for empty
// ones ("-" for an empty response_flags).
func (l Labels) Values() []string {
	v := []string{
		string(l.Reporter),
		l.SourceWorkload, l.SourceCanonicalService, l.SourceCanonicalRevision, l.SourceNamespace,
		l.SourcePrincipal, l.SourceApp, l.SourceVersion, l.SourceCluster,
		l.DestinationService, l.DestinationServiceNamespace, l.DestinationServiceName,
		l.DestinationWorkload, l.DestinationCanonicalService, l.DestinationCanonicalRev,
		l.DestinationNamespace, l.DestinationPrincipal, l.DestinationApp, l.DestinationVersion,
		l.DestinationCluster,
		l.RequestProtocol, l.ResponseFlags, l.ConnectionSecurityPolicy,
	}
	for i, s := range v {
		if s == "" {
			v[i] = Unknown
		}
	}
	if l.ResponseFlags == "" {
		v[len(v)-2] = FlagNone
	}
	return v
}

// Peer is one end of a connection as the labels describe it.
type Peer struct {
	// Workload, when known, gives the workload, canonical service and
	// revision, namespace and cluster labels.
	Workload *workloadapi.Workload
	// Identity, when known (verified or our own), gives the principal.
	Identity *spiffe.ID
	// Namespace is used when Workload is nil (e.g. a pod known from ZDS
	// but not yet from the state).
	Namespace string
	// Name is used as the workload name when Workload is nil.
	Name string
}

// Conn describes a connection for Build.
type Conn struct {
	Reporter    Reporter
	Source      Peer
	Destination Peer
	// Service is the destination service when the client addressed one.
	Service *workloadapi.Service
	// MutualTLS is true when the hop is HBONE.
	MutualTLS bool
	// Flags is response_flags; "" means none.
	Flags string
}

// Build returns the labels of c. It is pure.
func Build(c Conn) Labels {
	l := Labels{
		Reporter:                 c.Reporter,
		RequestProtocol:          "tcp",
		ResponseFlags:            c.Flags,
		ConnectionSecurityPolicy: SecurityNone,
	}
	if c.MutualTLS {
		l.ConnectionSecurityPolicy = SecurityMutualTLS
	}
	s := describe(c.Source)
	l.SourceWorkload, l.SourceCanonicalService, l.SourceCanonicalRevision = s.workload, s.canonical, s.revision
	l.SourceNamespace, l.SourcePrincipal, l.SourceApp, l.SourceVersion, l.SourceCluster = s.namespace, s.principal, s.canonical, s.revision, s.cluster
	d := describe(c.Destination)
	l.DestinationWorkload, l.DestinationCanonicalService, l.DestinationCanonicalRev = d.workload, d.canonical, d.revision
	l.DestinationNamespace, l.DestinationPrincipal, l.DestinationApp, l.DestinationVersion, l.DestinationCluster = d.namespace, d.principal, d.canonical, d.revision, d.cluster
	if svc := c.Service; svc != nil {
		l.DestinationService = svc.GetHostname()
		l.DestinationServiceNamespace = svc.GetNamespace()
		l.DestinationServiceName = svc.GetName()
	} else if w := c.Destination.Workload; w != nil {
		// Like Istio's ztunnel: without a service, name the workload's
		// canonical service.
		l.DestinationService = d.canonical
		l.DestinationServiceNamespace = d.namespace
		l.DestinationServiceName = d.canonical
	}
	return l
}

type described struct {
	workload, canonical, revision, namespace, principal, cluster string
}

func describe(p Peer) described {
	d := described{namespace: p.Namespace, workload: p.Name}
	if p.Identity != nil && !p.Identity.IsZero() {
		d.principal = p.Identity.String()
	}
	w := p.Workload
	if w == nil {
		d.canonical = d.workload
		return d
	}
	d.namespace = w.GetNamespace()
	d.workload = firstNonEmpty(w.GetWorkloadName(), w.GetName())
	d.canonical = firstNonEmpty(w.GetCanonicalName(), d.workload)
	d.revision = firstNonEmpty(w.GetCanonicalRevision(), "latest")
	d.cluster = w.GetClusterId()
	return d
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
