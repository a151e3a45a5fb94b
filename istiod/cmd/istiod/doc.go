// Command istiod is Ambit's control plane. One TLS gRPC server on
// --grpc-addr (default :15012, serving certificate from the mesh CA) serves
// the certificate authority (istio.v1.auth.IstioCertificateService) and
// workload discovery (delta ADS of istio.workload.Address and
// istio.security.Authorization, istiod/xds).
//
// The mesh config comes from --config-source:
//
//   - kubernetes (default when istiod runs in a pod, or with --kubeconfig):
//     informers on the API server (istiod/config/kube); CA and xDS callers
//     authenticate with their service-account token, verified by TokenReview,
//     with node authorization for ztunnel (istiod/ca/kubeauth). A --token-file
//     may be added: its static tokens are tried first.
//   - dir (default with --config-dir): a watched directory of YAML objects
//     (local mode); callers authenticate with --token-file. A token entry
//     with a node is that node's ztunnel, authorized as on Kubernetes (the
//     identities of the pods the config dir puts on that node).
//
// A caller that is one node's ztunnel (a node token, or a Kubernetes
// ztunnel token whose node is known) gets an xDS stream only when the node
// of its first request is a ztunnel of that node: an Istio node ID of type
// ztunnel with metadata NODE_NAME=<node>; else PermissionDenied.
//   - none (when only --token-file is given): the CA alone, no workload
//     discovery; how local mode runs istiod until it passes a config dir.
//
// On every config change the ambient index is rebuilt (istiod/ambient.Build)
// and handed whole to the xDS server, which pushes the differences. Build
// errors (a policy not enforceable by ztunnel, a pod with a bad address) are
// logged once when they appear. --tunnel chooses when a workload gets HBONE:
// annotation (Istio's rule, default) or enrollment (the labels alone).
//
// # The root CA
//
// The signing CA comes from the Istio cacerts files in --ca-dir (the chart
// mounts the optional Secret "cacerts" there). When --ca-dir is unset, or
// holds none of those files (an absent optional Secret mounts as an empty
// directory), istiod uses a self-signed root kept in the Secret --ca-secret
// of --namespace (the chart sets istio-ca-secret, Istio's name and shape;
// with --config-source kubernetes only), or else in --state-dir. The root
// is created once (two replicas starting at once agree: the one whose
// create finds the Secret existing reads it), read back on every start,
// and never overwritten; a partial or unreadable Secret stops istiod with
// the fix. A log line names the root used ("using the CA from cacerts
// files", "created self-signed root CA" or "using the self-signed root CA"
// with its store). --namespace defaults to POD_NAMESPACE, else istio-system.
//
// With --config-source kubernetes the root is published as the ConfigMap
// istio-ca-root-cert (key root-cert.pem) in every namespace
// (istiod/rootcert), and the root is written to --root-cert-out for
// clients to trust in any mode.
//
// # HTTP: readiness and debug
//
// On --readiness-addr (default :8080, the port Istio's istiod answers
// readiness on): GET /ready is 200 once the first config is pushed, 503
// before; GET /debug/syncz is the JSON list of pkg/syncz.Proxy, one per
// connected xDS client with a known node (xds.Server.Syncz): per
// subscribed type the nonce last sent and last ACKed, SYNCED / STALE /
// NOT SENT, and the last NACK message (until a later response is ACKed).
// Version is the node metadata ISTIO_VERSION (Istio's key), else the
// node's user_agent_version.
//
// # Kubernetes RBAC (least privilege; istiod/rbac holds these rules as data)
//
// ClusterRole:
//
//	""                     namespaces, pods, services, serviceaccounts  list, watch
//	discovery.k8s.io       endpointslices                               list, watch
//	security.istio.io      authorizationpolicies, peerauthentications   list, watch
//	authentication.k8s.io  tokenreviews                                 create
//	""                     configmaps [istio-ca-root-cert]              list, watch, update
//	""                     configmaps                                   create
//
// Role in istiod's namespace (with --ca-secret NAME):
//
//	""                     secrets [NAME]                               get
//	""                     secrets                                      create
//
// No get is needed beside list/watch (informers), nor any right on nodes,
// leases or the Secret beyond get/create (it is never updated or watched).
// Create cannot be restricted by name in RBAC; list/watch can, because the
// ConfigMap informer lists with fieldSelector metadata.name.
// istiod stops gracefully on SIGTERM or SIGINT (xDS streams are cut after
// 5 s). Flags and their environment variables are in config.go; run istiod -h
// for the list.
package main
