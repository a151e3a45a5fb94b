// Package config is istiod's config source: the Kubernetes-style objects the
// ambient index is derived from (Namespace, Pod, Service, ServiceAccount,
// EndpointSlice, AuthorizationPolicy, PeerAuthentication), gathered into an
// immutable Snapshot.
//
// Two sources fill it. This package holds local mode's: a directory of YAML
// (or JSON) files, each with one or more documents separated by "---", as
// `ambitctl local apply` writes them (DirSource, LoadDir, WatchDir). The
// Kubernetes informer source (written separately) implements the same Source
// interface, so istiod's ambient index does not know which one feeds it.
//
// # The Source contract
//
// A Source publishes whole snapshots, level-triggered: Snapshot returns the
// latest complete view (never a partial one); after each new snapshot a value
// is sent on Changes, which has a buffer of one and coalesces, so a slow
// reader sees the latest state, not every intermediate one. Run blocks until
// its context ends. Snapshots and the objects in them are shared and must not
// be modified.
//
// # Decoding local files
//
// Every document is decoded by apiVersion/kind with strict field checking:
// an unknown or misspelt field, a duplicate key, a wrong type or a missing
// name rejects that object only, with an *ObjectError naming the file, the
// document index, the object (Kind namespace/name) and the field path
// (e.g. spec.rules[0].from[0].source.principal); the other objects still
// apply. A later definition of an object already defined (same kind,
// namespace and name) is rejected and the first kept (files are read in name
// order). Documents that are empty or hold only comments are skipped.
// `kind: List` documents are unpacked.
//
// The defaults the Kubernetes API server would apply are applied (there is no
// API server in local mode): metadata.namespace "default" for namespaced
// kinds; Service port protocol TCP and targetPort = port; container port
// protocol TCP; Pod serviceAccountName "default". What the API server's
// validation (and Istio's validating webhook) would refuse is refused too,
// for the fields the ambient index reads: pod and service IPs, port numbers,
// policy ports and IP blocks, portLevelMtls without a selector.
//
// Files whose names end in .yaml, .yml or .json are read, in the directory
// itself only (no recursion); names starting with "." are skipped (editors'
// and atomic writers' temporaries).
package config
