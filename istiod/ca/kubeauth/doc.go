// Package kubeauth is the CA's Kubernetes authenticator (a ca.Authenticator):
// the caller presents a service-account token as its bearer credential,
// istiod verifies it with a TokenReview, and the caller may then obtain:
//
//   - its own identity: a workload whose token is for service account
//     ns/sa may request spiffe://<td>/ns/<ns>/sa/<sa>, wherever it runs;
//   - as the ztunnel service account (Options.ZtunnelServiceAccount, default
//     istio-system/ztunnel), the identity of any service account that a pod
//     scheduled on the caller's own node runs as (Istio's node
//     authorization): a ztunnel can only obtain the identities of the pods
//     it serves, so a compromised node cannot mint identities of workloads
//     elsewhere.
//
// # The caller's node
//
// A pod-bound token (a projected token, what kubelet mounts) carries in the
// TokenReview's user.extra the pod's name and uid and, on Kubernetes 1.30 and
// later, the node's name (authentication.kubernetes.io/node-name): that is
// the caller's node. Without the node, the bound pod is looked up in the pod
// cache (same namespace as the service account, same uid) and its
// spec.nodeName used. A token bound to no pod (a legacy secret token) has no
// node: its ztunnel caller gets no identity but its own.
//
// # Audiences
//
// Options.Audiences are the audiences a token may be for; the default is
// "istio-ca" (what Istio's ztunnel requests) and AudienceAPIServer, which
// stands for the API server's own audiences (its --api-audiences, a token
// made without audiences). The explicit audiences are reviewed in one
// TokenReview; only when that fails and AudienceAPIServer is listed does a
// second TokenReview without audiences follow.
//
// # Decisions and errors
//
// A missing, malformed or rejected token is ca.ErrUnauthenticated; an
// identity the caller may not have is ca.ErrPermissionDenied; a failed
// TokenReview call or a pod cache not synced yet is any other error, which
// the CA reports as Unavailable (the client retries): never an allow. Every
// refusal is logged at warning level with the reason.
//
// Positive TokenReview results are cached by the token's SHA-256 for
// Options.CacheTTL (default 1 minute, never beyond the token's exp claim), at
// most Options.CacheSize entries, so a burst of certificate requests costs
// one TokenReview. Node authorization is decided per request from the pod
// cache, never cached.
package kubeauth
