package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/pkg/enrollment"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

// ZDS is the part of the ZDS server (zds.Server) the agent uses.
type ZDS interface {
	AddPod(ctx context.Context, pod zds.Pod) error
	DelPod(ctx context.Context, uid string) error
	Connected() bool
	WaitReady(ctx context.Context) error
}

var (
	_ ZDS                = (*zds.Server)(nil)
	_ agentapi.Handler   = (*Agent)(nil)
	_ zds.SnapshotSource = (*Agent)(nil)
)

// Defaults of Config.
const (
	DefaultPodWait        = 5 * time.Second
	DefaultZtunnelWait    = 5 * time.Second
	DefaultResyncInterval = time.Minute
	DefaultRetryMin       = 100 * time.Millisecond
	DefaultRetryMax       = 30 * time.Second
	DefaultWorkers        = 4
	// DefaultVerifyInterval is how often a netns accepted on CNI ADD
	// before its sandbox process ran is checked again.
	DefaultVerifyInterval = 200 * time.Millisecond
)

// Errors wrapped by the agent's answers; test with errors.Is.
var (
	// ErrPodNotFound: the pod of an Enroll is not in the pod source in time.
	ErrPodNotFound = errors.New("pod not found in the node's pod source")
	// ErrZtunnelNotConnected: no ztunnel connected to take an enrolled pod.
	// Errors wrapping it also wrap zds.ErrNoZtunnel.
	ErrZtunnelNotConnected = errors.New("ztunnel not connected to the agent")
	// ErrNotReady: Status before Discover finished.
	ErrNotReady = errors.New("node agent not ready")
)

// Config configures an Agent.
type Config struct {
	// Node is this node's name (required); it goes into logs and messages.
	Node string
	// Source lists this node's pods (required).
	Source PodSource
	// Capture programs the rules in pod namespaces (required).
	Capture capture.Backend
	// CaptureConfig parameterises the rules; zero fields take defaults.
	CaptureConfig capture.Config
	// ZDS hands pods to ztunnel (required). Its snapshot source should be
	// the Agent (Agent.Snapshot).
	ZDS ZDS
	// PodWait bounds how long Enroll waits for its pod to appear in Source
	// (DefaultPodWait if zero).
	PodWait time.Duration
	// ZtunnelWait bounds how long Enroll waits for a ztunnel to connect
	// when none is (DefaultZtunnelWait if zero).
	ZtunnelWait time.Duration
	// ResyncInterval is how often Run reconciles every pod without a
	// source change (DefaultResyncInterval if zero).
	ResyncInterval time.Duration
	// RetryMin and RetryMax bound the per-pod exponential backoff of Run's
	// retries after a failed Reconcile (DefaultRetryMin, DefaultRetryMax
	// if zero).
	RetryMin, RetryMax time.Duration
	// Workers is how many pods Run reconciles at once (DefaultWorkers if
	// zero).
	Workers int
	// VerifyInterval: see DefaultVerifyInterval.
	VerifyInterval time.Duration
	// ExcludeNamespaces are namespaces whose pods are never captured,
	// whatever their labels say (e.g. kube-system). istiod follows the
	// agent's redirection mark, so it treats them as outside the mesh too.
	ExcludeNamespaces []string
	// NetnsFinder, if set, finds the netns of a running pod whose netns
	// the source does not record (Kubernetes: ProcNetnsFinder), so that
	// Reconcile captures pods that were running before they were enrolled.
	NetnsFinder NetnsFinder
	// Ready, if set, is part of Status: e.g. "the plugin is installed" and
	// "the ZDS server is serving".
	Ready func(ctx context.Context) error
	// Verifier decides whether a netns given for a pod (CNI ADD) or
	// recorded for it (the pod source) is the pod's own, before anything
	// is captured or handed to ztunnel. nil: RecordVerifier, the pod
	// source's record (right for LocalSource; on Kubernetes use
	// ProcVerifier).
	Verifier NetnsVerifier
	// Annotator, if set, marks pods as captured or released in the
	// cluster: Reconcile makes every source pod's mark (Pod.Redirected)
	// match whether the agent tracks it, and Enroll marks a pod at once.
	Annotator Annotator
	// Logger; discards if nil.
	Logger *slog.Logger
}

