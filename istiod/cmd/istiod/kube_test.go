package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	apisecurityv1 "istio.io/api/security/v1"
	pb "istio.io/api/security/v1alpha1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"istio.io/istio/pkg/workloadapi"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

// syncBuffer is an io.Writer safe for a reader goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBinaryKubernetes runs the istiod binary against a real API server
// with no token file: it reads pods, services and policies through
// informers, pushes them over workload xDS to a ztunnel xDS client (which
// authenticates with a pod-bound ztunnel token, verified by TokenReview),
// follows changes, issues certificates only under node authorization, and
// exits 0 on SIGTERM.
func TestBinaryKubernetes(t *testing.T) {
	c := cluster.StartT(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	applyIstioCRDs(ctx, t, c)
	if _, err := c.CreateNamespace(ctx, "istio-system", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateNamespace(ctx, "shop", map[string]string{"istio.io/dataplane-mode": "ambient"}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range [][2]string{{"istio-system", "ztunnel"}, {"shop", "cart"}, {"shop", "web"}} {
		if _, err := c.CreateServiceAccount(ctx, sa[0], sa[1]); err != nil {
			t.Fatal(err)
		}
	}
	ztA := kubePod(ctx, t, c, "istio-system", "ztunnel-a", "ztunnel", "node-a", "10.244.1.2", nil)
	kubePod(ctx, t, c, "shop", "cart-1", "cart", "node-a", "10.244.1.5", map[string]string{"app": "cart"})
	kubePod(ctx, t, c, "shop", "web-1", "web", "node-b", "10.244.2.5", map[string]string{"app": "web"})
	if _, err := c.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	proc := startIstiod(ctx, t, "--kubeconfig", c.Kubeconfig, "--state-dir", filepath.Join(t.TempDir(), "state"), "--log-level", "debug")
	grpcAddr, rootOut, logs := proc.grpcAddr, proc.rootOut, proc.logs

	// A ztunnel xDS client with node-a's pod-bound token.
	ztToken := podToken(ctx, t, c, ztA)
	store := state.New(state.Options{TrustDomain: "cluster.local", Logger: slog.New(slog.DiscardHandler)})
	xc, err := xds.New(xds.Options{
		Address: grpcAddr, ServerName: "istiod.istio-system.svc", RootCAFile: rootOut,
		Token: func(context.Context) (string, error) { return ztToken, nil },
		Store: store, NodeID: "ztunnel~10.244.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local",
		NodeMetadata: map[string]string{"NODE_NAME": "node-a"}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	xctx, xstop := context.WithCancel(ctx)
	xdone := make(chan error, 1)
	go func() { xdone <- xc.Run(xctx) }()
	defer func() { xstop(); <-xdone; xc.Close() }()
	select {
	case <-xc.Synced():
	case <-ctx.Done():
		t.Fatalf("xDS never synced: %+v", xc.Stats())
	}
	cartUID := ambient.PodUID(ambient.DefaultClusterID, "shop", "cart-1")
	waitStore(ctx, t, store, "workloads and service", func(v *state.View) error {
		w := v.WorkloadByUID(cartUID)
		if w == nil || w.Node != "node-a" || w.ServiceAccount != "cart" {
			return fmt.Errorf("cart-1 workload %v", w)
		}
		if w.TunnelProtocol != workloadapi.TunnelProtocol_NONE {
			return errors.New("cart-1 is HBONE without the redirection annotation (--tunnel annotation)")
		}
		if v.WorkloadByUID(ambient.PodUID(ambient.DefaultClusterID, "shop", "web-1")) == nil {
			return errors.New("web-1 missing")
		}
		if s := v.ServiceByName("shop", "cart.shop.svc.cluster.local"); s == nil || len(s.Addresses) == 0 {
			return fmt.Errorf("service %v", s)
		}
		return nil
	})

	// Changes through the API reach the client: annotation, policy, deletion.
	p, err := c.Client.CoreV1().Pods("shop").Get(ctx, "cart-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Annotations = map[string]string{ambient.AnnotationRedirection: "enabled"}
	if _, err := c.Client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ic, err := istioclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ic.SecurityV1().AuthorizationPolicies("shop").Create(ctx, &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "deny-web"},
		Spec: apisecurityv1.AuthorizationPolicy{Action: apisecurityv1.AuthorizationPolicy_DENY,
			Rules: []*apisecurityv1.Rule{{From: []*apisecurityv1.Rule_From{{Source: &apisecurityv1.Source{Principals: []string{"cluster.local/ns/shop/sa/web"}}}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStore(ctx, t, store, "HBONE and policy", func(v *state.View) error {
		if w := v.WorkloadByUID(cartUID); w == nil || w.TunnelProtocol != workloadapi.TunnelProtocol_HBONE {
			return fmt.Errorf("cart-1 not HBONE: %v", w)
		}
		if v.Policy("shop/deny-web") == nil {
			return errors.New("policy shop/deny-web missing")
		}
		return nil
	})
	if err := c.Client.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	if err := ic.SecurityV1().AuthorizationPolicies("shop").Delete(ctx, "deny-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStore(ctx, t, store, "deletions", func(v *state.View) error {
		if v.WorkloadByUID(ambient.PodUID(ambient.DefaultClusterID, "shop", "web-1")) != nil || v.Policy("shop/deny-web") != nil {
			return errors.New("web-1 or shop/deny-web still there")
		}
		return nil
	})

	// The CA: node authorization with the same token.
	rootPEM, err := os.ReadFile(rootOut)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "istiod.istio-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ca := pb.NewIstioCertificateServiceClient(conn)
	request := func(token, ns, sa string) error {
		rctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		_, err := ca.CreateCertificate(rctx, &pb.IstioCertificateRequest{Csr: kubeCSR(t, ns, sa)})
		return err
	}
	if err := request(ztToken, "shop", "cart"); err != nil {
		t.Errorf("ztunnel on node-a for cart-1 on node-a: %v", err)
	}
	kubePod(ctx, t, c, "shop", "web-2", "web", "node-b", "10.244.2.6", nil)
	if err := request(ztToken, "shop", "web"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ztunnel on node-a for web only on node-b: %v, want PermissionDenied", err)
	}
	if err := request("not-a-token-0123456789", "shop", "cart"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("bad token: %v, want Unauthenticated", err)
	}
	if !strings.Contains(logs.String(), "no running pod with service account shop/web on node node-a") {
		t.Errorf("refusal not logged with its reason")
	}

	proc.stop(t)
	if !strings.Contains(logs.String(), "msg=stopped") {
		t.Error("no stopped line")
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

// kubePod creates a Running, Ready pod on node with ip (no kubelet runs:
// the test writes the status).
func kubePod(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name, sa, node, ip string, labels map[string]string) *corev1.Pod {
	t.Helper()
	if err := c.WaitForServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	p, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if p, err = c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// podToken is a TokenRequest token for audience istio-ca bound to pod, as
// kubelet projects ztunnel's.
func podToken(ctx context.Context, t *testing.T, c *cluster.Cluster, pod *corev1.Pod) string {
	t.Helper()
	tr, err := c.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:      []string{"istio-ca"},
			BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func waitStore(ctx context.Context, t *testing.T, s *state.Store, what string, cond func(*state.View) error) {
	t.Helper()
	if err := cluster.Eventually(ctx, what, func(context.Context) error { return cond(s.Load()) }); err != nil {
		t.Fatal(err)
	}
}

func kubeCSR(t *testing.T, ns, sa string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u := &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/" + ns + "/sa/" + sa}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
