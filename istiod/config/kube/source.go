package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// Defaults of Options.
const (
	// DefaultResync is how often the informers replay their caches, which
	// forces a rebuild even when no event came.
	DefaultResync = 10 * time.Minute
	// DefaultCRDPollInterval is how often discovery is asked whether a
	// missing Istio CRD has been installed.
	DefaultCRDPollInterval = 10 * time.Second
)

// SecurityGroupVersion is the API group version of the Istio policies read.
const SecurityGroupVersion = "security.istio.io/v1"

// Resource names (plural) of the Istio policies in SecurityGroupVersion.
const (
	ResourceAuthorizationPolicies = "authorizationpolicies"
	ResourcePeerAuthentications   = "peerauthentications"
)

// IndexNodeName is the pod cache index by spec.nodeName.
const IndexNodeName = "spec.nodeName"

// ErrNotSynced: the caches have not synced yet; the answer would be partial.
var ErrNotSynced = errors.New("kubernetes caches not synced yet")

// queueKey is the one workqueue key: "the whole snapshot is dirty".
const queueKey = "snapshot"

// Options configure a Source. The zero value uses the defaults.
type Options struct {
	// Resync is the informers' resync period; default DefaultResync.
	Resync time.Duration
	// CRDPollInterval is how often a missing Istio CRD is looked for;
	// default DefaultCRDPollInterval.
	CRDPollInterval time.Duration
	// Logger, default slog.Default.
	Logger *slog.Logger
}

// Source is the Kubernetes config.Source. Create it with New or
// NewForConfig, call Run once; the other methods are safe for concurrent use.
type Source struct {
	istio istioclient.Interface
	disc  discoveryClient
	opts  Options
	log   *slog.Logger

	core   informers.SharedInformerFactory
	sec    istioinformers.SharedInformerFactory
	nsInf  cache.SharedIndexInformer
	podInf cache.SharedIndexInformer
	svcInf cache.SharedIndexInformer
	saInf  cache.SharedIndexInformer
	epsInf cache.SharedIndexInformer

	// dirty lists, per kind, the cache keys that changed since the last
	// build (full: the whole kind), so a build copies only those.
	dirtyMu sync.Mutex
	dirty   [numKinds]map[string]struct{}
	full    [numKinds]bool

	// apInf and paInf are set (once) by Run when their CRD is found.
	polMu sync.Mutex
	apInf cache.SharedIndexInformer
	paInf cache.SharedIndexInformer

	warned  bool // the missing-CRD warning was logged (then debug)
	queue   workqueue.TypedRateLimitingInterface[string]
	changes chan struct{}
	synced  chan struct{}
	ran     atomic.Bool

	mu   sync.RWMutex
	snap *config.Snapshot
	gen  uint64
}

var _ config.Source = (*Source)(nil)

// discoveryClient is what Source asks about the Istio CRDs.
type discoveryClient interface {
	ServerResourcesForGroupVersion(groupVersion string) (*metav1.APIResourceList, error)
}

// NewForConfig returns a Source talking to the API server of cfg.
func NewForConfig(cfg *rest.Config, opts Options) (*Source, error) {
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	ic, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("istio client for %s: %w", cfg.Host, err)
	}
	return New(kc, ic, opts), nil
}

// New returns a Source reading through kube and istio (fakes in tests).
func New(kube kubernetes.Interface, istio istioclient.Interface, opts Options) *Source {
	if opts.Resync <= 0 {
		opts.Resync = DefaultResync
	}
	if opts.CRDPollInterval <= 0 {
		opts.CRDPollInterval = DefaultCRDPollInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Source{
		istio: istio,
		disc:  kube.Discovery(),
		opts:  opts,
		log:   log,
		core:  informers.NewSharedInformerFactoryWithOptions(kube, opts.Resync, informers.WithTransform(dropManagedFields)),
		sec:   istioinformers.NewSharedInformerFactoryWithOptions(istio, opts.Resync, istioinformers.WithTransform(dropManagedFields)),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "ambit-config"}),
		changes: make(chan struct{}, 1),
		synced:  make(chan struct{}),
		snap:    config.NewSnapshot(),
	}
	for k := range s.full {
		s.full[k] = true
	}
	s.nsInf = s.core.Core().V1().Namespaces().Informer()
	s.podInf = s.core.Core().V1().Pods().Informer()
	s.svcInf = s.core.Core().V1().Services().Informer()
	s.saInf = s.core.Core().V1().ServiceAccounts().Informer()
	s.epsInf = s.core.Discovery().V1().EndpointSlices().Informer()
	// Indexers must be added before the informer starts.
	if err := s.podInf.AddIndexers(cache.Indexers{IndexNodeName: podNodeName}); err != nil {
		panic("kube: adding the pod node index: " + err.Error())
	}
	for k, inf := range s.coreInformers() {
		if _, err := inf.AddEventHandler(s.handlerFor(kind(k))); err != nil {
			panic("kube: adding an event handler: " + err.Error())
		}
	}
	return s
}

