package testnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Timeouts of one pod's steps.
const (
	chainWait  = 30 * time.Second // for the cni-agent to install ambit-cni
	cniTimeout = 30 * time.Second // one ADD (the agent waits for ztunnel's ack)
	workers    = 4
)

// runningPod is a pod whose sandbox this package set up.
type runningPod struct {
	uid, key, namespace, name, node string
	netns                           string // name; the node's for host-network pods
	hostNetwork                     bool
	ips                             []netip.Addr
	proc                            *local.Proc
	cgroup                          string // the pod's cgroup dir; "" for host-network pods
}

// WithoutAmbitCNIAnnotation, set to "true" on a pod, makes its CNI ADD run
// the node's chain without ambit-cni: as a runtime that read the conflist
// in the moment the primary CNI had rewritten it without ambit-cni, before
// the cni-agent put it back. The pod starts uncaptured.
const WithoutAmbitCNIAnnotation = "testnode.ambit.dev/without-ambit-cni"

// PodNetns is the network namespace of the pod with this UID.
func PodNetns(uid types.UID) string { return NetnsPrefix + "pod-" + string(uid) }

func (n *Nodes) runPods(startCtx context.Context) error {
	factory := informers.NewSharedInformerFactory(n.opts.Client, 0)
	inf := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 5*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "testnode-pods"})
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		if _, mine := n.nodeIdx[pod.Spec.NodeName]; mine {
			queue.Add(pod.Namespace + "/" + pod.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(n.ctx.Done())
	if !cache.WaitForCacheSync(startCtx.Done(), inf.HasSynced) {
		factory.Shutdown()
		return fmt.Errorf("test nodes: pod informer did not sync: %w", startCtx.Err())
	}
	store := inf.GetStore()
	for range workers {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			for {
				key, quit := queue.Get()
				if quit {
					return
				}
				err := n.reconcile(n.ctx, store, key)
				switch {
				case err == nil:
					queue.Forget(key)
				case n.ctx.Err() == nil:
					n.log.Warn("test node: pod not ready (retried)", "pod", key, "err", err)
					queue.AddRateLimited(key)
				}
				queue.Done(key)
			}
		}()
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		<-n.ctx.Done()
		queue.ShutDown()
		factory.Shutdown()
	}()
	return nil
}

// reconcile makes one pod's sandbox match its object: set up and started
// (status written) while it exists and is not being deleted, torn down
// otherwise, and a deletion confirmed.
func (n *Nodes) reconcile(ctx context.Context, store cache.Store, key string) error {
	obj, exists, err := store.GetByKey(key)
	if err != nil {
		return err
	}
	var pod *corev1.Pod
	if exists {
		pod = obj.(*corev1.Pod)
		if _, mine := n.nodeIdx[pod.Spec.NodeName]; !mine {
			pod = nil
		}
	}
	n.mu.Lock()
	rp := n.pods[key]
	n.mu.Unlock()
	if rp != nil && (pod == nil || string(pod.UID) != rp.uid || pod.DeletionTimestamp != nil) {
		n.mu.Lock()
		delete(n.pods, key)
		n.mu.Unlock()
		if err := n.teardown(ctx, rp); err != nil {
			n.log.Warn("test node: tearing a pod down", "pod", key, "err", err)
		}
		rp = nil
	}
	if pod == nil {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		// As a kubelet: the containers are gone, confirm the deletion.
		uid := pod.UID
		err := n.opts.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &uid},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	if rp == nil {
		if rp, err = n.startPod(ctx, pod); err != nil {
			return err
		}
	}
	return n.writeStatus(ctx, pod, rp)
}

