package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/pkg/enrollment"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

const (
	prefix   = "ambit-t-agent-"
	node     = "node-t"
	testWait = 10 * time.Second
)

func TestMain(m *testing.M) { netnstest.Main(m, prefix) }

// event is what the fake ztunnel saw.
type event struct {
	kind string // add, keep, del, snapshot
	uid  string
	ino  uint64
	uids []string
}

// fakeZtunnel is a zds.Handler standing in for ztunnel behind a real
// zds.Client. AddPod blocks while gate is set, so tests can observe that
// Enroll waits for the ack.
type fakeZtunnel struct {
	events chan event
	mu     sync.Mutex
	gate   chan struct{}
}

func (z *fakeZtunnel) AddPod(_ context.Context, w zds.WorkloadAdd) error {
	id, err := netns.IDOf(w.Netns)
	w.Netns.Close()
	if err != nil {
		return err
	}
	z.events <- event{kind: "add", uid: w.UID, ino: id.Ino}
	z.mu.Lock()
	gate := z.gate
	z.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return nil
}
func (z *fakeZtunnel) KeepPod(_ context.Context, uid string) error {
	z.events <- event{kind: "keep", uid: uid}
	return nil
}
func (z *fakeZtunnel) DelPod(_ context.Context, uid string) error {
	z.events <- event{kind: "del", uid: uid}
	return nil
}
func (z *fakeZtunnel) SnapshotDone(_ context.Context, uids []string) error {
	z.events <- event{kind: "snapshot", uids: slices.Sorted(slices.Values(uids))}
	return nil
}

func (z *fakeZtunnel) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-z.events:
		return e
	case <-time.After(testWait):
		t.Fatal("timed out waiting for the fake ztunnel to get a request")
		return event{}
	}
}

func (z *fakeZtunnel) expectNone(t *testing.T) {
	t.Helper()
	select {
	case e := <-z.events:
		t.Fatalf("unexpected ztunnel request %+v", e)
	default:
	}
}

// env is one node: a state file, a pod source, a ZDS server and an agent.
type env struct {
	t       *testing.T
	dir     string
	state   string
	backend capture.Backend
	gen     int64
	st      localcluster.State

	// marks, if set before start, is the agent's Annotator and overlays
	// its marks on the source's pods.
	marks *markStore
	// verifier, if set before start, is the agent's Verifier.
	verifier agent.NetnsVerifier
	// finder, if set before start, is the agent's NetnsFinder.
	finder agent.NetnsFinder
	// exclude, if set before start, is the agent's ExcludeNamespaces.
	exclude []string
	// noNetns, if set before start, hides the pods' netns records from
	// the agent, as KubeSource does.
	noNetns bool

	zdsPath string
	srv     *zds.Server
	src     *agent.LocalSource
	agent   *agent.Agent
	stop    context.CancelFunc
	done    sync.WaitGroup
}

func newEnv(t *testing.T) *env {
	t.Helper()
	netnstest.RequireRoot(t)
	backend, err := capture.New(capture.ModeNFTables)
	if err != nil {
		netnstest.SkipOrFail(t, "nftables: %v", err)
	}
	dir, err := os.MkdirTemp("", "ambit-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{
		t: t, dir: dir, state: filepath.Join(dir, "cluster.json"), backend: backend,
		zdsPath: filepath.Join(dir, "ztunnel.sock"),
		st: localcluster.State{Namespaces: []localcluster.Namespace{
			{Name: "mesh", Labels: map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeAmbient}},
			{Name: "plain"},
		}},
	}
	e.write()
	return e
}

// pod creates a netns for a pod and returns its state entry (not written).
func (e *env) pod(name, namespace string, withIPs bool) localcluster.Pod {
	e.t.Helper()
	nsName := prefix + name
	netnstest.New(e.t, nsName)
	p := localcluster.Pod{
		UID: "uid-" + name, Name: name, Namespace: namespace, Node: node, ServiceAccount: "sa",
		Netns: netns.Path(nsName),
	}
	if withIPs {
		p.IPs = []netip.Addr{netip.MustParseAddr("192.0.2.10")}
	}
	return p
}

func (e *env) write() {
	e.t.Helper()
	e.gen++
	e.st.Generation = e.gen
	if err := localcluster.Write(e.state, &e.st); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) setPods(pods ...localcluster.Pod) {
	e.t.Helper()
	e.st.Pods = pods
	e.write()
}