// tracked is a pod the agent captured and handed (or is handing) to ztunnel.
type tracked struct {
	pod   Pod
	netns string   // path the netns was opened from, for messages
	ns    *os.File // the verified netns, open while tracked
	id    netns.ID
	// unverified: accepted on CNI ADD while no process ran in the netns
	// (ErrNetnsNoProcess); Reconcile checks it again until a process
	// shows whose pod it is (see the package doc, "Whose netns").
	unverified bool
}

// Agent implements agentapi.Handler and reconciles the node's pods. Safe for
// concurrent use. See the package doc.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	locks keyedMutex

	mu   sync.Mutex
	pods map[string]tracked // by UID; guarded by mu

	discovered atomic.Bool
	// requeue, set while Run runs, queues a pod for Run's workers.
	requeue atomic.Pointer[func(uid string)]
}

// New validates cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Node == "":
		return nil, errors.New("agent: no node name configured")
	case cfg.Source == nil:
		return nil, errors.New("agent: no pod source configured")
	case cfg.Capture == nil:
		return nil, errors.New("agent: no capture backend configured")
	case cfg.ZDS == nil:
		return nil, errors.New("agent: no ZDS server configured")
	}
	if err := cfg.CaptureConfig.Validate(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	cfg.CaptureConfig = cfg.CaptureConfig.WithDefaults()
	if cfg.PodWait <= 0 {
		cfg.PodWait = DefaultPodWait
	}
	if cfg.ZtunnelWait <= 0 {
		cfg.ZtunnelWait = DefaultZtunnelWait
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.VerifyInterval <= 0 {
		cfg.VerifyInterval = DefaultVerifyInterval
	}
	if cfg.Verifier == nil {
		cfg.Verifier = RecordVerifier{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		cfg:  cfg,
		log:  log.With("node", cfg.Node),
		pods: map[string]tracked{},
	}, nil
}

// Snapshot implements zds.SnapshotSource: the captured pods with their
// verified netns files (borrowed: the ZDS server duplicates them).
func (a *Agent) Snapshot() []zds.Pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]zds.Pod, 0, len(a.pods))
	for _, t := range a.pods {
		out = append(out, zds.Pod{
			UID: t.pod.UID, Name: t.pod.Name, Namespace: t.pod.Namespace,
			ServiceAccount: t.pod.ServiceAccount, Netns: t.ns, NetnsPath: t.netns,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// Captured returns the UIDs of the pods the agent has captured, sorted.
func (a *Agent) Captured() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.pods))
	for uid := range a.pods {
		out = append(out, uid)
	}
	sort.Strings(out)
	return out
}

// track records a captured pod; it takes ownership of ns.
func (a *Agent) track(p Pod, path string, ns *os.File, id netns.ID, unverified bool) {
	a.mu.Lock()
	old, ok := a.pods[p.UID]
	a.pods[p.UID] = tracked{pod: p, netns: path, ns: ns, id: id, unverified: unverified}
	a.mu.Unlock()
	if ok && old.ns != ns {
		old.ns.Close()
	}
}

func (a *Agent) untrack(uid string) {
	a.mu.Lock()
	t, ok := a.pods[uid]
	delete(a.pods, uid)
	a.mu.Unlock()
	if ok {
		t.ns.Close()
	}
}

// claimedBy returns a tracked pod other than uid whose netns is id.
func (a *Agent) claimedBy(uid string, id netns.ID) (tracked, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for u, t := range a.pods {
		if u != uid && t.id == id {
			return t, true
		}
	}
	return tracked{}, false
}

