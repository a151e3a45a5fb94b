package agent_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

// faultyBackend fails Install in one netns while its fault is set: the
// capture seam of the agent.
type faultyBackend struct {
	capture.Backend
	target netns.ID
	mu     sync.Mutex
	fault  bool
	fails  int
}

var errInjected = errors.New("injected capture fault")

func (b *faultyBackend) Install(ctx context.Context, ns *os.File, cfg capture.Config) error {
	if id, err := netns.IDOf(ns); err == nil && id == b.target {
		b.mu.Lock()
		fault := b.fault
		if fault {
			b.fails++
		}
		b.mu.Unlock()
		if fault {
			return errInjected
		}
	}
	return b.Backend.Install(ctx, ns, cfg)
}

func (b *faultyBackend) set(fault bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fault = fault
}

func (b *faultyBackend) failures() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fails
}

func captured(a *agent.Agent, uid string) bool { return slices.Contains(a.Captured(), uid) }

// TestRunRetriesFailedPod: a pod whose capture fails is retried by Run
// with a per-pod backoff of a fraction of a second, not at the next resync
// (an hour here), and is captured soon after the fault clears; another
// pod is captured meanwhile, not held up by it.
func TestRunRetriesFailedPod(t *testing.T) {
	e := newEnv(t)
	bad, good := e.pod("q-bad", "mesh", true), e.pod("q-good", "mesh", true)
	fb := &faultyBackend{Backend: e.backend, target: nsID(t, bad.Netns), fault: true}
	e.backend = fb
	e.setPods(bad, good)
	start := time.Now()
	e.start(true) // ResyncInterval: an hour
	z := e.ztunnel()
	eventually(t, "the good pod captured", func() bool { return captured(e.agent, good.UID) })
	t.Logf("good pod captured %v after the agent started", time.Since(start).Round(time.Millisecond))
	e.requireCaptured(good)
	eventually(t, "three failed captures of the bad pod", func() bool { return fb.failures() >= 3 })
	if captured(e.agent, bad.UID) {
		t.Fatal("the bad pod is tracked although its capture failed")
	}
	e.requireNoRules(bad)
	fb.set(false)
	cleared := time.Now()
	// After n failures the next try is at most 100ms*2^n away; the test
	// clears the fault after 3 to 4 of them.
	const bound = 3 * time.Second
	for !captured(e.agent, bad.UID) {
		if time.Since(cleared) > bound {
			t.Fatalf("the bad pod is not captured %v after its fault cleared (%d failures)", bound, fb.failures())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("bad pod captured %v after its fault cleared, after %d failed tries", time.Since(cleared).Round(time.Millisecond), fb.failures())
	e.requireCaptured(bad)
	seen := map[string]bool{}
	for len(seen) < 2 {
		if ev := z.next(t); ev.kind == "add" {
			seen[ev.uid] = true
		} else if ev.kind == "snapshot" {
			for _, u := range ev.uids {
				seen[u] = true
			}
		}
	}
	if !seen[bad.UID] || !seen[good.UID] {
		t.Fatalf("ztunnel got %v, want both pods", seen)
	}
}

// podProcess starts a process in the pod's netns, in a cgroup naming uid
// as kubelet's cgroupfs driver does; it skips (fails under CI) when no
// cgroup hierarchy is writable.
func podProcess(t *testing.T, p localcluster.Pod, uid string) {
	t.Helper()
	pid := startIn(t, filepath.Base(p.Netns))
	if !intoCgroup(t, pid, "kubepods/besteffort/pod"+uid) {
		netnstest.SkipOrFail(t, "no writable cgroup hierarchy to put a process into a pod's cgroup")
	}
}

// TestEnrollBeforeSandbox is containerd's order: CNI ADD runs before any
// process of the pod runs in its netns. The agent accepts the runtime's
// netns as unverified, verifies it once the pod's sandbox runs in it, and
// releases a pod whose netns shows another pod's process instead. A
// reconcile (not an ADD) never accepts a netns without a process.
func TestEnrollBeforeSandbox(t *testing.T) {
	e := newEnv(t)
	e.verifier = agent.ProcVerifier{}
	ok := e.pod("cd-ok", "mesh", false)
	ok.UID = "0e0e0e0e-1111-4222-8333-444444444444"
	victim := e.pod("cd-victim", "mesh", false)
	victim.UID = "0f0f0f0f-1111-4222-8333-444444444444"
	idle := e.pod("cd-idle", "mesh", true) // running, record names an empty netns
	idle.UID = "0d0d0d0d-2222-4222-8333-444444444444"
	e.setPods(ok, victim, idle)
	e.start(true)
	z := e.ztunnel()
	if ev := z.next(t); ev.kind != "snapshot" {
		t.Fatalf("got %+v, want the first snapshot", ev)
	}

	for _, p := range []localcluster.Pod{ok, victim} {
		if r, err := e.enroll(p); err != nil || !r.Enrolled {
			t.Fatalf("Enroll of %s before its sandbox = %+v, %v", p.Key(), r, err)
		}
		if ev := z.next(t); ev.kind != "add" || ev.uid != p.UID {
			t.Fatalf("got %+v, want %s's add", ev, p.Key())
		}
		e.requireCaptured(p)
	}
	if got := e.agent.Unverified(); !slices.Equal(got, []string{ok.UID, victim.UID}) {
		t.Fatalf("Unverified = %v, want both enrolled pods", got)
	}
	if err := e.agent.Reconcile(context.Background(), idle.UID); !errors.Is(err, agent.ErrNetnsNoProcess) {
		t.Fatalf("Reconcile of a running pod whose netns has no process = %v, want ErrNetnsNoProcess", err)
	}
	e.requireNoRules(idle)

	// A process of no pod in ok's netns (as a sandbox process before it
	// joins its pod's cgroup): neither verified nor released.
	startIn(t, filepath.Base(ok.Netns))
	deadline := time.Now().Add(5 * agent.DefaultVerifyInterval)
	for time.Now().Before(deadline) {
		if !captured(e.agent, ok.UID) || !slices.Contains(e.agent.Unverified(), ok.UID) {
			t.Fatalf("a process of no pod in ok's netns changed it: captured %v, unverified %v", e.agent.Captured(), e.agent.Unverified())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ok's sandbox starts: verified, still captured.
	podProcess(t, ok, ok.UID)
	start := time.Now()
	eventually(t, "ok verified", func() bool { return !slices.Contains(e.agent.Unverified(), ok.UID) })
	t.Logf("netns verified %v after the sandbox process started", time.Since(start).Round(time.Millisecond))
	if !captured(e.agent, ok.UID) {
		t.Fatal("ok released after its sandbox started")
	}
	e.requireCaptured(ok)

	// A process of another pod shows up in victim's netns: released.
	podProcess(t, victim, "0a0b0c0d-1111-4222-8333-444444444444")
	eventually(t, "victim released", func() bool { return !captured(e.agent, victim.UID) })
	if ev := z.next(t); ev.kind != "del" || ev.uid != victim.UID {
		t.Fatalf("got %+v, want victim's del", ev)
	}
	e.requireNoRules(victim)
	if got := e.agent.Unverified(); len(got) != 0 {
		t.Fatalf("Unverified = %v, want none", got)
	}
}

// TestRunCapturesRunningPodFromProc: a running pod the source records no
// netns for is captured by Run from the netns of its process (found by
// cgroup in /proc) when its namespace is enrolled.
func TestRunCapturesRunningPodFromProc(t *testing.T) {
	e := newEnv(t)
	e.verifier = agent.ProcVerifier{}
	e.finder = agent.ProcNetnsFinder{}
	p := e.pod("proc-run", "plain", true)
	p.UID = "0a1a2a3a-1111-4222-8333-444444444444"
	podProcess(t, p, p.UID)
	e.noNetns = true // as KubeSource reports pods
	e.setPods(p)
	e.start(true)
	z := e.ztunnel()
	if ev := z.next(t); ev.kind != "snapshot" {
		t.Fatalf("got %+v, want the first snapshot", ev)
	}
	e.requireNoRules(p)
	start := time.Now()
	e.setNamespaceLabel("plain", "ambient")
	if ev := z.next(t); ev.kind != "add" || ev.uid != p.UID || ev.ino != inode(t, p) {
		t.Fatalf("got %+v, want the pod's add with its netns", ev)
	}
	took := time.Since(start)
	t.Logf("running pod captured %v after its namespace was enrolled", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("capture took %v, want within a second", took)
	}
	e.requireCaptured(p)
	if got := e.agent.Unverified(); len(got) != 0 {
		t.Fatalf("Unverified = %v: a netns found from /proc is verified", got)
	}
	// A restarted agent finds the pod's netns from /proc again and tracks
	// it (Discover, one pass over /proc): the reconnecting ztunnel gets it
	// in the snapshot, once.
	e.stopAgent()
	e.start(false)
	if ev := z.next(t); ev.kind != "add" || ev.uid != p.UID || ev.ino != inode(t, p) {
		t.Fatalf("got %+v, want the snapshot's add of the pod", ev)
	}
	if ev := z.next(t); ev.kind != "snapshot" || !slices.Equal(ev.uids, []string{p.UID}) {
		t.Fatalf("got %+v, want the snapshot with the pod", ev)
	}
	if err := e.agent.ReconcileAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	z.expectNone(t) // no duplicate add
	e.stopAgent()
	e.start(true)
	for range 2 { // the snapshot again
		z.next(t)
	}
	e.setNamespaceLabel("plain", "")
	if ev := z.next(t); ev.kind != "del" || ev.uid != p.UID {
		t.Fatalf("got %+v, want the pod's del", ev)
	}
	e.requireNoRules(p)
}

// TestProcNetnsFinder finds a pod's netns by its process's cgroup and
// finds none for a pod without a process or whose process runs in the
// node's (here: the test's) netns.
func TestProcNetnsFinder(t *testing.T) {
	netnstest.RequireRoot(t)
	const uid = "0b1b2b3b-1111-4222-8333-444444444444"
	name := prefix + "find"
	netnstest.New(t, name).Close()
	pid := startIn(t, name)
	if !intoCgroup(t, pid, "kubepods/burstable/pod"+uid) {
		netnstest.SkipOrFail(t, "no writable cgroup hierarchy to put a process into a pod's cgroup")
	}
	f := agent.ProcNetnsFinder{}
	ctx := context.Background()
	path, err := f.FindNetns(ctx, agent.Pod{UID: strings.ToUpper(uid), Name: "a", Namespace: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := nsID(t, path), nsID(t, netns.Path(name)); got != want {
		t.Fatalf("found %s (%s), want %s", path, got, want)
	}
	index, err := f.Index(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := index[uid]; !ok || nsID(t, got) != nsID(t, path) {
		t.Fatalf("Index[%s] = %q, want the pod's netns", uid, got)
	}
	const other = "0c1c2c3c-1111-4222-8333-444444444444"
	_, err = f.FindNetns(ctx, agent.Pod{UID: other, Name: "b", Namespace: "demo"})
	if !errors.Is(err, agent.ErrNoPodProcess) || !strings.Contains(err.Error(), "pod"+other) {
		t.Fatalf("pod without a process: %v", err)
	}
	const host = "0d1d2d3d-1111-4222-8333-444444444444"
	hostProc := exec.Command("sleep", "300")
	if err := hostProc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hostProc.Process.Kill(); _ = hostProc.Wait() })
	if !intoCgroup(t, hostProc.Process.Pid, "kubepods/pod"+host) {
		t.Fatal("cgroup writable a moment ago")
	}
	_, err = f.FindNetns(ctx, agent.Pod{UID: host, Name: "h", Namespace: "demo"})
	if !errors.Is(err, agent.ErrNoPodProcess) || !strings.Contains(err.Error(), "host network") {
		t.Fatalf("pod whose process runs in the node's netns: %v", err)
	}
	if index, err = f.Index(ctx); err != nil || index[host] != "" {
		t.Fatalf("Index lists the host-network pod: %q, %v", index[host], err)
	}
}

// noNetnsSource reports its pods without their netns.
type noNetnsSource struct{ agent.PodSource }

func (s noNetnsSource) Pods() ([]agent.Pod, bool) {
	pods, synced := s.PodSource.Pods()
	for i := range pods {
		pods[i].Netns = ""
	}
	return pods, synced
}

// TestProcNetnsFinderHostProc reads another /proc (the host's mounted in
// the agent's container): a made-up one whose ns/net links point at a
// real namespace.
func TestProcNetnsFinderHostProc(t *testing.T) {
	netnstest.RequireRoot(t)
	const uid = "0e1e2e3e-1111-4222-8333-444444444444"
	netnstest.New(t, prefix+"hostproc").Close()
	target := netns.Path(prefix + "hostproc")
	proc := t.TempDir()
	dir := filepath.Join(proc, "4242")
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "ns", "net")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/kubepods/besteffort/pod"+uid+"/pause\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path, err := agent.ProcNetnsFinder{Proc: proc}.FindNetns(context.Background(), agent.Pod{UID: uid, Name: "a", Namespace: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "ns", "net") || nsID(t, path) != nsID(t, target) {
		t.Fatalf("found %s, want %s/ns/net (%s)", path, dir, target)
	}
}
