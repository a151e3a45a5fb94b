// Package casecret keeps istiod's self-signed root CA in a Kubernetes
// Secret in istiod's own namespace (ca.RootStore), so that the root
// survives pod restarts and every replica uses the same one.
//
// The Secret has Istio's shape for istio-ca-secret, so Istio's istiod and
// Ambit's can read each other's: type istio.io/ca-root, keys ca-cert.pem
// (the root), ca-key.pem (its key), root-cert.pem (the root again) and the
// empty cert-chain.pem and key.pem. Only ca-cert.pem and ca-key.pem are
// read, as Istio does.
//
// The Secret is created once with a create-if-absent (a Create that fails
// with AlreadyExists when another istiod was first: the caller then reads
// the winner's root) and never updated or deleted. Transient API errors are
// retried with backoff until the caller's context ends; Forbidden is
// returned at once with the RBAC rule that is missing.
package casecret
