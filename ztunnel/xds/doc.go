// Package xds is ztunnel's workload discovery client: a delta ADS stream to
// istiod (TLS verified against istiod's root, a bearer token on every
// stream) subscribed wildcard to istio.workload.Address and
// istio.security.Authorization, writing each response to a state.Store as
// one state.Delta.
//
// Each response is decoded and applied; resources that do not decode, whose
// name does not match their content (a workload's uid, a service's
// namespace/hostname, a policy's namespace/name) or that the store rejects
// make the client NACK with the error text, while the response's valid
// resources apply and a rejected resource keeps its last good version in
// the store. Otherwise the client ACKs.
//
// The client remembers the version of every resource it holds from xDS;
// after a disconnect it reconnects with exponential backoff and jitter
// (also when istiod refuses the stream with ResourceExhausted, its rate
// limit) and sends those versions as initial_resource_versions, so istiod
// sends only what changed meanwhile, including removals. While istiod is
// unreachable the store keeps serving the last good state.
//
// Synced is closed after the first response of both types was applied: the
// full state is in the store (readiness).
package xds
