// Package local is the engine of local mode (`ambitctl local`): a whole
// ambient mesh on one Linux machine, with the same binaries and code paths
// as in Kubernetes; only the config source and the pod lifecycle differ.
//
// Layout (DESIGN.md section 3). A backbone network namespace ambitl-net
// holds the bridge br0 (172.30.0.1/24), where istiod listens as the CA.
// Node i is the namespace ambitl-node-<name>, joined to the backbone by a
// veth (eth0, 172.30.0.(10+i)/24), forwarding, with routes to the other
// nodes' pod CIDRs (10.244.j.0/24); its cni-agent and ztunnel run there.
// Pod namespaces (ambitl-pod-<ns>-<pod>) are wired by the node's CNI chain
// (bridge + host-local, then ambit-cni appended by the agent) invoked through
// libcni from inside the node namespace, as a container runtime would. There
// is no kube-proxy: service VIPs work only through the mesh.
//
// State (Paths): the applied topology, the cluster state file the agents
// watch (pkg/localcluster), ztunnel's --local-config generated from both
// (ZtunnelConfig, pure), istiod's CA dir and token file, per-node sockets
// and CNI config, logs, and procs.json, which records every process started
// (pid and start time) so that status and down find them. Processes are
// started with nsenter as their own process groups. Stop and Start take one
// of them down and up again (its recorded command, environment and netns),
// marking it stopped in procs.json in between; the pods are not touched.
//
// Concurrency: Up, Apply, Delete, Stop, Start and Down take an exclusive
// flock beside the state dir (Down removes the lock file as well); Status
// and Exec only read. Every namespace name starts with ambitl-, so Down
// finds and removes leftovers of a crashed run (and the processes inside
// them) even without procs.json. Network namespace names are global: one
// local mesh per machine.
package local
