package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Pod annotations the Kubernetes source reads and writes.
const (
	// RedirectionAnnotation, with the value RedirectionEnabled, marks a pod
	// whose traffic the node agent captures, as Istio's node agent does;
	// the agent sets it after capturing the pod and removes it after
	// releasing it.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	RedirectionEnabled    = "enabled"
	// NetnsAnnotation holds the path of the pod's network namespace. The
	// test node (e2e/kube/testnode) writes it for every pod it runs, for
	// the tests; it is that node's contract, not Istio's. The agent reads
	// it only when KubeSource.ReadNetnsAnnotation is set (flag
	// --trust-netns-annotation): anyone allowed to patch a pod can write
	// it. Kubernetes does not publish a pod's netns: a real node's agent
	// learns it from CNI ADD (Enroll) or from /proc (ProcNetnsFinder).
	NetnsAnnotation = "ambit.dev/netns"
)

// DefaultKubeResync is the informers' resync period when NewKubeSource is
// given none.
const DefaultKubeResync = 10 * time.Minute

// KubeSource is the PodSource of a Kubernetes node: client-go informers on
// the Pods bound to the node (field selector spec.nodeName) and on all
// Namespaces (for their labels). Pods that finished (phase Succeeded or
// Failed) and host-network pods are not listed: they have no netns to
// capture. It also implements Annotator, patching RedirectionAnnotation.
//
// RBAC (for the Helm chart's cni-agent ClusterRole): pods get, list, watch,
// patch; namespaces get, list, watch.
//
// Call Run once; Pods reports synced after both informers synced.
type KubeSource struct {
	client kubernetes.Interface
	node   string
	resync time.Duration
	log    *slog.Logger

	// ReadNetnsAnnotation makes Pods report NetnsAnnotation as Pod.Netns
	// (test nodes only; set before Run).
	ReadNetnsAnnotation bool

	mu      sync.Mutex
	pods    cache.Store // set by Run; nil before
	nss     cache.Store
	synced  bool
	changed chan struct{}
}

var (
	_ PodSource = (*KubeSource)(nil)
	_ Annotator = (*KubeSource)(nil)
)

// NewKubeSource returns a source of node's pods read through client.
// resync is the informers' resync period (DefaultKubeResync when zero). log
// may be nil.
func NewKubeSource(client kubernetes.Interface, node string, resync time.Duration, log *slog.Logger) *KubeSource {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if resync <= 0 {
		resync = DefaultKubeResync
	}
	return &KubeSource{client: client, node: node, resync: resync, log: log, changed: make(chan struct{})}
}

// Run starts the informers and serves until ctx ends. It returns an error
// when the informers cannot be started.
func (s *KubeSource) Run(ctx context.Context) error {
	podFactory := informers.NewSharedInformerFactoryWithOptions(s.client, s.resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", s.node).String()
		}))
	nsFactory := informers.NewSharedInformerFactory(s.client, s.resync)
	podInf := podFactory.Core().V1().Pods().Informer()
	nsInf := nsFactory.Core().V1().Namespaces().Informer()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.signal() },
		UpdateFunc: func(any, any) { s.signal() },
		DeleteFunc: func(any) { s.signal() },
	}
	for _, inf := range []cache.SharedIndexInformer{podInf, nsInf} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watching node %s's pods: %w", s.node, err)
		}
		if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			s.log.Warn("watching the API server (retried)", "node", s.node, "err", err)
		}); err != nil {
			return fmt.Errorf("watching node %s's pods: %w", s.node, err)
		}
	}
	s.mu.Lock()
	s.pods, s.nss = podInf.GetStore(), nsInf.GetStore()
	s.mu.Unlock()
	podFactory.Start(ctx.Done())
	nsFactory.Start(ctx.Done())
	defer podFactory.Shutdown()
	defer nsFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInf.HasSynced, nsInf.HasSynced) {
		return nil // ctx ended
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()
	s.signal()
	s.log.Info("pod source synced with the API server", "node", s.node)
	<-ctx.Done()
	return nil
}

func (s *KubeSource) signal() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Changed implements PodSource.
func (s *KubeSource) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Pods implements PodSource: the node's pods, sorted by namespace/name,
// with their namespace's labels.
func (s *KubeSource) Pods() ([]Pod, bool) {
	s.mu.Lock()
	podStore, nsStore, synced := s.pods, s.nss, s.synced
	s.mu.Unlock()
	if podStore == nil {
		return nil, false
	}
	var out []Pod
	for _, obj := range podStore.List() {
		kp, ok := obj.(*corev1.Pod)
		if !ok || kp.Spec.NodeName != s.node {
			continue
		}
		var nsLabels map[string]string
		if o, ok, _ := nsStore.GetByKey(kp.Namespace); ok {
			if ns, ok := o.(*corev1.Namespace); ok {
				nsLabels = ns.Labels
			}
		}
		if p, ok := podFromKube(kp, nsLabels, s.ReadNetnsAnnotation); ok {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out, synced
}

// podFromKube converts a Kubernetes pod; ok is false for pods the agent has
// no business with (finished, host network). The maps are copies. Netns
// is NetnsAnnotation when readNetns.
func podFromKube(kp *corev1.Pod, nsLabels map[string]string, readNetns bool) (Pod, bool) {
	if kp.Spec.HostNetwork || kp.Status.Phase == corev1.PodSucceeded || kp.Status.Phase == corev1.PodFailed {
		return Pod{}, false
	}
	p := Pod{
		UID:             string(kp.UID),
		Name:            kp.Name,
		Namespace:       kp.Namespace,
		ServiceAccount:  kp.Spec.ServiceAccountName,
		Labels:          maps.Clone(kp.Labels),
		NamespaceLabels: maps.Clone(nsLabels),
		Redirected:      kp.Annotations[RedirectionAnnotation] == RedirectionEnabled,
	}
	if readNetns {
		p.Netns = kp.Annotations[NetnsAnnotation]
	}
	if p.ServiceAccount == "" {
		p.ServiceAccount = "default"
	}
	seen := map[netip.Addr]bool{}
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a] {
			seen[a] = true
			p.IPs = append(p.IPs, a.Unmap())
		}
	}
	add(kp.Status.PodIP)
	for _, ip := range kp.Status.PodIPs {
		add(ip.IP)
	}
	return p, true
}

// Annotate implements Annotator: it sets (captured) or removes
// RedirectionAnnotation on the pod with a JSON merge patch that also
// carries the pod's UID, so a newer pod of the same name is never touched
// (the patch fails instead). A pod that is gone is no error.
func (s *KubeSource) Annotate(ctx context.Context, pod Pod, captured bool) error {
	var val any // nil removes the key
	if captured {
		val = RedirectionEnabled
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         pod.UID,
		"annotations": map[string]any{RedirectionAnnotation: val},
	}})
	if err != nil {
		return err
	}
	_, err = s.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		verb := "removing"
		if captured {
			verb = "setting"
		}
		return fmt.Errorf("%s annotation %s on pod %s: %w (the agent needs RBAC: pods patch)", verb, RedirectionAnnotation, pod.Key(), err)
	}
	return nil
}
