package realnode_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/ambit-mesh/ambit/deploy/images"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/realnode"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

func TestMain(m *testing.M) {
	cluster.Main(m, cluster.Options{
		Scheduler:     true,
		NodeLifecycle: true,
	})
}

var echoImage = images.Tag("", "ambit-echo", "realnode")

// echoImageTar builds ambit-echo into an image with deploy/images.
func echoImageTar(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	spec := images.Spec{
		Name:     "ambit-echo",
		Binaries: []images.Binary{{Package: images.Module + "/e2e/echo/cmd/ambit-echo", Path: "/usr/local/bin/ambit-echo"}},
		User:     "65534:65534",
	}
	tarPath := filepath.Join(t.TempDir(), "ambit-echo.tar")
	if err := realnode.BuildImage(ctx, spec, echoImage, tarPath); err != nil {
		t.Fatal(err)
	}
	return tarPath
}

// TestRealNode starts containerd and kubelet as a node of the shared
// cluster, runs a pod from a locally imported image on the bridge CNI, and
// checks its address, its server, logs and port-forward through the API
// server, and its deletion.
func TestRealNode(t *testing.T) {
	netnstest.RequireRoot(t)
	c := cluster.Shared(t)
	img := echoImageTar(t)
	n := realnode.StartT(t, realnode.Options{Cluster: c, Images: []string{img}})
	t.Logf("timing: node %s Ready after %.1fs", n.Name, n.ReadyAfter.Seconds())

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := "realnode-e2e"
	if _, err := c.CreateNamespace(ctx, ns, nil); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns, Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:            "echo",
				Image:           echoImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"server", "-name", "echo-realnode"},
				Ports:           []corev1.ContainerPort{{ContainerPort: 8080}},
			}},
			TerminationGracePeriodSeconds: new(int64(2)),
			AutomountServiceAccountToken:  new(false),
		},
	}
	begin := time.Now()
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var running *corev1.Pod
	poll(ctx, t, "pod echo Running with an IP", func() error {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			var taints []corev1.Taint
			if node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err == nil {
				taints = node.Spec.Taints
			}
			return fmt.Errorf("phase %s, ip %q, node %q (taints %v), conditions %v, containers %v",
				p.Status.Phase, p.Status.PodIP, p.Spec.NodeName, taints, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		running = p
		return nil
	})
	t.Logf("timing: pod Running after %.1fs (scheduled to %s, ip %s)", time.Since(begin).Seconds(), running.Spec.NodeName, running.Status.PodIP)
	if running.Spec.NodeName != n.Name {
		t.Errorf("pod scheduled to %q, want %q", running.Spec.NodeName, n.Name)
	}
	if !n.PodCIDR.Contains(mustAddr(t, running.Status.PodIP)) {
		t.Errorf("pod IP %s is outside the node's pod CIDR %s", running.Status.PodIP, n.PodCIDR)
	}

	if _, err := os.Stat(filepath.Join(n.IPAMDir(), realnode.NetworkName, running.Status.PodIP)); err != nil {
		t.Errorf("host-local has no record of the pod's address: %v", err)
	}

	// The server answers from the node's network namespace.
	nodeNS, err := netns.OpenName(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer nodeNS.Close()
	var fromNode string
	poll(ctx, t, "echo answering from the node", func() error {
		var err error
		fromNode, err = httpGetIn(ctx, nodeNS, "http://"+net.JoinHostPort(running.Status.PodIP, "8080")+"/from-node")
		return err
	})
	if !strings.Contains(fromNode, "pod=echo-realnode") || !strings.Contains(fromNode, "path=/from-node") {
		t.Errorf("answer from the node = %q, want pod=echo-realnode and path=/from-node", fromNode)
	}
	t.Logf("from the node: %s", strings.TrimSpace(fromNode))

	// Logs through the API server (API server -> kubelet:10250 -> CRI log file).
	var logs string
	poll(ctx, t, "kubectl logs through the API server", func() error {
		b, err := c.Client.CoreV1().Pods(ns).GetLogs("echo", &corev1.PodLogOptions{}).Do(ctx).Raw()
		if err != nil {
			return err
		}
		logs = string(b)
		if !strings.Contains(logs, "echo serving") {
			return fmt.Errorf("logs %q lack %q", logs, "echo serving")
		}
		return nil
	})

	// Port-forward through the API server.
	answer := portForwardGet(ctx, t, c, ns, "echo", 8080, "/via-port-forward")
	if !strings.Contains(answer, "pod=echo-realnode") || !strings.Contains(answer, "path=/via-port-forward") {
		t.Errorf("answer through port-forward = %q", answer)
	}
	t.Logf("through port-forward: %s", strings.TrimSpace(answer))

	// A ClusterIP Service, routed by the node's kube-proxy.
	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var viaService string
	poll(ctx, t, "echo answering at its ClusterIP from the node", func() error {
		var err error
		viaService, err = httpGetIn(ctx, nodeNS, "http://"+net.JoinHostPort(svc.Spec.ClusterIP, "80")+"/via-service")
		return err
	})
	if !strings.Contains(viaService, "pod=echo-realnode") {
		t.Errorf("answer through the Service = %q", viaService)
	}
	t.Logf("through Service %s: %s", svc.Spec.ClusterIP, strings.TrimSpace(viaService))

	// The kubernetes Service reaches the API server (what in-cluster
	// clients such as istiod use).
	kubeSvc, err := c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	tlsTr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netns.DialIn(ctx, nodeNS, network, addr)
		},
	}
	defer tlsTr.CloseIdleConnections()
	ready, err := httpGet(ctx, &http.Client{Transport: tlsTr, Timeout: 10 * time.Second}, "https://"+net.JoinHostPort(kubeSvc.Spec.ClusterIP, "443")+"/readyz")
	if err != nil || strings.TrimSpace(ready) != "ok" {
		t.Errorf("GET /readyz through the kubernetes Service from the node: %q, %v", ready, err)
	}

	// Deletion: the pod goes away, its sandbox stops, its netns and its
	// address are released (kubelet's GC removes the stopped sandbox within
	// about a minute; not waited for).
	begin = time.Now()
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(ctx, t, "pod echo deleted", func() error {
		_, err := c.Client.CoreV1().Pods(ns).Get(ctx, "echo", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	poll(ctx, t, "the pod's sandbox stopped, its netns and address released", func() error {
		out, err := n.Crictl(ctx, "pods", "--state", "ready", "-q")
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			return fmt.Errorf("ready sandboxes left: %s", s)
		}
		netnsDir := filepath.Join(n.RunDir, "containerd", "io.containerd.grpc.v1.cri", "netns")
		if left, _ := os.ReadDir(netnsDir); len(left) > 0 {
			return fmt.Errorf("pod network namespaces left in %s: %d", netnsDir, len(left))
		}
		if _, err := os.Stat(filepath.Join(n.IPAMDir(), realnode.NetworkName, running.Status.PodIP)); err == nil {
			return fmt.Errorf("host-local still holds %s", running.Status.PodIP)
		}
		return nil
	})
	t.Logf("timing: pod deleted and cleaned up after %.1fs", time.Since(begin).Seconds())
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("pod IP %q: %v", s, err)
	}
	return a
}

