// Package kube is istiod's Kubernetes config source: a config.Source fed by
// client-go shared informers on Namespaces, Pods, Services, EndpointSlices
// (discovery.k8s.io/v1) and ServiceAccounts, and by istio.io/client-go
// informers on security.istio.io/v1 AuthorizationPolicy and
// PeerAuthentication.
//
// # Reconcile
//
// Level-triggered: every informer event (add, update, delete, resync) only
// records its object's key (per kind) and adds the one key of a
// rate-limited workqueue; a single worker takes the key, builds the next
// config.Snapshot from the informers' caches and publishes it (Snapshot,
// then a coalescing signal on Changes). A build reuses the previous
// snapshot's map of a kind without events and re-reads only the recorded
// keys of the others (copy on write: a published snapshot never changes),
// so an unchanged object keeps its pointer; the first build, and the first
// after a policy informer starts, read the whole cache of the kind. Events that arrive while a rebuild runs are folded into one more
// rebuild. A rebuild is refused (and retried with the queue's rate limiter)
// while any started informer has not synced, so a snapshot never lacks a
// kind it should hold (policies missing from a snapshot would allow traffic
// they deny).
//
// The first snapshot is published only after every informer's cache has
// synced. Informers list and then watch; after a watch breaks (an API
// server restart, a network cut, an expired resource version) they list
// again, so a restart of istiod or of the API server loses nothing: the next
// rebuild sees the whole current state. The resync period (Options.Resync)
// replays every cached object as an update, forcing a rebuild now and then
// even when no event came.
//
// # Istio CRDs
//
// When the AuthorizationPolicy or PeerAuthentication CRD is not installed,
// Run does not fail: it logs a warning naming the missing resource and how to
// install it, treats that kind as empty, and polls the API server's discovery
// every Options.CRDPollInterval; once the CRD appears its informer starts and
// the next snapshot (after that informer synced) holds the policies.
//
// # Pods for the CA
//
// Source also answers the CA's node-authorization questions from its pod
// cache (Pod, PodsOnNode; the cache is indexed by spec.nodeName), so istiod
// watches pods once.
//
// Objects in the caches (and so in snapshots) have their managedFields
// dropped; they are shared and must not be modified.
package kube
