// Package kube holds ambitctl's cluster verbs that need no chart: enroll
// and unenroll a namespace, precheck a cluster (and the node it runs on),
// report the versions installed, find a node's ztunnel pod and reach a
// pod's port through the API server's port-forward.
//
// Every function takes its clients from the caller (built from kubectl's
// flags by NewClient), so tests run them against a real API server.
// Errors say what to do next: a missing kubeconfig names the flags and the
// environment variable, a forbidden call names the permission.
package kube
