package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

func TestPodUIDsOfCgroup(t *testing.T) {
	const uid = "4b0e8a4c-3d2f-4c1e-9a7b-0c1d2e3f4a5b"
	for _, tc := range []struct {
		name, data string
		want       []string
	}{
		{"cgroupfs v1", "12:pids:/kubepods/burstable/pod" + uid + "/0123abcd\n11:memory:/kubepods/burstable/pod" + uid + "/0123abcd\n", []string{uid}},
		{"systemd v2", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-0123.scope\n", []string{uid}},
		{"guaranteed, upper case", "0::/kubepods/pod" + strings.ToUpper(uid) + "/x\n", []string{uid}},
		{"cgroup namespace relative", "0::/../../kubepods-burstable-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-1.scope\n", []string{uid}},
		{"two pods", "1:cpu:/kubepods/pod" + uid + "/a\n2:pids:/kubepods/pod11111111-2222-3333-4444-555555555555/b\n", []string{"11111111-2222-3333-4444-555555555555", uid}},
		{"no pod", "0::/system.slice/sshd.service\n1:name=systemd:/user.slice\n", nil},
		{"not a pod element", "0::/ipod" + uid + "/x\n", nil},
		{"uid too long", "0::/kubepods/pod" + uid + "0/x\n", nil},
		{"malformed lines", "garbage\n0:/pod" + uid + "\n", nil},
		{"empty", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := agent.PodUIDsOfCgroup(tc.data); !slices.Equal(got, tc.want) {
				t.Fatalf("PodUIDsOfCgroup = %v, want %v", got, tc.want)
			}
		})
	}
}

