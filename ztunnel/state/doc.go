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
// start to decision. Writers are serialized; each write rebuilds the
// indexes (O(resources)), so batch delta updates into one Apply.
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
