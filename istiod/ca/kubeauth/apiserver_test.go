package kubeauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/ca/catest"
	"github.com/ambit-mesh/ambit/istiod/ca/kubeauth"
	"github.com/ambit-mesh/ambit/istiod/config/kube"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// TestAgainstAPIServer verifies real service-account tokens with real
// TokenReviews, and node authorization from a real pod cache, through the
// CA's gRPC service: the ztunnel of node-a gets the identity of a pod on
// node-a and not that of a pod only on node-b (a forged identity).
func TestAgainstAPIServer(t *testing.T) {
	c := cluster.StartT(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, ns := range []string{"istio-system", "shop"} {
		if _, err := c.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range []struct{ ns, name string }{{"istio-system", "ztunnel"}, {"shop", "web"}, {"shop", "cart"}} {
		if _, err := c.CreateServiceAccount(ctx, sa.ns, sa.name); err != nil {
			t.Fatal(err)
		}
	}
	ztA := createPod(ctx, t, c, "istio-system", "ztunnel-a", "ztunnel", "node-a")
	createPod(ctx, t, c, "shop", "web-1", "web", "node-a")
	cart := createPod(ctx, t, c, "shop", "cart-1", "cart", "node-b")

	src, err := kube.NewForConfig(c.Config, kube.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx) }()
	defer func() { stop(); <-done }()
	select {
	case <-src.Synced():
	case <-ctx.Done():
		t.Fatal("pod cache did not sync")
	}

	auth, err := kubeauth.New(kubeauth.Options{Reviews: c.Client.AuthenticationV1().TokenReviews(), Pods: src, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ztToken := boundToken(ctx, t, c, ztA, []string{kubeauth.DefaultAudience})
	cartToken := boundToken(ctx, t, c, cart, []string{kubeauth.DefaultAudience})
	apiToken, err := c.CreateToken(ctx, "shop", "web", nil, 0) // the API server's audience, bound to nothing
	if err != nil {
		t.Fatal(err)
	}
	otherAud, err := c.CreateToken(ctx, "shop", "web", []string{"vault"}, 0)
	if err != nil {
		t.Fatal(err)
	}

	// Decisions, straight from the authenticator.
	caller, err := auth.Authenticate(withToken(ztToken))
	if err != nil {
		t.Fatal(err)
	}
	if caller.Name() != "ztunnel istio-system/ztunnel on node node-a" {
		t.Errorf("caller %q: the node must come from the pod-bound token", caller.Name())
	}
	if err := caller.Authorize(ctx, id("shop", "web")); err != nil {
		t.Errorf("ztunnel on node-a, pod web-1 on node-a: %v", err)
	}
	if err := caller.Authorize(ctx, id("shop", "cart")); !errors.Is(err, ca.ErrPermissionDenied) {
		t.Errorf("ztunnel on node-a, cart only on node-b: %v", err)
	}
	if _, err := auth.Authenticate(withToken(ztToken)); err != nil {
		t.Fatal(err)
	}
	if s := auth.Stats(); s.Reviews != 1 || s.CacheHits != 1 {
		t.Errorf("stats %+v: the second request must come from the cache", s)
	}
	if caller, err := auth.Authenticate(withToken(apiToken)); err != nil || caller.Authorize(ctx, id("shop", "web")) != nil {
		t.Errorf("token for the API server's audience, own identity: %v", err)
	}
	if _, err := auth.Authenticate(withToken(otherAud)); !errors.Is(err, ca.ErrUnauthenticated) {
		t.Errorf("token for audience vault: %v", err)
	}
	forged := ztToken[:strings.LastIndex(ztToken, ".")] + ".Zm9yZ2Vk"
	if _, err := auth.Authenticate(withToken(forged)); !errors.Is(err, ca.ErrUnauthenticated) {
		t.Errorf("token with a forged signature: %v", err)
	}

	// Through the CA's gRPC service.
	srv := catest.Start(t, catest.Options{Authenticator: auth})
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(srv.ClientTLS())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pb.NewIstioCertificateServiceClient(conn)
	cases := []struct {
		name  string
		token string
		id    spiffe.ID
		want  codes.Code
	}{
		{"ztunnel asks for a pod on its node", ztToken, id("shop", "web"), codes.OK},
		{"ztunnel asks for a pod only on another node (forged identity)", ztToken, id("shop", "cart"), codes.PermissionDenied},
		{"workload asks for its own identity", cartToken, id("shop", "cart"), codes.OK},
		{"workload asks for another identity", cartToken, id("shop", "web"), codes.PermissionDenied},
		{"forged token", forged, id("shop", "web"), codes.Unauthenticated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.token)
			resp, err := client.CreateCertificate(rctx, &pb.IstioCertificateRequest{Csr: csr(t, tc.id)})
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			b, _ := pem.Decode([]byte(resp.CertChain[0]))
			leaf, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := spiffe.FromCertificate(leaf); got != tc.id {
				t.Errorf("issued %v, want %v", got, tc.id)
			}
		})
	}
}

func id(ns, sa string) spiffe.ID {
	return spiffe.ID{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
}

func withToken(tok string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
}

// createPod creates a pod scheduled on node (no kubelet: it stays Pending,
// which node authorization accepts).
func createPod(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	if err := c.WaitForServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	p, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// boundToken is a TokenRequest token of the pod's service account bound to
// the pod, as kubelet projects it.
func boundToken(ctx context.Context, t *testing.T, c *cluster.Cluster, pod *corev1.Pod, audiences []string) string {
	t.Helper()
	tr, err := c.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:      audiences,
			BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func csr(t *testing.T, id spiffe.ID) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