// nsID returns the namespace ID of path.
func nsID(t *testing.T, path string) netns.ID {
	t.Helper()
	id, err := netns.IDOfPath(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// refused asserts err wraps ErrForeignNetns and mentions every part.
func refused(t *testing.T, err error, parts ...string) {
	t.Helper()
	if !errors.Is(err, agent.ErrForeignNetns) {
		t.Fatalf("err = %v, want ErrForeignNetns", err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not mention %q", err, p)
		}
	}
}

func TestRecordVerifier(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.New(t, prefix+"rec-a").Close()
	netnstest.New(t, prefix+"rec-b").Close()
	pathA, pathB := netns.Path(prefix+"rec-a"), netns.Path(prefix+"rec-b")
	v := agent.RecordVerifier{Record: "local mode's cluster state"}
	pod := agent.Pod{UID: "u-a", Name: "a", Namespace: "demo", Netns: pathA}
	ctx := context.Background()
	if err := v.VerifyNetns(ctx, pod, pathA, nsID(t, pathA)); err != nil {
		t.Fatalf("own netns refused: %v", err)
	}
	// The same namespace by another path (a process's link) is the same.
	if err := v.VerifyNetns(ctx, pod, "/proc/x/ns/net", nsID(t, pathA)); err != nil {
		t.Fatalf("own netns by another path refused: %v", err)
	}
	err := v.VerifyNetns(ctx, pod, pathB, nsID(t, pathB))
	refused(t, err, pathB, "demo/a", "u-a", "local mode's cluster state records "+pathA)
	if errors.Is(err, agent.ErrNetnsUnrecorded) {
		t.Fatal("a foreign netns reported as unrecorded")
	}
	pod.Netns = ""
	err = v.VerifyNetns(ctx, pod, pathA, nsID(t, pathA))
	if !errors.Is(err, agent.ErrNetnsUnrecorded) {
		t.Fatalf("no record: err = %v, want ErrNetnsUnrecorded", err)
	}
	refused(t, err, pathA, "demo/a", "has no netns for the pod")
}

// startIn starts `sleep` in the named netns and returns its pid once it
// is in the namespace; it is killed at the end of the test.
func startIn(t *testing.T, nsName string) int {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", nsName, "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting sleep in %s: %v", nsName, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	want := nsID(t, netns.Path(nsName))
	eventually(t, "sleep runs in "+nsName, func() bool {
		id, err := netns.IDOfPath(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
		return err == nil && id == want
	})
	return cmd.Process.Pid
}

// intoCgroup moves pid into a new cgroup at rel (a path like kubelet's)
// below a test directory of a writable hierarchy, removed at the end of
// the test. It returns false when no hierarchy can be written.
func intoCgroup(t *testing.T, pid int, rel string) bool {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		base := filepath.Join(root, fmt.Sprintf("ambt-agent-%d", os.Getpid()))
		dir := filepath.Join(base, rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			continue
		}
		cleanup := func() {
			// Move the process out, then remove the directories, deepest first.
			_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
			for d := dir; strings.HasPrefix(d, base); d = filepath.Dir(d) {
				_ = os.Remove(d)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			cleanup()
			continue
		}
		t.Cleanup(cleanup)
		return true
	}
	return false
}

func TestProcVerifierRealProcesses(t *testing.T) {
	netnstest.RequireRoot(t)
	const uidA = "0a0a0a0a-1111-4222-8333-444444444444"
	const uidB = "0b0b0b0b-1111-4222-8333-444444444444"
	names := map[string]string{}
	for _, n := range []string{"pa", "pb", "plain", "empty"} {
		names[n] = prefix + "proc-" + n
		netnstest.New(t, names[n]).Close()
	}
	path := func(n string) string { return netns.Path(names[n]) }
	pidA := startIn(t, names["pa"])
	pidB := startIn(t, names["pb"])
	pidPlain := startIn(t, names["plain"])
	if !intoCgroup(t, pidA, "kubepods/burstable/pod"+uidA) ||
		!intoCgroup(t, pidB, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+strings.ReplaceAll(uidB, "-", "_")+".slice") {
		netnstest.SkipOrFail(t, "no writable cgroup hierarchy to put a process into a pod's cgroup")
	}
	podA := agent.Pod{UID: uidA, Name: "a", Namespace: "demo"}
	podB := agent.Pod{UID: uidB, Name: "b", Namespace: "demo"}
	v := agent.ProcVerifier{}
	ctx := context.Background()
	verify := func(v agent.NetnsVerifier, pod agent.Pod, n string) error {
		return v.VerifyNetns(ctx, pod, path(n), nsID(t, path(n)))
	}

	if err := verify(v, podA, "pa"); err != nil {
		t.Fatalf("pod a's own netns (cgroupfs naming): %v", err)
	}
	if err := verify(v, podB, "pb"); err != nil {
		t.Fatalf("pod b's own netns (systemd naming): %v", err)
	}
	refused(t, verify(v, podB, "pa"), path("pa"), "is pod uid "+uidA+"'s", "process "+strconv.Itoa(pidA), "demo/b", uidB)
	refused(t, verify(v, podA, "plain"), path("plain"), "process "+strconv.Itoa(pidPlain), "belongs to no pod", "demo/a")
	refused(t, verify(v, podA, "empty"), "no process runs in netns "+path("empty"), "pod"+uidA)
	// The host's netns (the test's own): its processes are in no pod.
	host := exec.Command("sleep", "300")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = host.Process.Kill(); _ = host.Wait() })
	refused(t, v.VerifyNetns(ctx, podA, "/proc/self/ns/net", nsID(t, "/proc/self/ns/net")), "belongs to no pod")

	// With the annotation fallback (test nodes): a netns no pod's process
	// runs in is decided by the record; a netns of another pod never is.
	fb := agent.ProcVerifier{Fallback: agent.RecordVerifier{Record: "annotation " + agent.NetnsAnnotation}}
	podA.Netns = path("empty")
	if err := verify(fb, podA, "empty"); err != nil {
		t.Fatalf("fallback, recorded empty netns: %v", err)
	}
	podA.Netns = path("plain")
	if err := verify(fb, podA, "plain"); err != nil {
		t.Fatalf("fallback, recorded netns with a non-pod process: %v", err)
	}
	refused(t, verify(fb, podA, "empty"), "annotation "+agent.NetnsAnnotation+" records "+path("plain"))
	podB.Netns = path("pa")
	refused(t, verify(fb, podB, "pa"), "is pod uid "+uidA+"'s")
}

// TestProcVerifierFakeProc runs the /proc logic on a made-up /proc whose
// ns/net links point at real namespaces: it needs no cgroup hierarchy.
func TestProcVerifierFakeProc(t *testing.T) {
	netnstest.RequireRoot(t)
	const uid = "0c0c0c0c-1111-4222-8333-444444444444"
	netnstest.New(t, prefix+"fake-a").Close()
	pathA := netns.Path(prefix + "fake-a")
	proc := t.TempDir()
	mk := func(pid int, target, cgroup string) {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, "ns", "net")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk(100, "/proc/self/ns/net", "0::/kubepods/pod"+uid+"/x\n") // another netns
	mk(200, pathA, "0::/system.slice/foo.service\n")
	v := agent.ProcVerifier{Proc: proc}
	pod := agent.Pod{UID: uid, Name: "c", Namespace: "demo"}
	refused(t, v.VerifyNetns(context.Background(), pod, pathA, nsID(t, pathA)), "process 200", "belongs to no pod")
	mk(300, pathA, "0::/kubepods/pod"+uid+"/pause\n")
	if err := v.VerifyNetns(context.Background(), pod, pathA, nsID(t, pathA)); err != nil {
		t.Fatalf("netns with the pod's process: %v", err)
	}
	refused(t, agent.ProcVerifier{Proc: filepath.Join(proc, "missing")}.VerifyNetns(context.Background(), pod, pathA, nsID(t, pathA)), "listing processes")
}