func (e *env) setNamespaceLabel(ns, value string) {
	e.t.Helper()
	for i := range e.st.Namespaces {
		if e.st.Namespaces[i].Name == ns {
			if value == "" {
				e.st.Namespaces[i].Labels = nil
			} else {
				e.st.Namespaces[i].Labels = map[string]string{enrollment.LabelDataplaneMode: value}
			}
		}
	}
	e.write()
}

// start runs a source, a ZDS server and an agent (Discover first); with
// run, also the agent's reconcile loop. stopAgent undoes it.
func (e *env) start(run bool) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	e.src = agent.NewLocalSource(e.state, node, 10*time.Millisecond, nil)
	var a *agent.Agent
	srv, err := zds.NewServer(zds.ServerConfig{Path: e.zdsPath, Snapshot: zds.SnapshotFunc(func() []zds.Pod { return a.Snapshot() })})
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := agent.Config{
		Node: node, Source: e.src, Capture: e.backend, ZDS: srv,
		PodWait: 3 * time.Second, ZtunnelWait: 300 * time.Millisecond, ResyncInterval: time.Hour,
		Verifier: e.verifier, NetnsFinder: e.finder, ExcludeNamespaces: e.exclude,
	}
	if e.marks != nil {
		e.marks.PodSource = e.src
		cfg.Source, cfg.Annotator = e.marks, e.marks
	}
	if e.noNetns {
		cfg.Source = noNetnsSource{cfg.Source}
	}
	a, err = agent.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv, e.agent = srv, a
	e.done.Add(1)
	go func() { defer e.done.Done(); e.src.Run(ctx) }()
	dctx, dcancel := context.WithTimeout(ctx, testWait)
	defer dcancel()
	if err := a.Discover(dctx); err != nil {
		e.t.Fatal(err)
	}
	e.done.Add(1)
	go func() { defer e.done.Done(); _ = srv.Serve(ctx) }()
	if run {
		e.done.Add(1)
		go func() { defer e.done.Done(); a.Run(ctx) }()
	}
	e.t.Cleanup(e.stopAgent)
}

func (e *env) stopAgent() {
	if e.stop == nil {
		return
	}
	e.stop()
	e.srv.Close()
	e.done.Wait()
	e.stop = nil
}

// ztunnel connects a fake ztunnel and waits for its (empty or not) snapshot.
func (e *env) ztunnel() *fakeZtunnel {
	e.t.Helper()
	z := &fakeZtunnel{events: make(chan event, 100)}
	c, err := zds.NewClient(zds.ClientConfig{Path: e.zdsPath, Handler: z, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return z
}

func (e *env) enroll(p localcluster.Pod) (agentapi.EnrollResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	return e.agent.Enroll(ctx, agentapi.EnrollRequest{PodRef: ref(p)})
}

func ref(p localcluster.Pod) agentapi.PodRef {
	return agentapi.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID, ContainerID: "c-" + p.Name, Netns: p.Netns, IfName: "eth0"}
}

// verify returns the capture backend's verdict on the pod's netns.
func (e *env) verify(p localcluster.Pod) error {
	e.t.Helper()
	ns, err := netns.Open(p.Netns)
	if err != nil {
		e.t.Fatal(err)
	}
	defer ns.Close()
	return e.backend.Verify(context.Background(), ns, capture.Config{})
}

func (e *env) requireCaptured(p localcluster.Pod) {
	e.t.Helper()
	if err := e.verify(p); err != nil {
		e.t.Fatalf("capture rules of %s: %v", p.Key(), err)
	}
}

func (e *env) requireNoRules(p localcluster.Pod) {
	e.t.Helper()
	if err := e.verify(p); !errors.Is(err, capture.ErrMismatch) || !strings.Contains(err.Error(), "missing") {
		e.t.Fatalf("pod %s: want no capture table, Verify says %v", p.Key(), err)
	}
}

func inode(t *testing.T, p localcluster.Pod) uint64 {
	t.Helper()
	id, err := netns.IDOfPath(p.Netns)
	if err != nil {
		t.Fatal(err)
	}
	return id.Ino
}

// eventually polls cond until it holds or testWait passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEnrollWaitsForPodAndAck(t *testing.T) {
	e := newEnv(t)
	e.start(false)
	z := e.ztunnel()
	if got := z.next(t); got.kind != "snapshot" || len(got.uids) != 0 {
		t.Fatalf("first request %+v, want an empty snapshot", got)
	}
	a := e.pod("a", "mesh", false)
	gate := make(chan struct{})
	z.mu.Lock()
	z.gate = gate
	z.mu.Unlock()

	// The pod is not in the state yet: Enroll waits for it.
	type result struct {
		resp agentapi.EnrollResponse
		err  error
	}
	res := make(chan result, 1)
	go func() { r, err := e.enroll(a); res <- result{r, err} }()
	e.setPods(a)

	add := z.next(t)
	if add.kind != "add" || add.uid != a.UID || add.ino != inode(t, a) {
		t.Fatalf("ztunnel got %+v, want an add of %s with netns inode %d", add, a.UID, inode(t, a))
	}
	// ztunnel has not acked yet: Enroll must not have answered.
	select {
	case r := <-res:
		t.Fatalf("Enroll answered %+v before ztunnel acked", r)
	default:
	}
	// The rules are in place before ztunnel is asked.
	e.requireCaptured(a)
	close(gate)
	r := <-res
	if r.err != nil || !r.resp.Enrolled {
		t.Fatalf("Enroll = %+v, %v", r.resp, r.err)
	}
	if got := e.agent.Captured(); !slices.Equal(got, []string{a.UID}) {
		t.Errorf("Captured = %v", got)
	}
	if snap := e.agent.Snapshot(); len(snap) != 1 || snap[0].NetnsPath != a.Netns || snap[0].ServiceAccount != "sa" || snap[0].Netns == nil {
		t.Errorf("Snapshot = %+v", snap)
	} else if id, err := netns.IDOf(snap[0].Netns); err != nil || id.Ino != inode(t, a) {
		t.Errorf("Snapshot's netns file is %v (%v), want the pod's (inode %d)", id, err, inode(t, a))
	}
	cr, err := e.agent.Check(context.Background(), agentapi.CheckRequest{PodRef: ref(a)})
	if err != nil || !cr.Enrolled || !cr.CaptureInPlace {
		t.Errorf("Check = %+v, %v", cr, err)
	}
	z.expectNone(t)
}