// poll calls check every 200ms until it succeeds or ctx ends (then fails t).
func poll(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	var last error
	for {
		if last = check(); last == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// httpGetIn makes a GET from inside the network namespace ns.
func httpGetIn(ctx context.Context, ns *os.File, rawURL string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netns.DialIn(ctx, ns, network, addr)
	}}
	defer tr.CloseIdleConnections()
	return httpGet(ctx, &http.Client{Transport: tr, Timeout: 5 * time.Second}, rawURL)
}

func httpGet(ctx context.Context, hc *http.Client, rawURL string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", rawURL, resp.Status, b)
	}
	return string(b), nil
}

// portForwardGet forwards a local port to pod:port through the API server
// (SPDY, as kubectl port-forward) and makes one GET through it.
func portForwardGet(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, pod string, port int, path string) string {
	t.Helper()
	rt, upgrader, err := spdy.RoundTripperFor(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(c.Server + "/api/v1/namespaces/" + ns + "/pods/" + pod + "/portforward")
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	defer close(stop)
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("port-forward to %s/%s:%d: %v", ns, pod, port, err)
	case <-ctx.Done():
		t.Fatalf("port-forward to %s/%s:%d not ready: %v", ns, pod, port, ctx.Err())
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("port-forward ports: %v %v", ports, err)
	}
	var answer string
	poll(ctx, t, "an answer through port-forward", func() error {
		var err error
		answer, err = httpGet(ctx, &http.Client{Timeout: 10 * time.Second}, fmt.Sprintf("http://127.0.0.1:%d%s", ports[0].Local, path))
		return err
	})
	return answer
}
