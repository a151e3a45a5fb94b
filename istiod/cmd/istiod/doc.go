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
// GET /ready on --readiness-addr (default :8080, the port Istio's istiod
// answers readiness on) is 200 once the first config is pushed, 503 before.
// The root certificate is written to --root-cert-out for clients to trust.
// istiod stops gracefully on SIGTERM or SIGINT (xDS streams are cut after
// 5 s). Flags and their environment variables are in config.go; run istiod -h
// for the list.
package main