func TestEnrollNotEnrolled(t *testing.T) {
	e := newEnv(t)
	b := e.pod("b", "plain", false)
	c := e.pod("c", "mesh", false)
	c.Labels = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeNone}
	e.setPods(b, c)
	e.start(false)
	z := e.ztunnel()
	z.next(t) // snapshot
	for _, p := range []localcluster.Pod{b, c} {
		resp, err := e.enroll(p)
		if err != nil || resp.Enrolled || resp.Reason == "" {
			t.Errorf("Enroll(%s) = %+v, %v; want not enrolled with a reason", p.Key(), resp, err)
		}
		e.requireNoRules(p)
		cr, err := e.agent.Check(context.Background(), agentapi.CheckRequest{PodRef: ref(p)})
		if err != nil || cr.Enrolled {
			t.Errorf("Check(%s) = %+v, %v", p.Key(), cr, err)
		}
	}
	z.expectNone(t)

	// A pod that never shows up fails closed with a message naming --node.
	ctx := context.Background()
	_, err := e.agent.Enroll(ctx, agentapi.EnrollRequest{PodRef: agentapi.PodRef{Namespace: "mesh", Name: "ghost", Netns: b.Netns}})
	if !errors.Is(err, agent.ErrPodNotFound) || !strings.Contains(err.Error(), "--node") {
		t.Errorf("Enroll(ghost) = %v", err)
	}
}

// TestExcludedNamespace: a pod of an excluded namespace is never
// captured, whatever its own or its namespace's label, neither on CNI ADD
// nor by the reconciler, while a pod of another enrolled namespace is.
func TestExcludedNamespace(t *testing.T) {
	e := newEnv(t)
	e.st.Namespaces = append(e.st.Namespaces, localcluster.Namespace{
		Name: "system", Labels: map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeAmbient}})
	e.exclude = []string{"system"}
	sys := e.pod("sys", "system", true)
	sys.Labels = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeAmbient}
	app := e.pod("app", "mesh", true)
	e.setPods(sys, app)
	e.start(true)
	e.ztunnel()
	eventually(t, "the pod of the enrolled namespace captured", func() bool { return captured(e.agent, app.UID) })
	resp, err := e.enroll(sys)
	if err != nil || resp.Enrolled || !strings.Contains(resp.Reason, "excluded") {
		t.Errorf("Enroll(%s) = %+v, %v; want not enrolled, excluded", sys.Key(), resp, err)
	}
	if err := e.agent.ReconcileAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.requireNoRules(sys)
	if captured(e.agent, sys.UID) {
		t.Errorf("pod %s of an excluded namespace captured", sys.Key())
	}
}

