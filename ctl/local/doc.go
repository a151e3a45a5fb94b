// Package local is the engine of local mode (`ambitctl local`): a whole
// ambient mesh on one Linux machine, with the same binaries and code paths
// as in Kubernetes; only the config source and the pod lifecycle differ.
//
// Layout (DESIGN.md section 3). A backbone network namespace ambitl-net
// holds the bridge br0 (172.30.0.1/24), where istiod listens: 15012 for
// the CA and xDS (TLS gRPC), 8080 for /ready. Node i is the namespace
// ambitl-node-<name>, joined to the backbone by a veth (eth0,
// 172.30.0.(10+i)/24), forwarding, with routes to the other nodes' pod
// CIDRs (10.244.j.0/24); its cni-agent and ztunnel run there. Pod
// namespaces (ambitl-pod-<ns>-<pod>) are wired by the node's CNI chain
// (bridge + host-local, then ambit-cni appended by the agent) invoked through
// libcni from inside the node namespace, as a container runtime would. There
// is no kube-proxy: service VIPs work only through the mesh.
//
// Config (the Kubernetes code path). The cluster is written twice: the
// cluster state file the agents watch (pkg/localcluster), and istiod's
// --config-dir, Kubernetes objects rendered by ConfigFiles (pure,
// deterministic; one file per kind, each written atomically and only when
// it changed). istiod (--config-source dir --tunnel annotation) derives the
// workload API from it with istiod/ambient and serves it by delta ADS; the
// ztunnels take xDS from it. CheckConfig runs istiod's decoder and builder
// before anything is applied and refuses policies istiod would reject or
// not enforce at ztunnel. After each change syncZtunnels waits until every
// ztunnel's /config_dump holds what the builder derives.
//
// Capture state reaches istiod as Istio's annotation
// ambient.istio.io/redirection=enabled, which ambitctl writes in place of
// the node agent (Paths.Redirection records it): a new pod is written to
// the config dir as Pending (its node and service account, no IP, so no
// workload) before its CNI ADD, as on Kubernetes, and with its IP after it,
// marked when the agent's Check says
// enrolled and captured (or, the agent not answering, when it is enrolled:
// a successful CNI ADD of an enrolled pod means captured). A label change
// that enrolls a pod marks it before the agent captures it; one that
// un-enrolls it drops the mark only after the agent released it (relabel).
// In between connections to the pod fail, never go in plaintext; a pod that
// does not converge keeps its mark and is reported.
//
// State (Paths): the applied topology, the cluster state file, the config
// dir, the redirection marks, istiod's CA dir and token file, per-node
// sockets and CNI config, logs, and procs.json, which records every process
// started (pid and start time) so that status and down find them; a
// process that cannot be recorded (a full state dir) is killed at once, and
// a readiness answer counts only when it comes from the recorded process
// (alive, holding the listening socket of its readiness endpoint).
//
// Credentials: each node's ztunnel gets its own token (Paths.NodeToken,
// mode 0600), an entry with that node in istiod's token file: istiod issues
// it only the identities of the pods its config dir puts on that node and
// serves it xDS only as that node's ztunnel (istiod/ca, istiod/xds). Pods
// share the host's filesystem: they are no isolation boundary.
// Processes are started with nsenter as their own process groups. Stop and
// Start take one of them down and up again (its recorded command,
// environment and netns), marking it stopped in procs.json in between; the
// pods are not touched. Starting istiod waits for /ready and for every
// ztunnel to re-sync; while istiod is stopped the ztunnels keep their last
// state.
//
// Concurrency: Up, Apply, Delete, Stop, Start and Down take an exclusive
// flock beside the state dir (Down removes the lock file as well); Status
// and Exec only read. Every namespace name starts with ambitl-, so Down
// finds and removes leftovers of a crashed run (and the processes inside
// them) even without procs.json. Network namespace names are global: one
// local mesh per machine.
package local
