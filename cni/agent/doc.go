// Package agent is the logic of the node agent (cni-agent): it serves the
// ambit-cni plugin (it implements agentapi.Handler), programs capture rules
// inside enrolled pods' network namespaces (package capture) and hands those
// pods to ztunnel over ZDS (package zds).
//
// # Pod source
//
// The agent learns about the pods of its node from a PodSource: local mode's
// cluster state file (LocalSource) or the API server (KubeSource: informers
// on the node's Pods and on Namespaces). Whether a pod is enrolled is decided
// by package enrollment from the pod's and its namespace's labels.
//
// In Kubernetes the agent also marks captured pods with the annotation
// ambient.istio.io/redirection: enabled and removes it on release (an
// Annotator; Reconcile keeps the marks level-triggered). Kubernetes does not
// publish a pod's netns: the agent learns it from CNI ADD, and for a pod
// that was running before it became enrolled, from the node's /proc
// (Config.NetnsFinder, ProcNetnsFinder: a process whose cgroup names the
// pod's UID, as Istio's node agent finds it).
//
// # State and ownership
//
// The Agent tracks, in memory and by pod UID, the pods it has captured: their
// rules are installed and they are (or are about to be) known to ztunnel.
// That set is the ZDS snapshot (Agent.Snapshot). All work on one pod (Enroll,
// Release, Check, and the reconciler's steps) is serialised by a per-UID lock,
// so the reconciler never races a CNI ADD in flight for the same pod.
//
// # Whose netns
//
// A netns path comes from the CNI ADD (Enroll, i.e. whoever can reach the
// agent's socket), from the pod source (Reconcile, Discover; on test
// nodes an annotation anyone allowed to patch the pod can write) or from
// the NetnsFinder (a /proc/<pid>/ns/net whose process may exit and its
// pid be reused before the open).
// Before capturing a netns for a pod or handing it to ztunnel, the agent
// opens it once and checks that open file (not the path) with
// Config.Verifier: RecordVerifier (local mode: the cluster state records
// the pod's netns; compared by device and inode) or ProcVerifier
// (Kubernetes: a process in the netns has a cgroup naming the pod's UID;
// a netns no pod's process runs in is refused unless a Fallback, the
// annotation on test nodes, accepts it, or see below). A netns already captured for
// another pod is refused too. A refusal (ErrForeignNetns) captures nothing
// and tells ztunnel nothing; its message names the pod, the netns and what
// was expected. The verified file stays open while the pod is tracked:
// ZDS snapshots and releases use it, never the path again. Release of a
// pod the agent does not track refuses a netns captured for a tracked pod.
//
// A runtime that runs CNI ADD before it starts the sandbox (containerd)
// names a netns no process runs in yet, which ProcVerifier cannot
// attribute (ErrNetnsNoProcess). Enroll, and only Enroll, accepts such a
// netns as unverified, when no tracked pod holds it; Run checks it again
// every Config.VerifyInterval: a process of the pod verifies it; a
// process of another pod releases the pod (rules removed, ztunnel told);
// a process of no pod (privileged: it entered the netns; e.g. the
// sandbox's own, before it joins the pod's cgroup) changes nothing. The reasoning: the path comes from the runtime over the
// agent's socket (root only), not from a pod annotation; a netns that no
// process runs in and no other pod's capture holds can send no traffic,
// so what ztunnel does for it under the pod's identity carries no other
// workload's traffic; the first process that could send any is checked,
// and a foreign one ends the capture. Only the window before any process
// exists is unverified. A netns the pod source records or a NetnsFinder
// finds is never accepted without a process.
//
// # Fail closed
//
// Enroll answers only once the rules are in place and ztunnel acked the pod.
// When the hand-off to ztunnel fails after the rules were installed, the
// rules are deliberately left in place: CNI ADD fails, so the runtime tears
// the sandbox down (Release removes them) or retries (Enroll reinstalls
// them), and meanwhile the pod's connections are redirected to ports nobody
// listens on, i.e. dropped, never sent in plaintext.
//
// # Reconcile and restart
//
// Reconcile(ctx, uid) is level-triggered and idempotent for one pod: a
// running (has IPs) enrolled pod not captured is captured and added; a
// captured pod no longer enrolled or gone from the source is released.
// Run feeds a work queue keyed by pod UID (client-go's rate-limiting
// queue, as sample-controller's processNextWorkItem uses it) with every
// pod on each pod source change and every ResyncInterval; a failed pod is
// retried after its own exponential backoff (RetryMin to RetryMax, within
// an overall token bucket), logged with the pod's name, while the other
// pods go on.
//
// Before the ZDS server accepts ztunnel (so before any snapshot), call
// Discover: it finds pods whose netns already holds our rules (an earlier
// agent captured them; netns from the source or the NetnsFinder) and
// tracks them without re-adding, so a restart neither forgets nor
// duplicates pods. The agent never removes capture rules on exit, so pods
// stay protected across agent restarts; only an uninstall calls
// ReleaseAll.
package agent
