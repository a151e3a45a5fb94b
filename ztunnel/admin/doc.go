// Package admin serves ztunnel's operator endpoints: readiness
// (/healthz/ready on the readiness address) and the admin handler
// (/config_dump, /debug/pprof/ on the localhost-only admin address).
//
// Readiness is a set of named conditions, each not ready until Set with a
// nil error; /healthz/ready answers 200 "ready" when all hold and 503 with
// the reasons of those that do not. Its methods are safe for concurrent
// use.
//
// /config_dump is JSON: the state (workloads, services, policies, in the
// local config format), the certificates with their expiry, and the pods
// with their listeners, each read through a function given at
// construction.
package admin
