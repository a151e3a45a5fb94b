// Package testnode plays the kubelet and container runtime of Kubernetes
// nodes for end-to-end tests on a cluster without kubelets (package
// e2e/kube/cluster): for every pod bound to one of its nodes in the API
// server (spec.nodeName set by the test; there is no scheduler) it creates
// the pod's network namespace, runs the node's CNI chain, starts the pod's
// command inside the namespace and writes the pod's IPs and Running/Ready
// status back, so istiod, cni-agent and ztunnel run as on a real node.
// It is test infrastructure, not product code.
//
// # Network
//
// Built with local mode's plumbing (ctl/local) under the prefix ambitk-
// (local mode uses ambitl-, so both can exist): a backbone namespace
// ambitk-net with the bridge br0 at 172.31.0.1/24, a namespace per node
// (ambitk-node-<name>, eth0 at 172.31.0.(10+i), pod CIDR 10.245.i.0/24,
// routes to the other nodes' pod CIDRs) and one per pod (ambitk-pod-<id>).
// The API server listens on the host's loopback, which the nodes cannot
// reach: a TCP forwarder in this process listens in the backbone at
// APIServerAddr (172.31.0.1:6443) and dials the API server from the host.
// The API server's certificate does not name that address: kubeconfigs for
// processes in the nodes (Kubeconfig) set tls-server-name: localhost.
// Forward makes other host servers reachable the same way (e.g. a
// pilot-discovery on the host's loopback, at BackboneIP:15012).
// Nothing is added to the host's network namespace.
//
// # Pods (the test node's contract)
//
//   - A pod bound to a node gets a netns; its path goes into the annotation
//     ambit.dev/netns (cni/agent.NetnsAnnotation) before CNI ADD, for the
//     tests (a cni-agent reads it only with --trust-netns-annotation).
//   - Each pod's process runs in a cgroup named as kubelet's cgroupfs
//     driver names it, PodCgroup: <root>/ambitk-testnode/kubepods/pod<uid>
//     (CgroupParent), in the first writable hierarchy of cgroup v2 (the
//     hybrid layout's /sys/fs/cgroup/unified, or /sys/fs/cgroup) or v1's
//     pids. So a cni-agent finds a running pod's netns from /proc and
//     verifies a netns by its processes' cgroups, as on a real node.
//     Start clears CgroupParent's leftovers; a pod's cgroup is removed
//     with the pod, and CgroupParent at Stop.
//   - CNI ADD runs the node's conflist (bridge + host-local, network
//     NetworkName, in NetD(node)) once the node's cni-agent has appended
//     ambit-cni to it, with K8S_POD_* arguments, from inside the node's
//     namespace, as a runtime would. A failed ADD is retried with backoff
//     and the pod stays Pending (fail closed). A pod annotated
//     WithoutAmbitCNIAnnotation gets the chain without ambit-cni, as if
//     the runtime had read the conflist while the primary CNI had
//     rewritten it.
//   - The command is spec.containers[0].command plus args; the program is
//     looked up in Options.BinDir, then in PATH. It runs in the pod's netns
//     via nsenter with POD_NAME, POD_NAMESPACE and the container's literal
//     env values, and starts after CNI ADD, as containerd starts the
//     sandbox after it. No command: a pause process (sleep infinity) holds
//     the pod's place, as a sandbox does.
//   - Host-network pods get no netns, no CNI and no cgroup: their IP is
//     the node's and their command, if any, runs in the node's namespace.
//   - Status: phase Running, podIP(s), hostIP(s), conditions Ready and
//     ContainersReady True once the command started (no probes).
//   - Deletion: a pod with a deletion timestamp has its process stopped,
//     CNI DEL run, its netns deleted, and is then deleted with grace period
//     0, as a kubelet confirms a deletion. No finalizers.
//
// Start also creates the Node objects (InternalIP, Ready) and deletes them
// at Stop. Start removes leftovers of the prefix first (namespaces and the
// processes in them); Stop removes everything it created, also after a
// failed test.
package testnode
