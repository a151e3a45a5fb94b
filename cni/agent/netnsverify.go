package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Errors of netns verification; test with errors.Is.
var (
	// ErrForeignNetns: the network namespace given for a pod is not the
	// pod's own. The agent captures nothing and tells ztunnel nothing.
	ErrForeignNetns = errors.New("network namespace does not belong to the pod")
	// ErrNetnsUnrecorded: the pod source has no netns recorded for the pod
	// (yet). Wraps ErrForeignNetns. Enroll waits for the record up to
	// Config.PodWait.
	ErrNetnsUnrecorded = fmt.Errorf("%w: no network namespace recorded for the pod", ErrForeignNetns)
	// ErrNetnsNoPodProcess: no process of any pod runs in the network
	// namespace (none at all, or only processes outside pods), so
	// ProcVerifier cannot tell whose it is (yet). Wraps ErrForeignNetns.
	ErrNetnsNoPodProcess = fmt.Errorf("%w: no process of a pod in it", ErrForeignNetns)
	// ErrNetnsNoProcess: no process at all runs in the network namespace.
	// Wraps ErrNetnsNoPodProcess. The agent accepts such a netns on CNI
	// ADD only, as unverified (see the package doc).
	ErrNetnsNoProcess = fmt.Errorf("%w: no sandbox process yet", ErrNetnsNoPodProcess)
)

// NetnsVerifier decides whether a network namespace is a pod's own before
// the agent captures it and hands it to ztunnel (Enroll, Reconcile,
// Discover). Implementations are safe for concurrent use.
type NetnsVerifier interface {
	// VerifyNetns returns nil when the namespace id, opened from path, is
	// pod's. Otherwise it returns an error wrapping ErrForeignNetns that
	// names the pod, the namespace and what was expected.
	VerifyNetns(ctx context.Context, pod Pod, path string, id netns.ID) error
}

// RecordVerifier accepts the namespace the pod source records for the pod
// (Pod.Netns), compared by namespace identity (device and inode), not by
// path. It is the runtime's record in local mode (the cluster state file
// written by ambitctl local before the pod's CNI ADD). On Kubernetes the
// record is NetnsAnnotation, which anyone allowed to patch the pod can
// write: use it only on test nodes (ProcVerifier.Fallback).
type RecordVerifier struct {
	// Record names the record in messages, e.g. "local mode's cluster
	// state"; "the pod source" if empty.
	Record string
}

// VerifyNetns implements NetnsVerifier.
func (v RecordVerifier) VerifyNetns(_ context.Context, pod Pod, path string, id netns.ID) error {
	record := v.Record
	if record == "" {
		record = "the pod source"
	}
	if pod.Netns == "" {
		return fmt.Errorf("%w: refusing netns %s (%s) for pod %s (uid %s): %s has no netns for the pod", ErrNetnsUnrecorded, path, id, pod.Key(), pod.UID, record)
	}
	want, err := netns.IDOfPath(pod.Netns)
	if err != nil {
		return fmt.Errorf("%w: refusing netns %s (%s) for pod %s (uid %s): the netns %s records for the pod, %s, cannot be read: %v", ErrForeignNetns, path, id, pod.Key(), pod.UID, record, pod.Netns, err)
	}
	if want != id {
		return fmt.Errorf("%w: netns %s (%s) is not pod %s's (uid %s): %s records %s (%s)", ErrForeignNetns, path, id, pod.Key(), pod.UID, record, pod.Netns, want)
	}
	return nil
}

// ProcVerifier is the Kubernetes NetnsVerifier: it uses the runtime's own
// record of the pod's sandbox, its processes' cgroups, as Istio's node
// agent does. The namespace is the pod's when a process in it (by
// /proc/<pid>/ns/net) has a cgroup naming the pod's UID (kubelet's
// pod<uid> with dashes, cgroupfs driver, or underscores, systemd driver).
// A namespace with a process of another pod is refused. A namespace with
// no process of any pod (none at all, or only processes outside pods) is
// decided by Fallback, or refused without one: with ErrNetnsNoPodProcess,
// ErrNetnsNoProcess when no process at all runs in it.
type ProcVerifier struct {
	// Proc is the host's /proc ("/proc" if empty); the agent needs the
	// host's PID namespace.
	Proc string
	// Fallback decides namespaces no pod's process runs in. A runtime that
	// sets up the network before it starts the sandbox (containerd) has
	// none during CNI ADD. nil refuses them.
	Fallback NetnsVerifier
}