// coreInformers are the informers of the core kinds, indexed by kind.
func (s *Source) coreInformers() []cache.SharedIndexInformer {
	return []cache.SharedIndexInformer{s.nsInf, s.podInf, s.svcInf, s.saInf, s.epsInf}
}

// kind indexes the snapshot's kinds; the core ones in coreInformers order.
type kind int

const (
	kindNamespace kind = iota
	kindPod
	kindService
	kindServiceAccount
	kindEndpointSlice
	kindAuthorizationPolicy
	kindPeerAuthentication
	numKinds
)

// handlerFor records the key of every event of kind k and queues a build.
func (s *Source) handlerFor(k kind) cache.ResourceEventHandler {
	mark := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		s.dirtyMu.Lock()
		switch {
		case err != nil:
			s.full[k] = true
		case !s.full[k]:
			if s.dirty[k] == nil {
				s.dirty[k] = map[string]struct{}{}
			}
			s.dirty[k][key] = struct{}{}
		}
		s.dirtyMu.Unlock()
		s.queue.Add(queueKey)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    mark,
		UpdateFunc: func(_, obj any) { mark(obj) },
		DeleteFunc: mark,
	}
}

func (s *Source) markFull(k kind) {
	s.dirtyMu.Lock()
	s.full[k] = true
	s.dirtyMu.Unlock()
}

// takeDirty returns and resets what changed since the last build.
func (s *Source) takeDirty() (dirty [numKinds]map[string]struct{}, full [numKinds]bool) {
	s.dirtyMu.Lock()
	defer s.dirtyMu.Unlock()
	dirty, full = s.dirty, s.full
	s.dirty, s.full = [numKinds]map[string]struct{}{}, [numKinds]bool{}
	return dirty, full
}

// update returns the map of one kind for the next snapshot: prev itself
// when nothing changed, a copy of prev with the dirty keys read again from
// store, or (full) the whole store. The cache keys are the snapshot's keys
// (config.Key, or the name of a namespace).
func update[T any](prev map[string]T, store cache.Store, dirty map[string]struct{}, full bool) map[string]T {
	if !full && len(dirty) == 0 {
		return prev
	}
	if full || store == nil {
		out := map[string]T{}
		if store == nil {
			return out
		}
		for _, key := range store.ListKeys() {
			if o, ok, _ := store.GetByKey(key); ok {
				if v, ok := o.(T); ok {
					out[key] = v
				}
			}
		}
		return out
	}
	out := maps.Clone(prev)
	for key := range dirty {
		o, ok, _ := store.GetByKey(key)
		v, isT := o.(T)
		if ok && isT {
			out[key] = v
		} else {
			delete(out, key)
		}
	}
	return out
}

func podNodeName(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" {
		return nil, nil
	}
	return []string{p.Spec.NodeName}, nil
}

// dropManagedFields trims what the snapshot never reads, before caching.
func dropManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}

// Run starts the informers, waits for their caches, publishes the first
// snapshot and then one after each batch of changes, until ctx ends. It
// returns an error only when the caches cannot sync before ctx ends. Call it
// once.
func (s *Source) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("kube: Source.Run called twice")
	}
	defer s.queue.ShutDown()
	defer s.core.Shutdown()
	defer s.sec.Shutdown()

	s.core.Start(ctx.Done())
	s.watchPolicies(ctx)
	s.log.Info("waiting for kubernetes caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), s.informerSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kubernetes caches did not sync")
	}
	s.queue.Add(queueKey)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.pollCRDs(ctx) }()
	go func() {
		defer wg.Done()
		for s.processNext() {
		}
	}()
	<-ctx.Done()
	s.queue.ShutDown()
	wg.Wait()
	return nil
}