func TestEnrollWithoutZtunnel(t *testing.T) {
	e := newEnv(t)
	a := e.pod("a", "mesh", false)
	e.setPods(a)
	e.start(false)
	_, err := e.enroll(a)
	if err == nil {
		t.Fatal("Enroll succeeded with no ztunnel connected")
	}
	want := "ztunnel not connected to the agent on node " + node
	if !errors.Is(err, agent.ErrZtunnelNotConnected) || !errors.Is(err, zds.ErrNoZtunnel) ||
		!strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "is the ztunnel DaemonSet running") {
		t.Errorf("error %q; want it to say %q and name the fix", err, want)
	}
	// Fail closed: the rules stay, so nothing leaves in plaintext.
	e.requireCaptured(a)
	if got := e.agent.Captured(); len(got) != 0 {
		t.Errorf("Captured = %v after a failed enroll", got)
	}
	// The runtime's DEL removes them.
	if err := e.agent.Release(context.Background(), agentapi.ReleaseRequest{PodRef: ref(a)}); err != nil {
		t.Fatal(err)
	}
	e.requireNoRules(a)
}

func TestReconcileFollowsLabels(t *testing.T) {
	e := newEnv(t)
	a := e.pod("a", "mesh", true)
	b := e.pod("b", "plain", true)
	e.setPods(a, b)
	e.start(true)
	z := e.ztunnel()
	// a is running and enrolled: the reconciler captures it (snapshot, then
	// add, or add within the snapshot: either way exactly one add).
	adds := 0
	for adds == 0 {
		ev := z.next(t)
		if ev.kind == "add" {
			if ev.uid != a.UID || ev.ino != inode(t, a) {
				t.Fatalf("add %+v", ev)
			}
			adds++
		}
	}
	eventually(t, "a is captured", func() bool { return e.verify(a) == nil })
	e.requireNoRules(b)

	// Label removed from a's namespace: released. (When a was captured
	// before ztunnel connected, its add came inside the snapshot, and the
	// snapshot's end may still be queued: skip it.)
	e.setNamespaceLabel("mesh", "")
	ev := z.next(t)
	if ev.kind == "snapshot" {
		ev = z.next(t)
	}
	if ev.kind != "del" || ev.uid != a.UID {
		t.Fatalf("got %+v, want del of %s", ev, a.UID)
	}
	e.requireNoRules(a)
	eventually(t, "nothing captured", func() bool { return len(e.agent.Captured()) == 0 })

	// Label added to b's namespace: captured.
	e.setNamespaceLabel("plain", enrollment.ModeAmbient)
	if ev := z.next(t); ev.kind != "add" || ev.uid != b.UID || ev.ino != inode(t, b) {
		t.Fatalf("got %+v, want add of %s", ev, b.UID)
	}
	e.requireCaptured(b)

	// Pod b deleted from the state: released.
	e.setPods(a)
	if ev := z.next(t); ev.kind != "del" || ev.uid != b.UID {
		t.Fatalf("got %+v, want del of %s", ev, b.UID)
	}
	e.requireNoRules(b)
	z.expectNone(t)
}

func TestRestartDiscoversCapturedPods(t *testing.T) {
	e := newEnv(t)
	a := e.pod("a", "mesh", true)
	e.setPods(a)
	e.start(false)
	z := e.ztunnel()
	z.next(t) // empty snapshot
	if r, err := e.enroll(a); err != nil || !r.Enrolled {
		t.Fatalf("Enroll = %+v, %v", r, err)
	}
	if ev := z.next(t); ev.kind != "add" || ev.uid != a.UID {
		t.Fatalf("got %+v", ev)
	}

	// The agent goes away; rules stay (the agent never removes them on exit).
	e.stopAgent()
	e.requireCaptured(a)

	// A new agent over the same namespaces: it finds a, and the reconnecting
	// ztunnel gets it in the snapshot, once.
	e.start(false)
	if ev := z.next(t); ev.kind != "add" || ev.uid != a.UID || ev.ino != inode(t, a) {
		t.Fatalf("got %+v, want the snapshot's add of %s", ev, a.UID)
	}
	if ev := z.next(t); ev.kind != "snapshot" || !slices.Equal(ev.uids, []string{a.UID}) {
		t.Fatalf("got %+v, want snapshot_sent with %s", ev, a.UID)
	}
	if err := e.agent.ReconcileAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	z.expectNone(t) // no duplicate add
	if got := e.agent.Captured(); !slices.Equal(got, []string{a.UID}) {
		t.Errorf("Captured = %v", got)
	}
	e.requireCaptured(a)
	if err := e.agent.Status(context.Background()); err != nil {
		t.Errorf("Status = %v", err)
	}
}