// openVerified opens the netns at path for pod and checks that it is the
// pod's (Config.Verifier) and not already captured for another pod. The
// caller owns the returned file; the checks apply to it, not to the path,
// so the path cannot be swapped after the check. With onAdd (the path is
// the runtime's, from CNI ADD) a netns no process runs in yet is accepted
// as unverified; see the package doc.
func (a *Agent) openVerified(ctx context.Context, pod Pod, path string, onAdd bool) (_ *os.File, _ netns.ID, unverified bool, _ error) {
	ns, err := netns.Open(path)
	if err != nil {
		return nil, netns.ID{}, false, fmt.Errorf("enrolling pod %s on node %s: %w", pod.Key(), a.cfg.Node, err)
	}
	id, err := netns.IDOf(ns)
	if err == nil {
		err = a.cfg.Verifier.VerifyNetns(ctx, pod, path, id)
		if onAdd && errors.Is(err, ErrNetnsNoProcess) {
			unverified, err = true, nil
		}
	}
	if err == nil {
		if t, ok := a.claimedBy(pod.UID, id); ok {
			err = fmt.Errorf("%w: netns %s (%s) is already captured for pod %s (uid %s), not pod %s's (uid %s)", ErrForeignNetns, path, id, t.pod.Key(), t.pod.UID, pod.Key(), pod.UID)
		}
	}
	if err != nil {
		ns.Close()
		return nil, netns.ID{}, false, fmt.Errorf("refusing to enroll pod %s on node %s (nothing captured): %w", pod.Key(), a.cfg.Node, err)
	}
	return ns, id, unverified, nil
}

func (a *Agent) lookup(uid string) (tracked, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.pods[uid]
	return t, ok
}

func (a *Agent) lookupName(namespace, name string) (tracked, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.pods {
		if t.pod.Namespace == namespace && t.pod.Name == name {
			return t, true
		}
	}
	return tracked{}, false
}

// sourcePod returns the source's current pod with this uid.
func (a *Agent) sourcePod(uid string) (Pod, bool, bool) {
	pods, synced := a.cfg.Source.Pods()
	for _, p := range pods {
		if p.UID == uid {
			return p, true, synced
		}
	}
	return Pod{}, false, synced
}

// Enroll implements agentapi.Handler.
func (a *Agent) Enroll(ctx context.Context, req agentapi.EnrollRequest) (agentapi.EnrollResponse, error) {
	if req.Namespace == "" || req.Name == "" {
		return agentapi.EnrollResponse{}, fmt.Errorf("enroll request names no pod (namespace %q, name %q): the plugin must pass K8S_POD_NAMESPACE and K8S_POD_NAME", req.Namespace, req.Name)
	}
	if req.Netns == "" {
		return agentapi.EnrollResponse{}, fmt.Errorf("enroll request for pod %s has no network namespace: the runtime must set CNI_NETNS", req)
	}
	pod, err := a.waitForPod(ctx, req)
	if err != nil {
		return agentapi.EnrollResponse{}, err
	}
	log := a.log.With("pod", pod.Name, "namespace", pod.Namespace, "uid", pod.UID)
	d := a.decide(pod)
	if !d.Enrolled {
		// A pod outside the mesh must not start in a netns ztunnel
		// proxies for another pod: its traffic would leave as that pod.
		if id, err := netns.IDOfPath(req.Netns); err == nil {
			if t, ok := a.claimedBy(pod.UID, id); ok {
				err := fmt.Errorf("%w: refusing pod %s on node %s: its netns %s (%s) is captured for pod %s (uid %s)", ErrForeignNetns, pod.Key(), a.cfg.Node, req.Netns, id, t.pod.Key(), t.pod.UID)
				log.Error("refusing a pod outside the mesh: its netns is another pod's", "netns", req.Netns, "err", err)
				return agentapi.EnrollResponse{}, err
			}
		}
		log.Debug("pod not enrolled", "reason", d.Reason)
		return agentapi.EnrollResponse{Enrolled: false, Reason: d.Reason}, nil
	}
	unlock, err := a.locks.lock(ctx, pod.UID)
	if err != nil {
		return agentapi.EnrollResponse{}, fmt.Errorf("enrolling pod %s: %w", pod.Key(), err)
	}
	defer unlock()
	if err := a.enrollCapture(ctx, pod, req.Netns); err != nil {
		if errors.Is(err, ErrForeignNetns) {
			log.Error("refusing to enroll pod: the netns is not the pod's; nothing captured", "netns", req.Netns, "err", err)
		} else {
			log.Error("enrolling pod failed; capture rules stay in place (fail closed)", "err", err)
		}
		return agentapi.EnrollResponse{}, err
	}
	log.Info("pod enrolled", "reason", d.Reason, "netns", req.Netns)
	if a.cfg.Annotator != nil && !pod.Redirected {
		// Best effort: the ADD succeeded; Reconcile retries the mark.
		if err := a.cfg.Annotator.Annotate(ctx, pod, true); err != nil {
			log.Warn("marking pod captured (retried at the next reconcile)", "err", err)
		}
	}
	return agentapi.EnrollResponse{Enrolled: true, Reason: d.Reason}, nil
}

