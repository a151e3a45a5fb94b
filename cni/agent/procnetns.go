package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// ErrNoPodProcess: no process of the pod runs outside the node's network
// namespace (the sandbox is not up, or the pod is gone).
var ErrNoPodProcess = errors.New("no process of the pod found")

// NetnsFinder finds the network namespace of a running pod whose netns the
// pod source does not record. Implementations are safe for concurrent use.
type NetnsFinder interface {
	// FindNetns returns a path of the pod's network namespace, or an
	// error wrapping ErrNoPodProcess. The agent still verifies the netns
	// (Config.Verifier) after opening the path.
	FindNetns(ctx context.Context, pod Pod) (string, error)
}

// ProcNetnsFinder finds a pod's netns as Istio's node agent does: a
// process whose cgroup names the pod's UID (kubelet's pod<uid> element, see
// PodUIDsOfCgroup) is the pod's, and its /proc/<pid>/ns/net the pod's
// netns. Processes in the agent's own network namespace (the node's; the
// agent runs with host network) are skipped, so a host-network pod has no
// netns to find.
type ProcNetnsFinder struct {
	// Proc is the host's /proc ("/proc" if empty); the agent needs the
	// host's PID namespace.
	Proc string
}

// FindNetns implements NetnsFinder.
func (f ProcNetnsFinder) FindNetns(_ context.Context, pod Pod) (string, error) {
	want := strings.ToLower(pod.UID)
	var found string
	hostProcs := 0
	err := f.scan(func(uid, path string, inHost bool) bool {
		if uid != want {
			return true
		}
		if inHost {
			hostProcs++
			return true
		}
		found = path
		return false
	})
	switch {
	case err != nil:
		return "", err
	case found != "":
		return found, nil
	case hostProcs > 0:
		return "", fmt.Errorf("%w: pod %s (uid %s) has %d processes, all in the node's network namespace (host network?)", ErrNoPodProcess, pod.Key(), pod.UID, hostProcs)
	}
	return "", fmt.Errorf("%w: no process in %s has a cgroup naming pod%s (pod %s): its sandbox is not running yet or the pod is gone", ErrNoPodProcess, f.proc(), pod.UID, pod.Key())
}

// Index returns, by pod UID (lower case), a netns path of every pod with a
// process outside the node's network namespace: FindNetns for all pods in
// one pass over /proc (Discover uses it).
func (f ProcNetnsFinder) Index(context.Context) (map[string]string, error) {
	out := map[string]string{}
	err := f.scan(func(uid, path string, inHost bool) bool {
		if _, ok := out[uid]; !ok && !inHost {
			out[uid] = path
		}
		return true
	})
	return out, err
}

func (f ProcNetnsFinder) proc() string {
	if f.Proc == "" {
		return "/proc"
	}
	return f.Proc
}

// scan calls fn for each process (not the agent) whose cgroup names
// exactly one pod, with that pod's UID, the path of its netns and whether
// that netns is the agent's own, until fn returns false. Processes that
// exit or cannot be read meanwhile are skipped.
func (f ProcNetnsFinder) scan(fn func(uid, path string, inHost bool) bool) error {
	proc := f.proc()
	host, err := netns.IDOfPath("/proc/self/ns/net")
	if err != nil {
		return fmt.Errorf("reading the agent's own netns: %w", err)
	}
	ents, err := os.ReadDir(proc)
	if err != nil {
		return fmt.Errorf("listing processes in %s: %w", proc, err)
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join(proc, e.Name())
		data, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil {
			continue
		}
		uids := PodUIDsOfCgroup(string(data))
		if len(uids) != 1 {
			continue
		}
		path := filepath.Join(dir, "ns", "net")
		id, err := netns.IDOfPath(path)
		if err != nil {
			continue
		}
		if !fn(uids[0], path, id == host) {
			return nil
		}
	}
	return nil
}
