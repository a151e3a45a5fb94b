package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// PodHTTP reads HTTP paths from a port of a pod through the API server's
// port-forward (which needs the kubelet of the pod's node). Each Get opens
// and closes its own forward.
type PodHTTP struct {
	Client    *Client
	Namespace string
	Pod       string
	Port      int
}

// Get GETs path from the pod's port and returns the body of a 200 answer.
func (p PodHTTP) Get(ctx context.Context, path string) ([]byte, error) {
	local, stop, err := p.forward(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s%s", local, path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s from pod %s/%s port %d: %w", path, p.Namespace, p.Pod, p.Port, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s from pod %s/%s port %d: status %d: %s", path, p.Namespace, p.Pod, p.Port, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// forward opens a port-forward on a free loopback port and returns its
// address and the function that closes it.
func (p PodHTTP) forward(ctx context.Context) (string, func(), error) {
	rt, up, err := spdy.RoundTripperFor(p.Client.Config)
	if err != nil {
		return "", nil, err
	}
	u := p.Client.Clientset.CoreV1().RESTClient().Post().Resource("pods").Namespace(p.Namespace).Name(p.Pod).SubResource("portforward").URL()
	dialer := spdy.NewDialer(up, &http.Client{Transport: rt}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	var errOut strings.Builder
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", p.Port)}, stop, ready, io.Discard, &errOut)
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		if err == nil {
			err = errors.New(strings.TrimSpace(errOut.String()))
		}
		return "", nil, APIError(fmt.Errorf("port-forward to pod %s/%s: %w", p.Namespace, p.Pod, err), "create", "pods/portforward", p.Namespace)
	case <-ctx.Done():
		close(stop)
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stop)
		return "", nil, fmt.Errorf("port-forward to pod %s/%s: no local port: %v", p.Namespace, p.Pod, err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local), func() { close(stop); <-done }, nil
}

// FindPod returns the running pod with label app=app in namespace ns on
// node (any node when node is ""; then the first by node name).
func FindPod(ctx context.Context, cs *Client, ns, app, node string) (*corev1.Pod, error) {
	list, err := cs.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelApp + "=" + app})
	if err != nil {
		return nil, APIError(err, "list", "pods", ns)
	}
	var running []corev1.Pod
	var nodes []string
	for _, p := range list.Items {
		if p.Status.Phase != corev1.PodRunning {
			continue
		}
		running = append(running, p)
		nodes = append(nodes, p.Spec.NodeName)
	}
	sort.Slice(running, func(i, j int) bool { return running[i].Spec.NodeName < running[j].Spec.NodeName })
	sort.Strings(nodes)
	for i := range running {
		if node == "" || running[i].Spec.NodeName == node {
			return &running[i], nil
		}
	}
	if len(running) == 0 {
		return nil, fmt.Errorf("no running %s pod in namespace %s (label %s=%s): is Ambit installed there (ambitctl install, or --istio-namespace)?", app, ns, LabelApp, app)
	}
	return nil, fmt.Errorf("no running %s pod on node %q; nodes with one: %s", app, node, strings.Join(nodes, ", "))
}
