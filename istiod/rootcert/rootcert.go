package rootcert

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Istio's names.
const (
	// ConfigMapName is the ConfigMap published in every namespace.
	ConfigMapName = "istio-ca-root-cert"
	// DataKey holds the PEM trust bundle.
	DataKey = "root-cert.pem"
	// LabelKey and LabelValue mark the ConfigMap as Istio's config.
	LabelKey   = "istio.io/config"
	LabelValue = "true"
)

// SkippedNamespaces get no ConfigMap (Istio's list).
var SkippedNamespaces = map[string]bool{"kube-public": true, "kube-node-lease": true, "local-path-storage": true}

// Defaults for Options.
const (
	// DefaultResync re-lists both caches into the queue now and then, a
	// safety net: every change already arrives as an event.
	DefaultResync = 30 * time.Minute
	// DefaultWorkers reconcile in parallel.
	DefaultWorkers = 2
)

// Options configure a Controller.
type Options struct {
	// Client reads namespaces and writes the ConfigMaps.
	Client kubernetes.Interface
	// RootPEM is the trust bundle to publish (ca.Authority.RootsPEM).
	RootPEM []byte
	// Resync and Workers default to DefaultResync and DefaultWorkers.
	Resync  time.Duration
	Workers int
	// Logger receives one line per ConfigMap written and per failure;
	// nil discards.
	Logger *slog.Logger
}

// Controller keeps the ConfigMap in every namespace. Run it once.
type Controller struct {
	opts  Options
	log   *slog.Logger
	root  string
	queue workqueue.TypedRateLimitingInterface[string]

	nsInf  cache.SharedIndexInformer
	cmInf  cache.SharedIndexInformer
	ns     corelisters.NamespaceLister
	cms    corelisters.ConfigMapLister
	synced chan struct{}
	once   sync.Once
}

// New returns a Controller; nothing runs before Run.
func New(opts Options) (*Controller, error) {
	if opts.Client == nil {
		return nil, errors.New("rootcert: no Kubernetes client")
	}
	if len(opts.RootPEM) == 0 {
		return nil, errors.New("rootcert: empty trust bundle; pass the CA's RootsPEM")
	}
	if opts.Resync == 0 {
		opts.Resync = DefaultResync
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{
		opts: opts,
		log:  log,
		root: string(opts.RootPEM),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "root-cert"}),
		synced: make(chan struct{}),
	}
	c.nsInf = coreinformers.NewNamespaceInformer(opts.Client, opts.Resync, cache.Indexers{})
	c.cmInf = coreinformers.NewFilteredConfigMapInformer(opts.Client, metav1.NamespaceAll, opts.Resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", ConfigMapName).String()
		})
	c.ns = corelisters.NewNamespaceLister(c.nsInf.GetIndexer())
	c.cms = corelisters.NewConfigMapLister(c.cmInf.GetIndexer())
	if _, err := c.nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.enqueue(o, true) },
		UpdateFunc: func(_, o any) { c.enqueue(o, true) },
	}); err != nil {
		return nil, err
	}
	if _, err := c.cmInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.enqueue(o, false) },
		UpdateFunc: func(_, o any) { c.enqueue(o, false) },
		DeleteFunc: func(o any) { c.enqueue(o, false) },
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// enqueue adds the namespace of o: o itself when isNS, else o's namespace.
func (c *Controller) enqueue(o any, isNS bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	m, err := meta.Accessor(o)
	if err != nil {
		return
	}
	if isNS {
		c.queue.Add(m.GetName())
	} else {
		c.queue.Add(m.GetNamespace())
	}
}

// Synced is closed once both caches synced and the workers started.
func (c *Controller) Synced() <-chan struct{} { return c.synced }

// Run starts the informers and the workers, and returns when ctx ends.
// It returns an error only if the caches never sync before ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	go c.nsInf.Run(ctx.Done())
	go c.cmInf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.nsInf.HasSynced, c.cmInf.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("rootcert: namespace and ConfigMap caches did not sync")
	}
	var wg sync.WaitGroup
	for range c.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.processNext(ctx) {
			}
		}()
	}
	c.once.Do(func() { close(c.synced) })
	c.log.Info("publishing the root certificate to every namespace", "configmap", ConfigMapName, "key", DataKey)
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

// processNext reconciles one key; false once the queue shut down.
func (c *Controller) processNext(ctx context.Context) bool {
	ns, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(ns)
	if err := c.Reconcile(ctx, ns); err != nil {
		logf := c.log.Warn
		if apierrors.IsConflict(err) {
			logf = c.log.Debug // another replica wrote it first; retried on the fresher cache
		}
		logf("root certificate ConfigMap not written; retrying", "namespace", ns, "configmap", ConfigMapName,
			"retries", c.queue.NumRequeues(ns), "error", err)
		c.queue.AddRateLimited(ns)
		return true
	}
	c.queue.Forget(ns)
	return true
}

// Reconcile makes namespace ns hold the ConfigMap, from the cached state.
func (c *Controller) Reconcile(ctx context.Context, ns string) error {
	if SkippedNamespaces[ns] {
		return nil
	}
	n, err := c.ns.Get(ns)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if n.DeletionTimestamp != nil || n.Status.Phase == corev1.NamespaceTerminating {
		return nil
	}
	cur, err := c.cms.ConfigMaps(ns).Get(ConfigMapName)
	if apierrors.IsNotFound(err) {
		return c.create(ctx, ns)
	}
	if err != nil {
		return err
	}
	if cur.Data[DataKey] == c.root && cur.Labels[LabelKey] == LabelValue {
		return nil
	}
	next := cur.DeepCopy()
	if next.Data == nil {
		next.Data = map[string]string{}
	}
	next.Data[DataKey] = c.root
	next.Labels = maps.Clone(next.Labels)
	if next.Labels == nil {
		next.Labels = map[string]string{}
	}
	next.Labels[LabelKey] = LabelValue
	if _, err := c.opts.Client.CoreV1().ConfigMaps(ns).Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil // deleted meanwhile: its delete event queues a create
		}
		return fmt.Errorf("updating ConfigMap %s/%s: %w", ns, ConfigMapName, forbiddenFix(err, "update"))
	}
	c.log.Info("root certificate ConfigMap fixed", "namespace", ns, "configmap", ConfigMapName)
	return nil
}

func (c *Controller) create(ctx context.Context, ns string) error {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: ConfigMapName, Labels: map[string]string{LabelKey: LabelValue}},
		Data:       map[string]string{DataKey: c.root},
	}
	_, err := c.opts.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
	switch {
	case err == nil:
		c.log.Info("root certificate ConfigMap created", "namespace", ns, "configmap", ConfigMapName)
		return nil
	case apierrors.IsAlreadyExists(err):
		// The cache lags: its add event queues the namespace again.
		return nil
	case apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) || apierrors.IsNotFound(err):
		return nil
	default:
		return fmt.Errorf("creating ConfigMap %s/%s: %w", ns, ConfigMapName, forbiddenFix(err, "create"))
	}
}

// forbiddenFix adds the missing RBAC rule to a Forbidden error.
func forbiddenFix(err error, verb string) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%w; grant istiod's service account %q on configmaps in a ClusterRole", err, verb)
	}
	return err
}
