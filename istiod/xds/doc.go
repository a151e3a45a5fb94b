// Package xds is istiod's workload discovery server: delta ADS
// (envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources)
// for the types TypeAddress (istio.workload.Address) and TypeAuthorization
// (istio.security.Authorization), as Istio's ztunnel consumes them.
//
// # Feeding it
//
// Server.Set takes the whole state (level-triggered, idempotent): every
// Address keyed by AddressKey and every Authorization by AuthorizationKey.
// Sets are debounced (Options.Debounce, default 10 ms of quiet, at most
// Options.MaxDebounce, default 100 ms, from the first Set of a burst), so a
// burst becomes one push of the last state. Each published state is a
// generation: every resource is encoded once (deterministic protobuf) and
// its version is the xxhash64 of those bytes, so versions are stable across
// istiod restarts and an unchanged resource keeps its version whatever the
// caller rebuilt. The encoded resources are shared read-only by all streams.
// A resource passed as the same pointer as in the previous Set is not even
// re-encoded.
//
// # Streams
//
// Each stream tracks, per type, what its client holds: for a wildcard
// subscription (ztunnel's: "*" or the legacy empty first request) that is
// one generation of the type, so the difference to send is found from the
// generation's change list (the last 32 generations keep theirs) without
// walking every resource; explicit names (on-demand) are tracked one by one.
// A stream's first response per type is sent even when empty, so a client
// knows it has the full state. With initial_resource_versions the first
// response holds only the resources whose version differs plus removals of
// the names the client has that no longer exist. Responses are sent without
// waiting for the previous ACK; a NACK (error_detail set) is counted and
// logged with the type, the nonce and the client's message, and the
// rejected version is not resent: the client gets the next version when the
// resource changes again, or everything it lacks when it reconnects.
//
// A stream sends from its own goroutine and wakes on a one-slot signal, so
// a slow client never blocks Set or other streams, and holds at most a
// reference to one old generation: when it is ready again it gets one diff
// from what it holds to the latest state (intermediate states coalesce).
// Nothing is sent before the first Set is published.
//
// New streams pass a token bucket (Options.StreamRate, StreamBurst, default
// 100/s, burst 100); over it the stream fails with ResourceExhausted and
// the client backs off and retries, as with Istio's pilot-discovery.
// Options.Authorize, if set, vets each stream from its context (peer, TLS
// state, metadata) before it is served; Options.AuthorizeNode, if set, vets
// the node of the stream's first request before anything is sent (istiod
// binds a node's ztunnel credential to that node's ztunnel node ID:
// CheckZtunnelNode). ParseNodeID reads Istio's node ID form
// "<type>~<ip>~<pod>.<namespace>~<domain>".
//
// # Sync status
//
// Server.Syncz reports every open stream whose node is known (pkg/syncz,
// served by istiod on /debug/syncz): per subscribed type the nonce of the
// last response sent (recorded before the send, so an ACK is never seen
// before its response) and of the last ACKed; SYNCED when they are equal,
// STALE when the client has not ACKed the last response (or NACKed it),
// NOT SENT before the first response. The last NACK message is kept until
// a later response is ACKed. Each stream's goroutine writes its own status
// under a per-stream lock; Syncz copies it under that lock.
//
// # Why not go-control-plane's server and cache
//
// go-control-plane's delta server with its LinearCache serves this
// protocol, but the cache's whole-state entry point (SetResources) marks
// every resource as changed, and each wildcard watch finds its difference by
// walking every resource under the cache's lock on every update: with
// 11,001 addresses and 100 clients that is a million map lookups per
// change, serialized. Two fixed types and a whole-state input make a
// focused server small and let it encode each resource once, share the
// encoded bytes and the per-generation change lists across streams, and
// keep the per-stream state to one pointer per type. The wire types are
// go-control-plane's.
//
// Register the server on istiod's TLS gRPC server (Server.Register); the
// caller owns the grpc.Server and its listener.
package xds