// VerifyNetns implements NetnsVerifier.
func (v ProcVerifier) VerifyNetns(ctx context.Context, pod Pod, path string, id netns.ID) error {
	proc := v.Proc
	if proc == "" {
		proc = "/proc"
	}
	procs, err := procsIn(proc, id)
	if err != nil {
		return fmt.Errorf("%w: refusing netns %s (%s) for pod %s (uid %s): %v", ErrForeignNetns, path, id, pod.Key(), pod.UID, err)
	}
	want := strings.ToLower(pod.UID)
	var outside *nsProc // a process in no pod
	for i, p := range procs {
		switch {
		case len(p.pods) == 1 && p.pods[0] == want:
			return nil
		case len(p.pods) > 0:
			return fmt.Errorf("%w: netns %s (%s) is pod uid %s's (process %d, cgroup %s), not pod %s's (uid %s)",
				ErrForeignNetns, path, id, strings.Join(p.pods, ","), p.pid, p.cgroup, pod.Key(), pod.UID)
		case outside == nil:
			outside = &procs[i]
		}
	}
	if v.Fallback != nil {
		return v.Fallback.VerifyNetns(ctx, pod, path, id)
	}
	if outside != nil {
		return fmt.Errorf("%w: netns %s (%s) is used by process %d, which belongs to no pod (cgroup %s); expected a process of pod %s (uid %s) in it",
			ErrNetnsNoPodProcess, path, id, outside.pid, outside.cgroup, pod.Key(), pod.UID)
	}
	return fmt.Errorf("%w: no process runs in netns %s (%s); expected the sandbox of pod %s (uid %s), a process whose cgroup names pod%s",
		ErrNetnsNoProcess, path, id, pod.Key(), pod.UID, pod.UID)
}

// nsProc is a process found in a namespace.
type nsProc struct {
	pid    int
	pods   []string // pod UIDs its cgroup names, lower case with dashes
	cgroup string   // the first cgroup line, for messages
}

// procsIn lists the processes (thread group leaders, not the agent
// itself) whose network namespace is id. Processes that exit or cannot be
// read meanwhile are skipped.
func procsIn(proc string, id netns.ID) ([]nsProc, error) {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("listing processes in %s: %w", proc, err)
	}
	self := os.Getpid()
	var out []nsProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join(proc, e.Name())
		if got, err := netns.IDOfPath(filepath.Join(dir, "ns", "net")); err != nil || got != id {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
		out = append(out, nsProc{pid: pid, pods: PodUIDsOfCgroup(string(data)), cgroup: first})
	}
	return out, nil
}

// podUIDInCgroup matches kubelet's pod cgroup name: "pod" and the pod UID,
// with dashes (cgroupfs driver: /kubepods/burstable/pod<uid>/...) or
// underscores (systemd driver: kubepods-burstable-pod<uid>.slice), at the
// start of a path element or after a "-".
var podUIDInCgroup = regexp.MustCompile(`(?:^|[/-])pod([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12})(?:$|[/.])`)

// PodUIDsOfCgroup returns the pod UIDs that the contents of a
// /proc/<pid>/cgroup file name (lower case, with dashes), sorted and
// without duplicates; none for a process outside any pod.
func PodUIDsOfCgroup(data string) []string {
	var out []string
	for line := range strings.Lines(data) {
		// hierarchy-ID:controllers:path; the path may contain ':'.
		_, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		_, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		for elem := range strings.SplitSeq(path, "/") {
			for _, m := range podUIDInCgroup.FindAllStringSubmatch(elem, -1) {
				out = append(out, strings.ToLower(strings.ReplaceAll(m[1], "_", "-")))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
