// Package cluster runs a real Kubernetes control plane on loopback for tests:
// etcd (Debian's etcd-server), kube-apiserver and kube-controller-manager
// built from k8s.io/kubernetes by ../build.sh, with a PKI made per cluster,
// RBAC authorization and real service-account tokens (TokenRequest and
// TokenReview work). There is no kubelet or scheduler: pods get no IPs unless
// a test writes their status.
//
// Use StartT for one test, or Main in TestMain plus Shared for one cluster
// per test package. The first use on a machine builds the binaries (~10
// minutes on two cores, progress in the test log); later starts take seconds.
// Environment: AMBIT_CACHE (cache root), AMBIT_KUBE_BIN (prebuilt binaries),
// AMBIT_KUBE_NO_BUILD=1 (skip instead of building; fail under CI=true),
// AMBIT_KUBE_KEEP=1 (keep each cluster's directory and logs).
//
// Each cluster lives in its own temporary directory (PKI, kubeconfigs, etcd
// data, one log per process) and listens on random free loopback ports, so
// clusters in parallel test packages do not collide. Stop kills the processes
// and removes the directory; the processes also die with the test binary.
package cluster
