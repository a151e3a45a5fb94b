package agent_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

func openNS(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// enrollWith enrolls p with the netns at path instead of its own.
func (e *env) enrollWith(p localcluster.Pod, path string) (agentapi.EnrollResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	r := ref(p)
	r.Netns = path
	return e.agent.Enroll(ctx, agentapi.EnrollRequest{PodRef: r})
}

// requireRefused asserts an enroll failed with ErrForeignNetns and a
// message mentioning every part.
func requireRefused(t *testing.T, resp agentapi.EnrollResponse, err error, parts ...string) {
	t.Helper()
	if err == nil || resp.Enrolled {
		t.Fatalf("Enroll = %+v, %v; want a refusal", resp, err)
	}
	refused(t, err, parts...)
}

// TestEnrollRefusesForeignNetns is the attack of issue 7 in local mode:
// enrolling an enrolled pod with another (not enrolled) pod's netns is
// refused, nothing is captured in that netns and ztunnel gets nothing.
// Nor can a forged record or a release take over a captured pod's netns.
func TestEnrollRefusesForeignNetns(t *testing.T) {
	e := newEnv(t)
	server := e.pod("server", "mesh", true)
	legacy := e.pod("legacy", "plain", true)
	e.setPods(server, legacy)
	e.start(false)
	z := e.ztunnel()
	z.next(t) // empty snapshot

	resp, err := e.enrollWith(server, legacy.Netns)
	requireRefused(t, resp, err, "mesh/server", legacy.Netns, "records "+server.Netns, "nothing captured")
	e.requireNoRules(legacy)
	e.requireNoRules(server)
	z.expectNone(t)
	if got := e.agent.Captured(); len(got) != 0 {
		t.Fatalf("Captured = %v after a refused enroll", got)
	}

	// The pod's own netns still enrolls.
	if r, err := e.enroll(server); err != nil || !r.Enrolled {
		t.Fatalf("Enroll = %+v, %v", r, err)
	}
	if ev := z.next(t); ev.kind != "add" || ev.uid != server.UID || ev.ino != inode(t, server) {
		t.Fatalf("got %+v", ev)
	}

	// A pod outside the mesh may not start in server's netns either: its
	// traffic would leave as server.
	resp, err = e.enrollWith(legacy, server.Netns)
	requireRefused(t, resp, err, "refusing pod plain/legacy", "captured for pod mesh/server")
	e.requireCaptured(server)
	z.expectNone(t)

	// A record claiming server's netns for another enrolled pod (a forged
	// or stale state file) does not hand that netns over again.
	forged := e.pod("forged", "mesh", true)
	forged.Netns = server.Netns
	e.setPods(server, legacy, forged)
	resp, err = e.enroll(forged)
	requireRefused(t, resp, err, "already captured for pod mesh/server", "mesh/forged")
	if err := e.agent.ReconcileAll(context.Background()); !errors.Is(err, agent.ErrForeignNetns) {
		t.Fatalf("Reconcile = %v, want the forged pod refused", err)
	}
	z.expectNone(t)

	// Releasing a pod the agent does not track with server's netns leaves
	// server captured.
	err = e.agent.Release(context.Background(), agentapi.ReleaseRequest{PodRef: agentapi.PodRef{Namespace: "mesh", Name: "ghost", Netns: server.Netns}})
	refused(t, err, "refusing to release pod mesh/ghost", "captured for pod mesh/server")
	e.requireCaptured(server)
	z.expectNone(t)
}

// TestProcVerifierAgent is the Kubernetes check inside the agent: pods'
// sandboxes are processes in pod cgroups. An enroll of pod a with pod b's
// netns is refused; so is a reconcile or a discovery from a record that
// names b's netns for another pod.
func TestProcVerifierAgent(t *testing.T) {
	e := newEnv(t)
	e.verifier = agent.ProcVerifier{}
	mk := func(name, namespace, uid string) localcluster.Pod {
		p := e.pod(name, namespace, true)
		p.UID = uid
		pid := startIn(t, prefix+name)
		if !intoCgroup(t, pid, "kubepods/besteffort/pod"+uid) {
			t.Skip("no writable cgroup hierarchy") // TestProcVerifierRealProcesses fails under CI for it
		}
		return p
	}
	a := mk("ka", "mesh", "0a0a0a0a-aaaa-4222-8333-444444444444")
	b := mk("kb", "plain", "0b0b0b0b-bbbb-4222-8333-444444444444")
	// d is enrolled and running; its record names b's netns, which an
	// earlier agent captured as if for d.
	d := e.pod("kd", "mesh", true)
	d.UID = "0d0d0d0d-dddd-4222-8333-444444444444"
	d.Netns = b.Netns
	// b is not in the source (as a pod the agent cannot see the netns of),
	// so nothing but d's record points at b's netns.
	e.setPods(a, d)
	bns := openNS(t, b.Netns)
	if err := e.backend.Install(context.Background(), bns, capture.Config{}.WithDefaults()); err != nil {
		t.Fatal(err)
	}
	e.start(false)
	z := e.ztunnel()
	if ev := z.next(t); ev.kind != "snapshot" || len(ev.uids) != 0 {
		t.Fatalf("first request %+v, want an empty snapshot: Discover must not take b's netns for d", ev)
	}
	if got := e.agent.Captured(); len(got) != 0 {
		t.Fatalf("Captured = %v after Discover", got)
	}
	if err := e.agent.ReconcileAll(context.Background()); !errors.Is(err, agent.ErrForeignNetns) || !strings.Contains(err.Error(), "is pod uid "+b.UID+"'s") {
		t.Fatalf("Reconcile = %v, want d refused", err)
	}
	// The same Reconcile captured a, from its own netns.
	if ev := z.next(t); ev.kind != "add" || ev.uid != a.UID || ev.ino != inode(t, a) {
		t.Fatalf("got %+v, want a's add", ev)
	}
	z.expectNone(t)
	if err := e.backend.Remove(context.Background(), bns); err != nil {
		t.Fatal(err)
	}

	// CNI ADD for a with b's netns: refused, a stays as it was.
	resp, err := e.enrollWith(a, b.Netns)
	requireRefused(t, resp, err, "is pod uid "+b.UID+"'s", "mesh/ka", a.UID, b.Netns)
	e.requireNoRules(b)
	e.requireCaptured(a)
	z.expectNone(t)

	if r, err := e.enroll(a); err != nil || !r.Enrolled {
		t.Fatalf("Enroll of a with its own netns = %+v, %v", r, err)
	}
	if ev := z.next(t); ev.kind != "add" || ev.uid != a.UID || ev.ino != inode(t, a) {
		t.Fatalf("got %+v", ev)
	}
	e.requireNoRules(b)
}