// waitForPod waits up to PodWait for the pod of req to be in the source.
// A pod of the same name with another UID is an older pod being replaced.
func (a *Agent) waitForPod(ctx context.Context, req agentapi.EnrollRequest) (Pod, error) {
	timer := time.NewTimer(a.cfg.PodWait)
	defer timer.Stop()
	for {
		changed := a.cfg.Source.Changed()
		pods, _ := a.cfg.Source.Pods()
		for _, p := range pods {
			if p.Namespace == req.Namespace && p.Name == req.Name && (req.UID == "" || p.UID == req.UID) {
				return p, nil
			}
		}
		select {
		case <-changed:
		case <-timer.C:
			return Pod{}, fmt.Errorf("%w: pod %s (uid %q) is not among node %s's pods after %s: check that it is scheduled on this node (agent flag --node) and that the agent can read the cluster state (local mode's state file or the API server)",
				ErrPodNotFound, req, req.UID, a.cfg.Node, a.cfg.PodWait)
		case <-ctx.Done():
			return Pod{}, fmt.Errorf("waiting for pod %s in node %s's pod source: %w", req, a.cfg.Node, ctx.Err())
		}
	}
}

// enrollCapture is captureAndAdd for Enroll; while the pod source has no
// netns record for the pod yet (a record that lags the CNI ADD), it waits
// for the source up to PodWait.
func (a *Agent) enrollCapture(ctx context.Context, pod Pod, path string) error {
	timer := time.NewTimer(a.cfg.PodWait)
	defer timer.Stop()
	for {
		changed := a.cfg.Source.Changed()
		if p, ok, _ := a.sourcePod(pod.UID); ok {
			pod = p
		}
		err := a.captureAndAdd(ctx, pod, path, false)
		if !errors.Is(err, ErrNetnsUnrecorded) {
			return err
		}
		select {
		case <-changed:
		case <-timer.C:
			return err
		case <-ctx.Done():
			return err
		}
	}
}

// captureAndAdd installs the rules in the netns at path, then hands the pod
// to ztunnel and waits for its ack. The caller holds the pod's lock. On a
// hand-off failure the rules stay (fail closed) and the pod is untracked.
//
// For the reconciler (lazy), a missing or lost ztunnel is no failure: the
// pod stays tracked without waiting, and the next ztunnel connection's
// snapshot carries it. Enroll (not lazy) must know ztunnel has the pod.
func (a *Agent) captureAndAdd(ctx context.Context, pod Pod, path string, lazy bool) error {
	ns, id, unverified, err := a.openVerified(ctx, pod, path, !lazy)
	if err != nil {
		return err
	}
	if err := a.cfg.Capture.Install(ctx, ns, a.cfg.CaptureConfig); err != nil {
		ns.Close()
		return fmt.Errorf("installing %s capture rules in pod %s (netns %s) on node %s: %w", a.cfg.Capture.Name(), pod.Key(), path, a.cfg.Node, err)
	}
	// Tracked (owning ns) before the add, so a ztunnel reconnecting
	// meanwhile gets the pod in its snapshot (see zds.SnapshotSource).
	a.track(pod, path, ns, id, unverified)
	if unverified {
		a.log.Info("netns accepted on CNI ADD before any process runs in it; verified again when the sandbox starts", "pod", pod.Name, "namespace", pod.Namespace, "uid", pod.UID, "netns", path)
		if f := a.requeue.Load(); f != nil {
			(*f)(pod.UID)
		}
	}
	if lazy && !a.cfg.ZDS.Connected() {
		a.log.Info("ztunnel not connected; the pod goes into its snapshot when it connects", "pod", pod.Name, "namespace", pod.Namespace)
		return nil
	}
	if err := a.handOff(ctx, pod, ns); err != nil {
		if lazy && (errors.Is(err, zds.ErrNoZtunnel) || errors.Is(err, zds.ErrConnClosed)) {
			return nil
		}
		a.untrack(pod.UID)
		return err
	}
	return nil
}

