// Package kube holds the Kubernetes-mode end-to-end tests and build.sh, which
// installs etcd from Debian and builds kube-apiserver, kube-controller-manager
// and kubectl from k8s.io/kubernetes at a pinned version into
// $HOME/.cache/ambit/kube-<version>/bin (never the repository). The cluster
// package runs those binaries on loopback for tests; it calls build.sh itself
// when binaries are missing, so `go test` alone works on a fresh machine.
package kube
