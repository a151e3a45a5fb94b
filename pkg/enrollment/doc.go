// Package enrollment decides whether a pod is part of the ambient mesh, from
// its labels and its namespace's labels (DESIGN.md section 2). It is pure and
// shared by every component that must agree on the answer: the node agent
// (which captures the pod's traffic) and istiod (which tells ztunnel about
// the pod's ambient workload).
//
// The rule, in order:
//  1. pod label istio.io/dataplane-mode=none: not enrolled (opt-out wins);
//  2. pod label istio.io/dataplane-mode=ambient: enrolled;
//  3. namespace label istio.io/dataplane-mode=ambient: enrolled;
//  4. otherwise not enrolled.
//
// A pod label with any other value (e.g. "sidecar") does not decide and the
// namespace label applies, as in Istio. Label values are compared exactly.
package enrollment
