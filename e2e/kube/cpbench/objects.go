package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
)

// Object naming. Every namespace the bench creates starts with nsPrefix,
// which the clients also use to count only the bench's Address resources
// (a server may add its own, e.g. default/kubernetes).
const (
	nsPrefix   = "cpb-"
	nodePrefix = "cpb-node-"
	appLabel   = "app"
	// Enrollment and redirection as Istio's CNI leaves them on a captured pod.
	labelDataplaneMode = "istio.io/dataplane-mode"
	annotRedirection   = "ambient.istio.io/redirection"
	servicePort        = 80
	targetPort         = 8080
)

// Address ranges: pod IPs are data only (no traffic is sent).
var (
	podBase  = netip.MustParseAddr("10.200.0.0") // 10.200.0.0/13: 524,286 pods
	nodeBase = netip.MustParseAddr("172.20.0.0") // node InternalIPs
)

func nsName(k int) string   { return fmt.Sprintf("%s%d", nsPrefix, k) }
func nodeName(k int) string { return fmt.Sprintf("%s%d", nodePrefix, k) }
func podName(i int) string  { return fmt.Sprintf("pod-%05d", i) }
func svcName(j int) string  { return fmt.Sprintf("svc-%04d", j) }

// podNS is pod i's namespace index; service j lives in namespace j%ns.
func podNS(i, ns int) int { return i % ns }

// podService is the service index pod i belongs to (its app label), or -1
// when its namespace has no service. Pods of namespace k are dealt round
// robin over the services of namespace k.
func podService(i, ns, services int) int {
	k := i % ns
	perNS := services / ns
	if k < services%ns {
		perNS++
	}
	if perNS == 0 {
		return -1
	}
	return k + ns*((i/ns)%perNS)
}

func nthAddr(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func podIP(i int) netip.Addr   { return nthAddr(podBase, i+1) }
func nodeIP(k int) netip.Addr  { return nthAddr(nodeBase, k+1) }
func podNode(i, nodes int) int { return i % nodes }

// populated is what populate created and how long it took.
type populated struct {
	Namespaces, Nodes, Services, Pods int
	// Endpoints is the number of pods selected by a service.
	Endpoints int
	Took      time.Duration
	// Settle is the wait for the EndpointSlice controller to catch up.
	Settle time.Duration
}

// populate creates the namespaces, Node objects, services and pods of the
// run with bounded concurrency (cfg.workers) and rate (cfg.qps writes per
// second through client-go's limiter), pods with their Running/Ready status
// and IPs written like a kubelet would, then waits until the EndpointSlice
// controller lists every selected pod as a ready endpoint, so that no
// controller writes while the servers are measured.
func populate(ctx context.Context, c *cluster.Cluster, cfg config, progress io.Writer) (populated, error) {
	start := time.Now()
	rc := rest.CopyConfig(c.Config)
	rc.QPS = float32(cfg.qps)
	rc.Burst = max(cfg.qps/10, cfg.workers)
	rc.UserAgent = "ambit-cpbench"
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return populated{}, err
	}
	res := populated{Namespaces: cfg.namespaces, Nodes: cfg.nodes, Services: cfg.services, Pods: cfg.pods}

	// Namespaces (enrolled in ambient), then their default ServiceAccount,
	// which the admission of a pod requires.
	for k := range cfg.namespaces {
		_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: nsName(k), Labels: map[string]string{labelDataplaneMode: "ambient"},
		}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return res, fmt.Errorf("creating namespace %s: %w", nsName(k), err)
		}
	}
	for k := range cfg.namespaces {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := c.WaitForServiceAccount(wctx, nsName(k), "default")
		cancel()
		if err != nil {
			return res, err
		}
	}

	p := newProgress(progress, "objects", cfg.nodes+cfg.services+cfg.pods)
	defer p.stop()
	err = parallel(ctx, cfg.workers, cfg.nodes, func(ctx context.Context, k int) error {
		defer p.add(1)
		return createNode(ctx, kc, k)
	})
	if err != nil {
		return res, err
	}
	err = parallel(ctx, cfg.workers, cfg.services, func(ctx context.Context, j int) error {
		defer p.add(1)
		return createService(ctx, kc, cfg, j)
	})
	if err != nil {
		return res, err
	}
	err = parallel(ctx, cfg.workers, cfg.pods, func(ctx context.Context, i int) error {
		defer p.add(1)
		return createPod(ctx, kc, cfg, i)
	})
	if err != nil {
		return res, err
	}
	p.stop()
	for i := range cfg.pods {
		if podService(i, cfg.namespaces, cfg.services) >= 0 {
			res.Endpoints++
		}
	}
	settle := time.Now()
	if err := waitEndpoints(ctx, kc, res.Endpoints, cfg.settleTimeout, progress); err != nil {
		return res, err
	}
	res.Settle = time.Since(settle)
	res.Took = time.Since(start)
	return res, nil
}

