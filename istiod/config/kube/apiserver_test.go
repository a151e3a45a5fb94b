package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	apisecurityv1 "istio.io/api/security/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/istiod/config"
)

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAgainstAPIServer runs the source against a real kube-apiserver: it
// starts before Istio's CRDs exist (warns, serves everything else), sees
// the policies once the CRDs are applied, and follows creations, updates and
// deletions; a second source started later (an istiod restart) sees the
// same state.
func TestAgainstAPIServer(t *testing.T) {
	c := cluster.StartT(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if _, err := c.CreateNamespace(ctx, "shop", map[string]string{"istio.io/dataplane-mode": "ambient"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateNamespace(ctx, "istio-system", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateServiceAccount(ctx, "shop", "cart"); err != nil {
		t.Fatal(err)
	}
	createPod(ctx, t, c, "shop", "cart-1", "cart", "node-a", "10.244.1.5", map[string]string{"app": "cart"})

	logs := &logBuffer{}
	src, err := NewForConfig(c.Config, Options{
		CRDPollInterval: 200 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-src.Synced():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-ctx.Done():
		t.Fatal("no first snapshot")
	}
	snap := src.Snapshot()
	if p := snap.Pods["shop/cart-1"]; p == nil || p.Status.PodIP != "10.244.1.5" || p.Spec.NodeName != "node-a" {
		t.Fatalf("pod in first snapshot: %v", p)
	}
	if snap.Namespaces["shop"].Labels["istio.io/dataplane-mode"] != "ambient" || snap.ServiceAccounts["shop/cart"] == nil {
		t.Fatalf("namespace or service account missing: %v", config.SortedKeys(snap.Namespaces))
	}
	if !strings.Contains(logs.String(), "Istio CRDs not installed") {
		t.Errorf("no warning about the missing CRDs:\n%s", logs.String())
	}

	// The CRDs appear; a policy made right after is seen.
	applyIstioCRDs(ctx, t, c)
	ist := istioClient(t, c)
	policy := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "deny-web"},
		Spec: apisecurityv1.AuthorizationPolicy{
			Action: apisecurityv1.AuthorizationPolicy_DENY,
			Rules:  []*apisecurityv1.Rule{{From: []*apisecurityv1.Rule_From{{Source: &apisecurityv1.Source{Namespaces: []string{"web"}}}}}},
		},
	}
	if _, err := ist.SecurityV1().AuthorizationPolicies("shop").Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ist.SecurityV1().PeerAuthentications("istio-system").Create(ctx, &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "default"},
		Spec:       apisecurityv1.PeerAuthentication{Mtls: &apisecurityv1.PeerAuthentication_MutualTLS{Mode: apisecurityv1.PeerAuthentication_MutualTLS_STRICT}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, src, "policies after the CRDs appeared", func(s *config.Snapshot) error {
		ap := s.AuthorizationPolicies["shop/deny-web"]
		if ap == nil || ap.Spec.Action != apisecurityv1.AuthorizationPolicy_DENY || ap.Spec.Rules[0].From[0].Source.Namespaces[0] != "web" {
			return fmt.Errorf("policy %v", ap)
		}
		if pa := s.PeerAuthentications["istio-system/default"]; pa == nil || pa.Spec.Mtls.Mode != apisecurityv1.PeerAuthentication_MutualTLS_STRICT {
			return fmt.Errorf("peer authentication %v", pa)
		}
		return nil
	})

	// Services, endpoint slices, updates, deletions.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	if _, err := c.Client.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eps := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "cart-x", Labels: map[string]string{discoveryv1.LabelServiceName: "cart"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](80)}},
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices("shop").Create(ctx, eps, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := c.Client.CoreV1().Pods("shop").Get(ctx, "cart-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	if _, err := c.Client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, src, "service, slice and pod annotation", func(s *config.Snapshot) error {
		switch {
		case s.Services["shop/cart"] == nil || s.Services["shop/cart"].Spec.ClusterIP == "":
			return errors.New("service (with its cluster IP) missing")
		case s.EndpointSlices["shop/cart-x"] == nil:
			return errors.New("endpoint slice missing")
		case s.Pods["shop/cart-1"].Annotations["ambient.istio.io/redirection"] != "enabled":
			return errors.New("pod annotation not seen")
		case s.Pods["shop/cart-1"].ManagedFields != nil:
			return errors.New("managedFields kept")
		}
		return nil
	})
	if err := ist.SecurityV1().AuthorizationPolicies("shop").Delete(ctx, "deny-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.CoreV1().Pods("shop").Delete(ctx, "cart-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.CoreV1().Services("shop").Delete(ctx, "cart", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, src, "deletions", func(s *config.Snapshot) error {
		if len(s.AuthorizationPolicies) != 0 || s.Pods["shop/cart-1"] != nil || s.Services["shop/cart"] != nil {
			return fmt.Errorf("left: policies %v pods %v services %v", config.SortedKeys(s.AuthorizationPolicies),
				config.SortedKeys(s.Pods), config.SortedKeys(s.Services))
		}
		return nil
	})

	// A new source (istiod restarted) lists the same state at once.
	createPod(ctx, t, c, "shop", "cart-2", "cart", "node-b", "10.244.2.7", nil)
	waitFor(ctx, t, src, "cart-2", func(s *config.Snapshot) error {
		if s.Pods["shop/cart-2"] == nil {
			return errors.New("cart-2 missing")
		}
		return nil
	})
	src2, err := NewForConfig(c.Config, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, stop2 := context.WithCancel(ctx)
	done2 := make(chan error, 1)
	go func() { done2 <- src2.Run(ctx2) }()
	defer func() { stop2(); <-done2 }()
	select {
	case <-src2.Synced():
	case <-ctx.Done():
		t.Fatal("restarted source: no first snapshot")
	}
	a, b := src.Snapshot(), src2.Snapshot()
	if fmt.Sprint(config.SortedKeys(a.Pods), config.SortedKeys(a.Services), config.SortedKeys(a.Namespaces)) !=
		fmt.Sprint(config.SortedKeys(b.Pods), config.SortedKeys(b.Services), config.SortedKeys(b.Namespaces)) {
		t.Errorf("restarted source differs:\n%v %v\n%v %v", config.SortedKeys(a.Pods), config.SortedKeys(a.Namespaces),
			config.SortedKeys(b.Pods), config.SortedKeys(b.Namespaces))
	}
	pods, err := src2.PodsOnNode("node-b")
	if err != nil || len(pods) != 1 || pods[0].Name != "cart-2" {
		t.Errorf("PodsOnNode(node-b) = %v, %v", pods, err)
	}
}

// applyIstioCRDs applies Istio's CRDs (crd-all.gen.yaml of the istio.io/istio
// module in go.mod); Gateway API's are not needed here.
func applyIstioCRDs(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	path, err := cluster.IstioCRDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.ApplyCRDs(ctx, c.Config, path); err != nil {
		t.Fatal(err)
	}
}

func istioClient(t *testing.T, c *cluster.Cluster) istioclient.Interface {
	t.Helper()
	ic, err := istioclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return ic
}

// createPod creates a pod bound to node with an IP and Ready status (no
// kubelet runs: the test writes the status).
func createPod(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name, sa, node, ip string, labels map[string]string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}},
		},
	}
	if err := c.WaitForServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	p, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	p, err = c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitFor(ctx context.Context, t *testing.T, src *Source, what string, cond func(*config.Snapshot) error) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	for {
		if err = cond(src.Snapshot()); err == nil {
			return
		}
		select {
		case <-src.Changes():
		case <-time.After(100 * time.Millisecond):
		case <-wctx.Done():
			t.Fatalf("%s: %v", what, err)
		}
	}
}