// startPod creates the pod's netns, annotates its path, runs CNI ADD and
// starts its command. On error nothing is left.
func (n *Nodes) startPod(ctx context.Context, pod *corev1.Pod) (*runningPod, error) {
	key := pod.Namespace + "/" + pod.Name
	rp := &runningPod{uid: string(pod.UID), key: key, namespace: pod.Namespace, name: pod.Name, node: pod.Spec.NodeName, netns: PodNetns(pod.UID)}
	fail := func(err error) (*runningPod, error) {
		return nil, errors.Join(fmt.Errorf("starting pod %s on %s: %w", key, rp.node, err), n.teardown(context.Background(), rp))
	}
	if pod.Spec.HostNetwork {
		rp.hostNetwork, rp.netns, rp.ips = true, NodeNetns(rp.node), []netip.Addr{n.IP(rp.node)}
		if err := n.startCommand(pod, rp); err != nil {
			return fail(err)
		}
		return n.track(rp)
	}
	ns, err := netns.Create(rp.netns)
	if err != nil {
		return fail(err)
	}
	err = netns.Do(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	ns.Close()
	if err != nil {
		return fail(fmt.Errorf("setting lo up: %w", err))
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid": pod.UID, "annotations": map[string]string{agent.NetnsAnnotation: netns.Path(rp.netns)},
	}})
	if _, err := n.opts.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fail(fmt.Errorf("annotating the netns: %w", err))
	}
	lctx, cancel := context.WithTimeout(ctx, chainWait)
	list, err := local.LoadChain(lctx, n.NetD(rp.node), NetworkName)
	cancel()
	if err != nil {
		return fail(err)
	}
	if pod.Annotations[WithoutAmbitCNIAnnotation] == "true" {
		short := *list
		short.Plugins = slices.DeleteFunc(slices.Clone(list.Plugins), func(p *libcni.NetworkConfig) bool { return p.Network.Type == local.AmbitCNIType })
		list = &short
	}
	ips, err := n.cni(ctx, rp, list, true)
	if err != nil {
		return fail(fmt.Errorf("CNI ADD: %w (plugin log %s)", err, n.LogPath("cni-"+rp.node)))
	}
	rp.ips = ips
	// As containerd: the sandbox's first process starts after CNI ADD.
	rp.cgroup = PodCgroup(n.cgroupRoot, pod.UID)
	if err := os.MkdirAll(rp.cgroup, 0o755); err != nil {
		return fail(fmt.Errorf("creating the pod's cgroup: %w", err))
	}
	if err := n.startCommand(pod, rp); err != nil {
		return fail(err)
	}
	return n.track(rp)
}

// track records a started pod, unless Stop came first.
func (n *Nodes) track(rp *runningPod) (*runningPod, error) {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return nil, errors.Join(errors.New("test nodes stopped"), n.teardown(context.Background(), rp))
	}
	n.pods[rp.key] = rp
	n.mu.Unlock()
	n.log.Info("test node: pod started", "pod", rp.key, "node", rp.node, "ips", rp.ips, "netns", rp.netns)
	return rp, nil
}