// informerSynced reports whether every started informer has synced.
func (s *Source) informerSynced() bool {
	for _, inf := range s.startedInformers() {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

func (s *Source) startedInformers() []cache.SharedIndexInformer {
	infs := s.coreInformers()
	s.polMu.Lock()
	defer s.polMu.Unlock()
	if s.apInf != nil {
		infs = append(infs, s.apInf)
	}
	if s.paInf != nil {
		infs = append(infs, s.paInf)
	}
	return infs
}

func (s *Source) processNext() bool {
	key, shutdown := s.queue.Get()
	if shutdown {
		return false
	}
	defer s.queue.Done(key)
	snap, err := s.build()
	if err != nil {
		s.log.Debug("config rebuild postponed", "error", err)
		s.queue.AddRateLimited(key)
		return true
	}
	s.queue.Forget(key)
	s.publish(snap)
	return true
}

// build makes the next snapshot from the caches: the previous snapshot's
// map of a kind without events, else that map with the keys of the events
// read again (the whole cache for a kind marked full: before the first
// build, and when a policy informer starts).
func (s *Source) build() (*config.Snapshot, error) {
	// The policy informers read are those found synced: one started
	// after this point stays marked full for the next build.
	s.polMu.Lock()
	ap, pa := s.apInf, s.paInf
	s.polMu.Unlock()
	if !s.informerSynced() || (ap != nil && !ap.HasSynced()) || (pa != nil && !pa.HasSynced()) {
		return nil, ErrNotSynced
	}
	dirty, full := s.takeDirty()
	var apStore, paStore cache.Store
	if ap != nil {
		apStore = ap.GetStore()
	} else if full[kindAuthorizationPolicy] {
		s.markFull(kindAuthorizationPolicy)
	}
	if pa != nil {
		paStore = pa.GetStore()
	} else if full[kindPeerAuthentication] {
		s.markFull(kindPeerAuthentication)
	}
	prev := s.Snapshot()
	return &config.Snapshot{
		Namespaces:            update(prev.Namespaces, s.nsInf.GetStore(), dirty[kindNamespace], full[kindNamespace]),
		Pods:                  update(prev.Pods, s.podInf.GetStore(), dirty[kindPod], full[kindPod]),
		Services:              update(prev.Services, s.svcInf.GetStore(), dirty[kindService], full[kindService]),
		ServiceAccounts:       update(prev.ServiceAccounts, s.saInf.GetStore(), dirty[kindServiceAccount], full[kindServiceAccount]),
		EndpointSlices:        update(prev.EndpointSlices, s.epsInf.GetStore(), dirty[kindEndpointSlice], full[kindEndpointSlice]),
		AuthorizationPolicies: update(prev.AuthorizationPolicies, apStore, dirty[kindAuthorizationPolicy], full[kindAuthorizationPolicy]),
		PeerAuthentications:   update(prev.PeerAuthentications, paStore, dirty[kindPeerAuthentication], full[kindPeerAuthentication]),
	}, nil
}

func (s *Source) publish(snap *config.Snapshot) {
	s.mu.Lock()
	s.snap = snap
	s.gen++
	first := s.gen == 1
	s.mu.Unlock()
	if first {
		s.log.Info("first kubernetes config snapshot", "namespaces", len(snap.Namespaces), "pods", len(snap.Pods),
			"services", len(snap.Services), "authorization_policies", len(snap.AuthorizationPolicies),
			"peer_authentications", len(snap.PeerAuthentications))
		close(s.synced)
	}
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// Snapshot returns the latest snapshot; an empty one before the first.
func (s *Source) Snapshot() *config.Snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snap
}

// Generation counts the snapshots published so far (0 before the first).
func (s *Source) Generation() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gen
}

// Changes receives after each new snapshot (buffer of one, coalescing).
func (s *Source) Changes() <-chan struct{} { return s.changes }

// Synced is closed once the first snapshot is published.
func (s *Source) Synced() <-chan struct{} { return s.synced }

// Pod returns the cached pod namespace/name, nil when there is none, or
// ErrNotSynced before the pod cache synced.
func (s *Source) Pod(namespace, name string) (*corev1.Pod, error) {
	if !s.podInf.HasSynced() {
		return nil, ErrNotSynced
	}
	o, ok, err := s.podInf.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, err
	}
	p, _ := o.(*corev1.Pod)
	return p, nil
}