func TestReleaseIdempotent(t *testing.T) {
	e := newEnv(t)
	a := e.pod("a", "mesh", false)
	e.setPods(a)
	e.start(false)
	z := e.ztunnel()
	z.next(t)
	if r, err := e.enroll(a); err != nil || !r.Enrolled {
		t.Fatalf("Enroll = %+v, %v", r, err)
	}
	z.next(t) // add
	ctx := context.Background()
	if err := e.agent.Release(ctx, agentapi.ReleaseRequest{PodRef: ref(a)}); err != nil {
		t.Fatal(err)
	}
	if ev := z.next(t); ev.kind != "del" || ev.uid != a.UID {
		t.Fatalf("got %+v", ev)
	}
	e.requireNoRules(a)
	for _, req := range []agentapi.ReleaseRequest{
		{PodRef: ref(a)}, // again
		{PodRef: agentapi.PodRef{Namespace: "mesh", Name: "a"}},                              // no uid, no netns
		{PodRef: agentapi.PodRef{Namespace: "x", Name: "unknown", UID: "u", Netns: a.Netns}}, // unknown pod
		{PodRef: agentapi.PodRef{Namespace: "x", Name: "gone", Netns: "/var/run/netns/" + prefix + "none"}},
	} {
		if err := e.agent.Release(ctx, req); err != nil {
			t.Errorf("Release(%+v) = %v", req, err)
		}
	}
	z.expectNone(t)
	e.requireNoRules(a)
}

// markStore is a fake cluster's pod marks: an Annotator whose marks show as
// Pod.Redirected in the wrapped source's pods.
type markStore struct {
	agent.PodSource
	mu    sync.Mutex
	marks map[string]bool
	calls chan string // "uid=true|false" per Annotate
}

func newMarkStore() *markStore {
	return &markStore{marks: map[string]bool{}, calls: make(chan string, 100)}
}

func (m *markStore) Annotate(_ context.Context, p agent.Pod, captured bool) error {
	m.mu.Lock()
	m.marks[p.UID] = captured
	m.mu.Unlock()
	m.calls <- fmt.Sprintf("%s=%v", p.UID, captured)
	return nil
}

func (m *markStore) Pods() ([]agent.Pod, bool) {
	pods, synced := m.PodSource.Pods()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range pods {
		pods[i].Redirected = m.marks[pods[i].UID]
	}
	return pods, synced
}

func (m *markStore) next(t *testing.T) string {
	t.Helper()
	select {
	case c := <-m.calls:
		return c
	case <-time.After(testWait):
		t.Fatal("no Annotate call")
		return ""
	}
}

func TestReconcileMarksPods(t *testing.T) {
	e := newEnv(t)
	e.marks = newMarkStore()
	a := e.pod("a", "mesh", true)
	b := e.pod("b", "plain", true)
	e.setPods(a, b)
	e.start(true)
	e.ztunnel()
	if got := e.marks.next(t); got != a.UID+"=true" {
		t.Fatalf("first mark %q, want %s=true", got, a.UID)
	}
	e.setNamespaceLabel("mesh", "")
	if got := e.marks.next(t); got != a.UID+"=false" {
		t.Fatalf("mark %q, want %s=false", got, a.UID)
	}
	e.requireNoRules(a)
	// Enroll (CNI ADD) marks at once.
	if _, err := e.enroll(b); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-e.marks.calls:
		t.Fatalf("unexpected mark %q: b is not enrolled", got)
	default:
	}
	e.setNamespaceLabel("plain", enrollment.ModeAmbient)
	if got := e.marks.next(t); got != b.UID+"=true" {
		t.Fatalf("mark %q, want %s=true", got, b.UID)
	}
	e.requireCaptured(b)
	select {
	case got := <-e.marks.calls:
		t.Fatalf("unexpected mark %q after convergence", got)
	case <-time.After(200 * time.Millisecond):
	}
}