// handOff sends the pod to ztunnel, waiting up to ZtunnelWait for one to
// connect.
func (a *Agent) handOff(ctx context.Context, pod Pod, ns *os.File) error {
	notConnected := func() error {
		return fmt.Errorf("%w on node %s (%w): is the ztunnel DaemonSet running on this node? Pod %s stays without traffic (capture rules in place) until ztunnel is up and the pod is retried",
			ErrZtunnelNotConnected, a.cfg.Node, zds.ErrNoZtunnel, pod.Key())
	}
	if !a.cfg.ZDS.Connected() {
		wctx, cancel := context.WithTimeout(ctx, a.cfg.ZtunnelWait)
		err := a.cfg.ZDS.WaitReady(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("waiting for ztunnel on node %s to take pod %s: %w", a.cfg.Node, pod.Key(), ctx.Err())
			}
			return notConnected()
		}
	}
	err := a.cfg.ZDS.AddPod(ctx, zds.Pod{
		UID: pod.UID, Name: pod.Name, Namespace: pod.Namespace,
		ServiceAccount: pod.ServiceAccount, Netns: ns,
	})
	var ackErr *zds.AckError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, zds.ErrNoZtunnel):
		return notConnected()
	case errors.As(err, &ackErr):
		return fmt.Errorf("ztunnel on node %s refused pod %s: %s; see ztunnel's log", a.cfg.Node, pod.Key(), ackErr.Msg)
	case errors.Is(err, zds.ErrAckTimeout), errors.Is(err, zds.ErrConnClosed):
		return fmt.Errorf("handing pod %s to ztunnel on node %s: %w; ztunnel reconnects and the pod is retried: check ztunnel's log if this repeats", pod.Key(), a.cfg.Node, err)
	default:
		return fmt.Errorf("handing pod %s to ztunnel on node %s: %w", pod.Key(), a.cfg.Node, err)
	}
}

// Release implements agentapi.Handler: it removes the pod's rules and tells
// ztunnel (best effort). Unknown pods and missing namespaces are fine.
func (a *Agent) Release(ctx context.Context, req agentapi.ReleaseRequest) error {
	uid := req.UID
	if uid == "" {
		if t, ok := a.lookupName(req.Namespace, req.Name); ok {
			uid = t.pod.UID
		}
	}
	if uid == "" {
		// Never captured by this agent; an earlier agent may have: remove
		// whatever rules of ours are in the namespace.
		return a.removeRules(ctx, "", req.String(), req.Netns)
	}
	unlock, err := a.locks.lock(ctx, uid)
	if err != nil {
		return fmt.Errorf("releasing pod %s: %w", req, err)
	}
	defer unlock()
	return a.releaseLocked(ctx, uid, req.String(), req.Netns)
}

// releaseLocked removes the rules (from the tracked netns when the pod is
// tracked, whatever path says; else from path), untracks the pod and sends
// ztunnel a del when it was tracked. The caller holds the pod's lock.
func (a *Agent) releaseLocked(ctx context.Context, uid, name, path string) error {
	t, ok := a.lookup(uid)
	if !ok {
		return a.removeRules(ctx, uid, name, path)
	}
	if err := a.cfg.Capture.Remove(ctx, t.ns); err != nil {
		return fmt.Errorf("removing capture rules of pod %s (netns %s) on node %s: %w", name, t.netns, a.cfg.Node, err)
	}
	a.untrack(uid)
	log := a.log.With("pod", t.pod.Name, "namespace", t.pod.Namespace, "uid", uid)
	if a.cfg.ZDS.Connected() {
		if err := a.cfg.ZDS.DelPod(ctx, uid); err != nil && !errors.Is(err, zds.ErrNoZtunnel) {
			// ztunnel drops the pod at its next snapshot anyway.
			log.Warn("telling ztunnel a pod is gone", "err", err)
		}
	}
	log.Info("pod released")
	return nil
}