// PodsOnNode returns the cached pods whose spec.nodeName is node, or
// ErrNotSynced before the pod cache synced. The pods are shared: do not
// modify them.
func (s *Source) PodsOnNode(node string) ([]*corev1.Pod, error) {
	if !s.podInf.HasSynced() {
		return nil, ErrNotSynced
	}
	objs, err := s.podInf.GetIndexer().ByIndex(IndexNodeName, node)
	if err != nil {
		return nil, err
	}
	pods := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

// watchPolicies starts the informer of each Istio policy CRD that is
// installed, and warns about each that is not. It reports whether both run.
func (s *Source) watchPolicies(ctx context.Context) bool {
	s.polMu.Lock()
	needAP, needPA := s.apInf == nil, s.paInf == nil
	s.polMu.Unlock()
	if !needAP && !needPA {
		return true
	}
	list, err := s.disc.ServerResourcesForGroupVersion(SecurityGroupVersion)
	if err != nil && !apierrors.IsNotFound(err) {
		logf := s.log.Warn
		if s.warned {
			logf = s.log.Debug
		}
		s.warned = true
		logf("cannot ask the API server whether the Istio CRDs are installed; retrying",
			"group_version", SecurityGroupVersion, "retry_in", s.opts.CRDPollInterval, "error", err)
		return false
	}
	have := map[string]bool{}
	if list != nil {
		for _, r := range list.APIResources {
			have[r.Name] = true
		}
	}
	started := false
	s.polMu.Lock()
	if needAP && have[ResourceAuthorizationPolicies] {
		s.apInf = s.sec.Security().V1().AuthorizationPolicies().Informer()
		s.markFull(kindAuthorizationPolicy)
		_, _ = s.apInf.AddEventHandler(s.handlerFor(kindAuthorizationPolicy))
		started = true
	}
	if needPA && have[ResourcePeerAuthentications] {
		s.paInf = s.sec.Security().V1().PeerAuthentications().Informer()
		s.markFull(kindPeerAuthentication)
		_, _ = s.paInf.AddEventHandler(s.handlerFor(kindPeerAuthentication))
		started = true
	}
	missing := []string{}
	if s.apInf == nil {
		missing = append(missing, ResourceAuthorizationPolicies+"."+SecurityGroupVersion)
	}
	if s.paInf == nil {
		missing = append(missing, ResourcePeerAuthentications+"."+SecurityGroupVersion)
	}
	s.polMu.Unlock()
	if started {
		s.sec.Start(ctx.Done())
		s.log.Info("watching Istio policies", "group_version", SecurityGroupVersion)
		// A rebuild now waits (rate-limited retries) until the new
		// informer synced; its own events then trigger more.
		s.queue.Add(queueKey)
	}
	if len(missing) > 0 {
		logf := s.log.Warn
		if s.warned {
			logf = s.log.Debug
		}
		s.warned = true
		logf("Istio CRDs not installed: treating these policies as absent until they are (install Istio's CRDs, e.g. the base chart's crd-all.gen.yaml)",
			"missing", missing, "retry_in", s.opts.CRDPollInterval)
		return false
	}
	return true
}

// pollCRDs calls watchPolicies until both CRDs are watched or ctx ends.
func (s *Source) pollCRDs(ctx context.Context) {
	t := time.NewTicker(s.opts.CRDPollInterval)
	defer t.Stop()
	for {
		s.polMu.Lock()
		done := s.apInf != nil && s.paInf != nil
		s.polMu.Unlock()
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.watchPolicies(ctx)
		}
	}
}
