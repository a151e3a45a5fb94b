// Package kube holds build.sh, which installs etcd from Debian and builds
// kube-apiserver, kube-controller-manager and kubectl from k8s.io/kubernetes
// at a pinned version into $HOME/.cache/ambit/kube-<version>/bin (never the
// repository), and the cluster package, which runs them on loopback for tests.
// This package has no Go code of its own.
package kube