// removeRules removes our rules from the netns at path, for a pod the
// agent does not track (uid may be empty). It refuses a netns captured for
// a tracked pod: releasing one pod must not uncapture another.
func (a *Agent) removeRules(ctx context.Context, uid, name, path string) error {
	if path == "" {
		return nil
	}
	ns, err := netns.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the runtime removed the namespace, and our rules with it
	}
	if err != nil {
		return fmt.Errorf("releasing pod %s on node %s: %w", name, a.cfg.Node, err)
	}
	defer ns.Close()
	id, err := netns.IDOf(ns)
	if err != nil {
		return fmt.Errorf("releasing pod %s on node %s: %w", name, a.cfg.Node, err)
	}
	if t, ok := a.claimedBy(uid, id); ok {
		return fmt.Errorf("%w: refusing to release pod %s on node %s: netns %s (%s) is captured for pod %s (uid %s)", ErrForeignNetns, name, a.cfg.Node, path, id, t.pod.Key(), t.pod.UID)
	}
	if err := a.cfg.Capture.Remove(ctx, ns); err != nil {
		return fmt.Errorf("removing capture rules of pod %s (netns %s) on node %s: %w", name, path, a.cfg.Node, err)
	}
	return nil
}

// Check implements agentapi.Handler.
func (a *Agent) Check(ctx context.Context, req agentapi.CheckRequest) (agentapi.CheckResponse, error) {
	var pod Pod
	found := false
	pods, _ := a.cfg.Source.Pods()
	for _, p := range pods {
		if p.Namespace == req.Namespace && p.Name == req.Name && (req.UID == "" || p.UID == req.UID) {
			pod, found = p, true
			break
		}
	}
	if !found {
		return agentapi.CheckResponse{}, fmt.Errorf("%w: pod %s is not among node %s's pods: check that it is scheduled on this node (agent flag --node)", ErrPodNotFound, req, a.cfg.Node)
	}
	d := a.decide(pod)
	if !d.Enrolled {
		return agentapi.CheckResponse{Enrolled: false, Reason: d.Reason}, nil
	}
	unlock, err := a.locks.lock(ctx, pod.UID)
	if err != nil {
		return agentapi.CheckResponse{}, fmt.Errorf("checking pod %s: %w", pod.Key(), err)
	}
	defer unlock()
	t, ok := a.lookup(pod.UID)
	if !ok {
		return agentapi.CheckResponse{Enrolled: true, Reason: "enrolled pod is not captured by the agent yet (it is retried at the next reconcile)"}, nil
	}
	if req.Netns != "" {
		if id, err := netns.IDOfPath(req.Netns); err != nil || id != t.id {
			return agentapi.CheckResponse{Enrolled: true, Reason: fmt.Sprintf("netns %s is not the one the agent captured for the pod (%s, %s)", req.Netns, t.netns, t.id)}, nil
		}
	}
	if err := a.cfg.Capture.Verify(ctx, t.ns, a.cfg.CaptureConfig); err != nil {
		return agentapi.CheckResponse{Enrolled: true, Reason: err.Error()}, nil
	}
	return agentapi.CheckResponse{Enrolled: true, CaptureInPlace: true}, nil
}

// Status implements agentapi.Handler: ready once Discover ran and Config.Ready
// passes.
func (a *Agent) Status(ctx context.Context) error {
	if !a.discovered.Load() {
		return fmt.Errorf("%w: still looking for pods captured before it started (waiting for the pod source of node %s to sync)", ErrNotReady, a.cfg.Node)
	}
	if a.cfg.Ready != nil {
		return a.cfg.Ready(ctx)
	}
	return nil
}