// startCommand starts the first container's command in rp's netns and,
// unless the pod is on the host network, in its cgroup (rp.cgroup) before
// the program runs. A pod without a command gets a pause process (sleep
// infinity), as a sandbox; a host-network pod without one gets nothing.
func (n *Nodes) startCommand(pod *corev1.Pod, rp *runningPod) error {
	c := pod.Spec.Containers
	var cmd, args []string
	if len(c) > 0 && len(c[0].Command) > 0 {
		cmd, args = c[0].Command, c[0].Args
	} else if !rp.hostNetwork {
		cmd = []string{"sleep", "infinity"}
	} else {
		return nil
	}
	bin, err := n.findBinary(cmd[0])
	if err != nil {
		return err
	}
	env := []string{"POD_NAME=" + pod.Name, "POD_NAMESPACE=" + pod.Namespace}
	if len(c) > 0 {
		for _, e := range c[0].Env {
			if e.ValueFrom == nil {
				env = append(env, e.Name+"="+e.Value)
			}
		}
	}
	args = append(slices.Clone(cmd[1:]), args...)
	if rp.cgroup != "" {
		// The shell joins the cgroup, then becomes the program (same pid).
		args = append([]string{"-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(rp.cgroup, "cgroup.procs"), bin}, args...)
		bin = "/bin/sh"
	}
	p, _, err := local.Launch(rp.netns, bin, args, env, n.LogPath("pod-"+pod.Namespace+"-"+pod.Name))
	if err != nil {
		return err
	}
	rp.proc = &p
	return nil
}

// teardown stops the pod's process, runs CNI DEL (best effort: the chain
// as it is now) and deletes the netns.
func (n *Nodes) teardown(ctx context.Context, rp *runningPod) error {
	if rp.proc != nil {
		local.StopProcs([]local.Proc{*rp.proc}, 5*time.Second)
	}
	if rp.hostNetwork {
		return nil
	}
	var cgErr error
	if rp.cgroup != "" {
		cgErr = removeCgroup(rp.cgroup)
	}
	if _, err := os.Stat(netns.Path(rp.netns)); err != nil {
		return cgErr
	}
	errs := []error{cgErr}
	if list, err := libcni.LoadNetworkConf(n.NetD(rp.node), NetworkName); err == nil {
		if _, err := n.cni(ctx, rp, list, false); err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL of pod %s: %w", rp.key, err))
		}
	}
	errs = append(errs, netns.Delete(rp.netns))
	return errors.Join(errs...)
}

// cni runs ADD (add) or DEL of the chain for rp inside its node's netns.
func (n *Nodes) cni(ctx context.Context, rp *runningPod, list *libcni.NetworkConfigList, add bool) ([]netip.Addr, error) {
	nodeNS, err := netns.OpenName(NodeNetns(rp.node))
	if err != nil {
		return nil, err
	}
	defer nodeNS.Close()
	logPath := n.LogPath("cni-" + rp.node)
	var stderr io.Writer = io.Discard
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err == nil {
		if f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
			defer f.Close()
			stderr = f
		}
	}
	ex := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: stderr}, PluginDecoder: version.PluginDecoder{}}
	cfg := libcni.NewCNIConfigWithCacheDir([]string{n.opts.CNIBinDir}, n.nodeDir(rp.node, "cni-cache"), ex)
	ref := local.CNIPod{Namespace: rp.namespace, Name: rp.name, UID: rp.uid, Netns: netns.Path(rp.netns)}
	ctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	if !add {
		return nil, local.CNIDel(ctx, nodeNS, cfg, list, ref)
	}
	ips, err := local.CNIAdd(ctx, nodeNS, cfg, list, ref)
	if err != nil {
		// Undo what part of the chain did; the caller deletes the netns.
		_ = local.CNIDel(context.Background(), nodeNS, cfg, list, ref)
		return nil, err
	}
	return ips, nil
}

func (n *Nodes) findBinary(name string) (string, error) {
	if filepath.IsAbs(name) {
		return name, nil
	}
	if n.opts.BinDir != "" {
		p := filepath.Join(n.opts.BinDir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("pod command %q is neither in %s nor in PATH", name, n.opts.BinDir)
	}
	return p, nil
}

// writeStatus reports the pod Running and Ready with its IPs, unless the
// object already says so.
func (n *Nodes) writeStatus(ctx context.Context, pod *corev1.Pod, rp *runningPod) error {
	if statusDone(pod, rp) {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := n.opts.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if string(cur.UID) != rp.uid || cur.DeletionTimestamp != nil || statusDone(cur, rp) {
			return nil
		}
		now := metav1.Now()
		st := &cur.Status
		st.Phase = corev1.PodRunning
		st.HostIP = n.IP(rp.node).String()
		st.HostIPs = []corev1.HostIP{{IP: st.HostIP}}
		st.PodIP = rp.ips[0].String()
		st.PodIPs = nil
		for _, ip := range rp.ips {
			st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
		}
		if st.StartTime == nil {
			st.StartTime = &now
		}
		st.Conditions = nil
		for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			st.Conditions = append(st.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
		}
		st.ContainerStatuses = nil
		for _, c := range cur.Spec.Containers {
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, Ready: true, Started: new(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			})
		}
		_, err = n.opts.Client.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

func statusDone(pod *corev1.Pod, rp *runningPod) bool {
	if pod.Status.Phase != corev1.PodRunning || len(rp.ips) == 0 || pod.Status.PodIP != rp.ips[0].String() {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitRunning waits until the pod namespace/name is Running and Ready with
// an IP, and returns it.
func (n *Nodes) WaitRunning(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var pod *corev1.Pod
	err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		p, err := n.opts.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		n.mu.Lock()
		rp := n.pods[namespace+"/"+name]
		n.mu.Unlock()
		if rp == nil || rp.uid != string(p.UID) || !statusDone(p, rp) {
			return false, nil
		}
		pod = p
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for pod %s/%s to run: %w (pod log %s)", namespace, name, err, n.LogPath("pod-"+namespace+"-"+name))
	}
	return pod, nil
}
