// Package realnode runs a real Kubernetes node for end-to-end tests: a
// kubelet (built from k8s.io/kubernetes like the API server) with containerd
// (v2, built with CGO off), runc (Debian's) and the bridge CNI, joined to a
// test cluster from package e2e/kube/cluster. Pods get real sandboxes,
// images, cgroups, CNI ADD/DEL, logs, port-forward and exec through the API
// server. It is test infrastructure, not product code; it needs root.
//
// # Binaries
//
// build.sh (run by `make deps`, or by EnsureBinaries on first use) builds
// containerd, ctr and containerd-shim-runc-v2 into
// $AMBIT_CACHE/containerd-v2.4.2/bin and crictl into
// $AMBIT_CACHE/crictl-v1.37.0/bin, installs runc from Debian, and has
// ../build.sh build kubelet and kube-scheduler next to kube-apiserver. All
// cached by version; a warm run does nothing.
//
// # Host layout (why the node is in a netns)
//
// containerd and kubelet run in the node's own network namespace
// Prefix+name (setns through nsenter, so they share the host's mount
// namespace and mounts propagate between them), whose eth0 is one end of a
// veth pair; the other end, Prefix+name in the host, holds HostIP
// (172.28.i.1/30), the node NodeIP (172.28.i.2), and the host routes the
// node's PodCIDR (10.247.i.0/24) through it. Pods, the bridge cni0, CNI's
// masquerade rules and host-network pods all live in the node's namespace,
// so the host keeps one link and one route. The API server listens on the
// host's loopback only, which the node cannot reach: a forwarder in the
// test process listens at HostIP:<the API server's port> and the kubelet's
// kubeconfig points there (tls-server-name localhost). The API server
// reaches the kubelet at NodeIP:10250 over the link (logs, exec,
// port-forward), authenticating with the cluster's kube-apiserver-kubelet-
// client certificate (group system:masters); the kubelet authenticates it
// against the cluster CA and authorizes it by webhook (SubjectAccessReview).
// The kubelet's serving certificate is self-signed (the API server does not
// verify kubelets). kube-proxy (iptables mode, conntrack limits left alone)
// runs in the node's netns too, so ClusterIP Services work from the node and
// its pods; Start publishes the forwarder as the kubernetes Service's
// endpoint (EndpointSlice default/kubernetes-realnode), so in-cluster
// clients reach the API server at 10.96.0.1:443 (its certificate names that
// address). Options.NoKubeProxy leaves it out.
//
// Pods' network namespaces are bind-mounted under containerd's state dir
// (RunDir), or at /var/run/netns/cni-<uuid> with Options.PodNetnsInVarRun
// (containerd's default, what a CNI agent that mounts /var/run/netns
// expects). The node's CNI dirs are its own (Node.CNIBinDir, CNIConfDir,
// under Dir unless given): a chart installed on the node gets them as its
// CNI bin and conf dir values. Host-network pods run in the node's netns.
//
// # Kubelet configuration
//
// failCgroupV1: false and cgroupDriver: cgroupfs (the host is cgroup v1
// hybrid without systemd); cgroupRoot /ambtn/<name>, created by Start in
// every hierarchy, so pods stay under the test's cgroup (containerd, its
// shims and kubelet are in /ambtn/<name>/runtime); failSwapOn false; no
// static pods; evictionHard at 1% of disk and 50Mi of memory and image GC
// at 100%, so a busy CI disk neither evicts pods nor removes imported
// images; webhook authentication and authorization; node status every 2s.
// kubelet sets vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
// kernel.panic_on_oops and kernel.keys.root_max{keys,bytes} at start: Start
// records them in RunRoot/sysctls.json first and Stop (or the next run's
// Cleanup, after a crash) writes them back.
//
// # Images
//
// No registry is reachable: every image is imported from a tarball with
// `ctr -n k8s.io images import` (ImportImage, Options.Images) and pods use
// imagePullPolicy Never or IfNotPresent. The sandbox image PauseImage is
// containerd's pinned sandbox image, built by BuildPauseImage from the
// Pause spec of deploy/images (Options.PauseImage and PauseImageTar use
// another, e.g. `make images`' bin/images/pause.tar). BuildImage builds any
// deploy/images Spec into a tarball, e.g. a test workload.
//
// # Lifecycle
//
// Start removes every leftover of Prefix first (Cleanup: processes in the
// /ambtn cgroups, mounts under DataRoot and RunRoot, netns and links named
// Prefix*, the cgroups, the directories, the saved sysctls), then creates
// the node and returns once its Node is Ready. Stop kills kubelet,
// containerd, the shims and every container (by cgroup), unmounts what they
// mounted (rootfs, shm, netns bind mounts, volume tmpfs), deletes the netns,
// link and cgroups, the Node object and the directories (kept with
// Options.Keep or AMBIT_KUBE_KEEP=1, for the logs in Dir/logs), and
// restores the sysctls. One node per machine at a time: callers hold
// /tmp/ambit-kube.lock (Prefix is fixed).
//
// # Seen on this machine (cgroup v1 hybrid, kernel 6.18, no systemd)
//
// Works: Node Ready ~13s after Start (kubelet itself ~3s; the rest is
// building the pause image and starting containerd), a pod Running ~1s
// after creation, logs and port-forward through the API server, a ClusterIP
// Service, deletion in ~2s. Two things had to be worked around:
//   - The host withholds CAP_SYS_RESOURCE even from root, so no process may
//     lower its oom_score_adj. runc failed every sandbox ("runc create
//     failed: unable to start container process: can't get final child's
//     PID from pipe: EOF"; with runc --debug: "nsexec: failed to update
//     /proc/self/oom_score_adj: Permission denied" at -998). containerd runs
//     with restrict_oom_score_adj = true and kubelet with oomScoreAdj 0.
//   - kube-controller-manager's --controllers is a list flag, so a repeated
//     flag appends and cannot re-enable the node lifecycle controller the
//     cluster package disables: the kubelet's not-ready taint stayed and
//     pods were Unschedulable. cluster.Options.NodeLifecycle runs it.
//
// containerd logs that cgroup v1 support is deprecated; kubelet runs with
// failCgroupV1: false and warns likewise.
package realnode