func createNode(ctx context.Context, kc kubernetes.Interface, k int) error {
	n, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   nodeName(k),
		Labels: map[string]string{"kubernetes.io/hostname": nodeName(k), "type": "cpbench-simulated"},
	}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("creating node %s: %w", nodeName(k), err)
	}
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: nodeIP(k).String()},
		{Type: corev1.NodeHostName, Address: nodeName(k)},
	}
	n.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "CPBenchSimulated",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}
	if _, err := kc.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing node %s status: %w", nodeName(k), err)
	}
	return nil
}

func createService(ctx context.Context, kc kubernetes.Interface, cfg config, j int) error {
	ns := nsName(j % cfg.namespaces)
	_, err := kc.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName(j)},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{appLabel: svcName(j)},
			Ports: []corev1.ServicePort{{
				Name: "http", Port: servicePort, TargetPort: intstr.FromInt32(targetPort), Protocol: corev1.ProtocolTCP,
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating service %s/%s: %w", ns, svcName(j), err)
	}
	return nil
}

// createPod creates pod i bound to its simulated node and writes the status
// a kubelet would (Running, Ready, pod and host IPs).
func createPod(ctx context.Context, kc kubernetes.Interface, cfg config, i int) error {
	ns := nsName(podNS(i, cfg.namespaces))
	labels := map[string]string{"version": "v0"}
	if j := podService(i, cfg.namespaces, cfg.services); j >= 0 {
		labels[appLabel] = svcName(j)
	}
	pods := kc.CoreV1().Pods(ns)
	pod, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: podName(i), Labels: labels,
			Annotations: map[string]string{annotRedirection: "enabled"},
		},
		Spec: corev1.PodSpec{
			NodeName:                     nodeName(podNode(i, cfg.nodes)),
			AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{
				Name: "app", Image: "cpbench.invalid/app:v0",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: targetPort}},
			}},
		},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		pod, err = pods.Get(ctx, podName(i), metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("creating pod %s/%s: %w", ns, podName(i), err)
	}
	for attempt := 0; ; attempt++ {
		now := metav1.Now()
		st := &pod.Status
		st.Phase = corev1.PodRunning
		st.HostIP = nodeIP(podNode(i, cfg.nodes)).String()
		st.HostIPs = []corev1.HostIP{{IP: st.HostIP}}
		st.PodIP = podIP(i).String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
		st.StartTime = &now
		st.Conditions = nil
		for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			st.Conditions = append(st.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
		}
		st.ContainerStatuses = []corev1.ContainerStatus{{
			Name: "app", Image: "cpbench.invalid/app:v0", Ready: true, Started: new(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}}
		_, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if err == nil || !apierrors.IsConflict(err) || attempt >= 5 {
			break
		}
		if pod, err = pods.Get(ctx, podName(i), metav1.GetOptions{}); err != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("writing pod %s/%s status: %w", ns, podName(i), err)
	}
	return nil
}

// waitEndpoints polls the EndpointSlices of the bench's namespaces until
// they hold want ready endpoints (or timeout).
func waitEndpoints(ctx context.Context, kc kubernetes.Interface, want int, timeout time.Duration, progress io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := -1
	lastPrint := time.Now()
	return cluster.Eventually(ctx, "EndpointSlices listing every selected pod", func(ctx context.Context) error {
		list, err := kc.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{
			LabelSelector:   discoveryv1.LabelManagedBy + "=endpointslice-controller.k8s.io",
			ResourceVersion: "0",
		})
		if err != nil {
			return err
		}
		n := 0
		for _, s := range list.Items {
			if !strings.HasPrefix(s.Namespace, nsPrefix) {
				continue
			}
			for _, e := range s.Endpoints {
				if e.Conditions.Ready == nil || *e.Conditions.Ready {
					n++
				}
			}
		}
		if n != last && time.Since(lastPrint) > 2*time.Second {
			fmt.Fprintf(progress, "cpbench: endpoint slices: %d/%d ready endpoints\n", n, want)
			lastPrint = time.Now()
		}
		last = n
		if n < want {
			return fmt.Errorf("%d of %d ready endpoints", n, want)
		}
		return nil
	})
}

// parallel runs f(0..n-1) on at most workers goroutines and returns the
// first error (the others are cancelled).
func parallel(ctx context.Context, workers, n int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, i); err != nil {
					errOnce.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	if err := ctx.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// progress prints a count and rate every two seconds while objects are made.
type progress struct {
	w     io.Writer
	what  string
	total int
	start time.Time
	n     atomic.Int64
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func newProgress(w io.Writer, what string, total int) *progress {
	p := &progress{w: w, what: what, total: total, start: time.Now(), done: make(chan struct{})}
	p.wg.Go(func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-t.C:
				p.print()
			}
		}
	})
	return p
}

func (p *progress) add(n int) { p.n.Add(int64(n)) }

func (p *progress) print() {
	n := p.n.Load()
	el := time.Since(p.start).Seconds()
	fmt.Fprintf(p.w, "cpbench: %s: %d/%d created, %.0f objects/s\n", p.what, n, p.total, float64(n)/el)
}

func (p *progress) stop() {
	p.once.Do(func() {
		close(p.done)
		p.wg.Wait()
		p.print()
	})
}
