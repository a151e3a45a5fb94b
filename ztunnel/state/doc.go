// Package state holds ztunnel's view of the mesh: workloads, services and
// authorization policies in Istio's workload API types
// (istio.io/istio/pkg/workloadapi and .../security).
//
// Writers are the xDS handler and the local config loader (Watch). They
// write whole states with Store.Set or deltas with Store.Apply (resource
// names as in delta xDS: a workload's uid, a service's
// "namespace/hostname", a policy's "namespace/name"). Every resource is
// validated first; an invalid one is rejected with a *ResourceError naming
// it and the field (wrapping ErrInvalid) and the others in the same write
// still apply. All errors of a write are returned joined. The Store takes
// ownership of the resources written: it fills elided defaults in place
// (trust_domain, service_account) and callers must not modify them after.
//
// Readers (proxies, the router, policy) call Store.Load for a *View: an
// immutable, internally consistent snapshot, swapped atomically on each
// write. Load is one atomic load; a connection should use one View from
// start to decision. Writers are serialized.
//
// Writes are incremental: a write of k resources into a state of N costs
// O(k·log N), not O(N) (Set, which replaces everything, is O(size of the
// new state)). Every index is a persistent hash map (pmap.go: a 32-way
// hash array mapped trie, CHAMP layout, path copying): a write copies only
// the ~log32 N nodes on the paths it touches and shares the rest with the
// previous View, so an old View never changes and publishing stays one
// atomic pointer store. Nodes made by the current write are edited in place
// (they carry the write's generation, the new View's version), so a bulk
// write such as an initial sync allocates O(k) nodes, not O(k·log N).
// Derived indexes are maintained from each resource's old and new value:
// the address index keeps, per address, every claimant with the latest
// write first (latest write wins; removing the winner exposes the next);
// a service's endpoints and a namespace's (or the global) policies are
// immutable sorted slices, merged once per touched key per write
// (O(length of that slice)); service CIDRs are a short list re-sorted only
// when a CIDR changes.
//
// Why a trie rather than copy-on-write shards of Go maps: shards copy
// N/shards entries per touched shard per index, which grows with N, and a
// fixed shard count either wastes memory at small N or copies hundreds of
// entries at 50k; the trie's write cost stays ~log32 N node copies. The
// price is on reads: an address lookup walks ~3 levels for 11k resources,
// ~1.2-1.4x a Go map (tens of nanoseconds); lookups by namespace and
// hostname hash the parts without building the key, so they do not
// allocate, unlike the map version.
//
// Subscribe returns a channel that receives a (coalesced) signal after
// every write; subscribers re-read Load and, e.g., re-check policy on open
// connections. Signals are level-triggered: only "something changed".
//
// Policy selection (View.PoliciesFor), as Istio's ztunnel does it: GLOBAL
// policies in the root namespace (Options.RootNamespace, default
// istio-system), NAMESPACE policies of the workload's namespace, and the
// policies named in the workload's authorization_policies (istiod lists
// WORKLOAD_SELECTOR policies and the converted STRICT PeerAuthentication
// there). A GLOBAL policy outside the root namespace is rejected by
// validation. Names a workload lists that are not (yet) known are skipped.
//
// The local config file (--local-config) is YAML with top-level
// `workloads`, `services` and `policies` lists in the protojson form of the
// same types (lowerCamel or snake_case field names), except that IP
// addresses are written as text where the proto has bytes; see ParseConfig.
// Dump returns the state in that same format, so a dump can be loaded back.
package state