// Discover waits for the pod source to sync, then tracks every pod of the
// node whose netns already holds exactly our rules, without telling
// ztunnel: call it before the ZDS server accepts ztunnel, whose first
// snapshot then carries those pods. Pods whose rules are missing are left to
// Reconcile.
func (a *Agent) Discover(ctx context.Context) error {
	var pods []Pod
	for {
		changed := a.cfg.Source.Changed()
		var synced bool
		if pods, synced = a.cfg.Source.Pods(); synced {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the pod source of node %s to sync: %w", a.cfg.Node, ctx.Err())
		}
	}
	found := 0
	index := a.netnsIndex(ctx)
	for _, p := range pods {
		if p.Netns == "" && len(p.IPs) > 0 {
			p.Netns = index(p)
		}
		if p.Netns == "" {
			continue
		}
		if a.discoverOne(ctx, p) {
			found++
		}
	}
	a.discovered.Store(true)
	a.log.Info("discovered pods captured earlier", "pods", found)
	return nil
}

// netnsIndex returns how Discover looks up the netns of a pod the source
// records none for: from one pass of the finder over all pods when it can
// (ProcNetnsFinder.Index), else per pod; "" when not found.
func (a *Agent) netnsIndex(ctx context.Context) func(Pod) string {
	f := a.cfg.NetnsFinder
	if f == nil {
		return func(Pod) string { return "" }
	}
	if ix, ok := f.(interface {
		Index(context.Context) (map[string]string, error)
	}); ok {
		if m, err := ix.Index(ctx); err == nil {
			return func(p Pod) string { return m[strings.ToLower(p.UID)] }
		}
	}
	return func(p Pod) string {
		path, _ := f.FindNetns(ctx, p)
		return path
	}
}

func (a *Agent) discoverOne(ctx context.Context, p Pod) bool {
	unlock, err := a.locks.lock(ctx, p.UID)
	if err != nil {
		return false
	}
	defer unlock()
	if _, ok := a.lookup(p.UID); ok {
		return false
	}
	ns, id, _, err := a.openVerified(ctx, p, p.Netns, false)
	if err != nil {
		if errors.Is(err, ErrForeignNetns) {
			a.log.Warn("not taking over a captured netns: it is not the pod's", "pod", p.Name, "namespace", p.Namespace, "netns", p.Netns, "err", err)
		}
		return false
	}
	if err := a.cfg.Capture.Verify(ctx, ns, a.cfg.CaptureConfig); err != nil {
		ns.Close()
		return false
	}
	a.track(p, p.Netns, ns, id, false)
	a.log.Debug("found captured pod", "pod", p.Name, "namespace", p.Namespace, "uid", p.UID)
	return true
}

// Unverified returns the UIDs of captured pods whose netns was accepted on
// CNI ADD before a process ran in it and has not been verified since,
// sorted.
func (a *Agent) Unverified() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for uid, t := range a.pods {
		if t.unverified {
			out = append(out, uid)
		}
	}
	sort.Strings(out)
	return out
}

// ReleaseAll releases every captured pod: its rules are removed and its
// captured mark (with an Annotator) cleared, or a warning logged when it
// cannot be; ztunnel is told when
// connected. For uninstalling the agent from the node; call it after Run
// returned, or Run captures the pods again. Errors are joined; a pod that
// fails stays tracked.
func (a *Agent) ReleaseAll(ctx context.Context) error {
	var errs []error
	for _, uid := range a.Captured() {
		t, ok := a.lookup(uid)
		if !ok {
			continue
		}
		unlock, err := a.locks.lock(ctx, uid)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		err = a.releaseLocked(ctx, uid, t.pod.Key(), "")
		unlock()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if a.cfg.Annotator != nil {
			// The pod is released either way; during an uninstall the
			// agent's RBAC may already be gone, leaving only the mark.
			if err := a.cfg.Annotator.Annotate(ctx, t.pod, false); err != nil {
				a.log.Warn("released pod, but its redirection mark stays", "pod", t.pod.Name, "namespace", t.pod.Namespace, "error", err)
			}
		}
	}
	return errors.Join(errs...)
}

// decide is enrollment.Decide for pod, except that a pod of an excluded
// namespace is never enrolled.
func (a *Agent) decide(pod Pod) enrollment.Decision {
	if slices.Contains(a.cfg.ExcludeNamespaces, pod.Namespace) {
		return enrollment.Decision{Reason: "namespace " + pod.Namespace + " is excluded from capture (cni-agent --exclude-namespaces)"}
	}
	return enrollment.Decide(pod.Labels, pod.NamespaceLabels)
}
