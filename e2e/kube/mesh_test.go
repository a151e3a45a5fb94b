package kube

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/google/nftables"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/testnode"
	"github.com/ambit-mesh/ambit/e2e/meshcheck"
	"github.com/ambit-mesh/ambit/pkg/enrollment"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/identity"
)

var (
	authzGVR = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	peerGVR  = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
)

// TestKubeMesh runs Ambit on the test cluster as on real nodes: istiod
// reads the API server, each node's cni-agent its pods, ztunnel gets
// workloads over xDS and certificates from istiod's CA with a pod-bound
// service-account token.
func TestKubeMesh(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	ambient := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeAmbient}
	m.namespace(ctx, "kmesh", ambient)
	m.namespace(ctx, "kplain", nil)
	m.namespace(ctx, "kcapture", nil)
	echoServer := []string{"ambit-echo", "server", "-grpc", "", "-raw", ""}
	server := m.pod(ctx, "kmesh", "server", nodeB, echoServer)
	client := m.pod(ctx, "kmesh", "client", nodeA, nil)
	m.pod(ctx, "kmesh", "only-b", nodeB, nil)
	outsider := m.pod(ctx, "kplain", "outsider", nodeA, nil)
	late := m.pod(ctx, "kcapture", "late", nodeA, echoServer)
	serverURL := fmt.Sprintf("http://%s/", net.JoinHostPort(server.Status.PodIP, "8080"))

	t.Run("EnrolledPodsCapturedAndAnnotated", func(t *testing.T) {
		for _, p := range []*corev1.Pod{server, client} {
			m.waitCaptured(t, p, true)
		}
		m.waitCaptured(t, outsider, false)
	})

	t.Run("LabelCapturesUnlabelReleases", func(t *testing.T) {
		m.waitCaptured(t, late, false)
		m.labelNamespace(t, "kcapture", ambient)
		m.waitCaptured(t, late, true)
		m.labelNamespace(t, "kcapture", nil)
		m.waitCaptured(t, late, false)
	})

	t.Run("ForgedIdentityRefused", func(t *testing.T) {
		only := mustID(t, "kmesh", "only-b")
		// node-a's ztunnel asks for an identity that runs only on node-b.
		_, err := m.fetchCert(t, nodeA, only)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("node-a asking for %s: %v, want PermissionDenied", only, err)
		}
		// node-b's may; node-a's may for a pod on node-a.
		if _, err := m.fetchCert(t, nodeB, only); err != nil {
			t.Errorf("node-b asking for %s: %v", only, err)
		}
		if _, err := m.fetchCert(t, nodeA, mustID(t, "kmesh", "client")); err != nil {
			t.Errorf("node-a asking for its client's identity: %v", err)
		}
	})

	t.Run("HBONEAcrossNodes", func(t *testing.T) {
		m.mustGet(t, client, serverURL, convergeWithin)
		text, err := m.nodeGet(ctx, nodeB, "http://127.0.0.1:15020/stats/prometheus")
		if err != nil {
			t.Fatal(err)
		}
		if !hasMetric(text, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "source_principal": "spiffe://cluster.local/ns/kmesh/sa/client"}) {
			t.Errorf("node-b's ztunnel counted no inbound HBONE connection from the client's identity:\n%s", text)
		}
	})

	t.Run("DenyPolicyWithinASecond", func(t *testing.T) {
		m.mustGet(t, client, serverURL, convergeWithin)
		policy := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "deny-client", "namespace": "kmesh"},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "server"}},
				"action":   "DENY",
				"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
					"principals": []any{"cluster.local/ns/kmesh/sa/client"},
				}}}}},
			},
		}}
		start := time.Now()
		m.create(t, authzGVR, policy)
		r := meshcheck.ExpectDenied(t, meshcheck.Denial{
			What: "GET " + serverURL + " from kmesh/client", Call: m.caller(client, serverURL),
			Denials: m.denials(nodeB, map[string]string{
				"reporter": "destination", "source_principal": mustID(t, "kmesh", "client").String(),
				"destination_principal": mustID(t, "kmesh", "server").String(),
			}),
			Start: start, Within: time.Second,
		})
		t.Logf("reset by node-b's ztunnel %v after the policy was created; %d calls over %v all reset and counted DENY",
			r.First.Round(time.Millisecond), r.Refused, meshcheck.LastingOver)
		start = time.Now()
		m.delete(t, authzGVR, "kmesh", "deny-client")
		took := m.pollAllowed(t, client, serverURL, start, time.Second)
		t.Logf("allowed again %v after the policy was deleted", took)
	})

	t.Run("StrictRefusesPlaintext", func(t *testing.T) {
		m.mustGet(t, outsider, serverURL, convergeWithin)
		pa := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
			"metadata": map[string]any{"name": "strict", "namespace": "kmesh"},
			"spec":     map[string]any{"mtls": map[string]any{"mode": "STRICT"}},
		}}
		start := time.Now()
		m.create(t, peerGVR, pa)
		r := meshcheck.ExpectDenied(t, meshcheck.Denial{
			What: "GET " + serverURL + " from kplain/outsider", Call: m.caller(outsider, serverURL),
			Denials: m.denials(nodeB, map[string]string{
				"reporter": "destination", "connection_security_policy": "none", "source_workload": "outsider",
				"destination_principal": mustID(t, "kmesh", "server").String(),
			}),
			Start: start, Within: convergeWithin,
		})
		t.Logf("plaintext reset by node-b's ztunnel %v after STRICT was created, and stays so", r.First.Round(time.Millisecond))
		m.mustGet(t, client, serverURL, convergeWithin) // mTLS still allowed
		start = time.Now()
		m.delete(t, peerGVR, "kmesh", "strict")
		m.pollAllowed(t, outsider, serverURL, start, convergeWithin)
	})
}

// namespace creates a namespace with labels; Cleanup force-deletes its pods
// and deletes it.
func (m *mesh) namespace(ctx context.Context, name string, labels map[string]string) {
	m.t.Helper()
	if _, err := m.c.CreateNamespace(ctx, name, labels); err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() {
		ctx := context.Background()
		pods := m.c.Client.CoreV1().Pods(name)
		_ = pods.DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{})
		_ = m.c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
}

func (m *mesh) labelNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	ns, err := m.c.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = map[string]string{corev1.LabelMetadataName: name}
	for k, v := range labels {
		ns.Labels[k] = v
	}
	if _, err := m.c.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// pod creates a pod (label app=<name>, service account <name>) bound to
// node, running command, and waits until it runs.
func (m *mesh) pod(ctx context.Context, namespace, name, node string, command []string) *corev1.Pod {
	m.t.Helper()
	m.createPod(ctx, namespace, name, node, command)
	wctx, cancel := context.WithTimeout(ctx, convergeWithin)
	defer cancel()
	got, err := m.nodes.WaitRunning(wctx, namespace, name)
	if err != nil {
		m.t.Fatal(err)
	}
	return got
}

// createPod creates the pod of m.pod, changed by mods, without waiting
// for it.
func (m *mesh) createPod(ctx context.Context, namespace, name, node string, command []string, mods ...func(*corev1.Pod)) {
	m.t.Helper()
	if _, err := m.c.CreateServiceAccount(ctx, namespace, name); err != nil && !apierrors.IsAlreadyExists(err) {
		m.t.Fatal(err)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: name, AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "app", Image: "ambit/echo", Command: command}},
		},
	}
	for _, mod := range mods {
		mod(p)
	}
	// The service account admission needs the account in its cache.
	if err := cluster.Eventually(ctx, "creating pod "+namespace+"/"+name, func(ctx context.Context) error {
		_, err := m.c.Client.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{})
		return err
	}); err != nil {
		m.t.Fatal(err)
	}
}

// waitCaptured waits until the pod's netns holds the capture table and its
// object the redirection annotation (want), or neither (!want).
func (m *mesh) waitCaptured(t *testing.T, p *corev1.Pod, want bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), convergeWithin)
	defer cancel()
	path := p.Annotations[agent.NetnsAnnotation]
	if path == "" {
		t.Fatalf("pod %s/%s has no %s annotation", p.Namespace, p.Name, agent.NetnsAnnotation)
	}
	err := cluster.Eventually(ctx, fmt.Sprintf("pod %s/%s captured=%v", p.Namespace, p.Name, want), func(ctx context.Context) error {
		cur, err := m.c.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		annotated := cur.Annotations[agent.RedirectionAnnotation] == agent.RedirectionEnabled
		table := nftTable(path)
		if annotated != want || table != want {
			return fmt.Errorf("annotation %s=%q, table inet %s present: %v", agent.RedirectionAnnotation,
				cur.Annotations[agent.RedirectionAnnotation], capture.NFTableName, table)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func nftTable(nsPath string) bool {
	ns, err := netns.Open(nsPath)
	if err != nil {
		return false
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return false
	}
	defer conn.CloseLasting()
	_, err = conn.ListTableOfFamily(capture.NFTableName, nftables.TableFamilyINet)
	return err == nil
}

// mustGet retries a GET from the pod's netns until it succeeds or within
// passes, and returns the body.
func (m *mesh) mustGet(t *testing.T, from *corev1.Pod, url string, within time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var body string
	err := cluster.Eventually(ctx, fmt.Sprintf("GET %s from %s/%s", url, from.Namespace, from.Name), func(ctx context.Context) error {
		var err error
		body, err = get(ctx, from.Annotations[agent.NetnsAnnotation], url, 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// pollAllowed makes GETs from the pod until one is answered, and fails the
// test when that takes more than within since start. It returns how long
// it took.
func (m *mesh) pollAllowed(t *testing.T, from *corev1.Pod, url string, start time.Time, within time.Duration) time.Duration {
	t.Helper()
	deadline := start.Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(500*time.Millisecond))
		_, err := get(ctx, from.Annotations[agent.NetnsAnnotation], url, 500*time.Millisecond)
		cancel()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s from %s/%s: still %v %v after the change (want an answer within %v)", url, from.Namespace, from.Name, err, time.Since(start), within)
		}
		<-tick.C
	}
}

// caller is one GET from the pod's netns on a new connection, for
// meshcheck.ExpectDenied.
func (m *mesh) caller(from *corev1.Pod, url string) func(context.Context) error {
	nsPath := from.Annotations[agent.NetnsAnnotation]
	return func(ctx context.Context) error {
		_, err := getWatched(ctx, nsPath, url, meshcheck.CallTimeout, &meshcheck.ResetWatch{})
		return err
	}
}

// denials reads the node's ztunnel's meshcheck.DenyCount for want.
func (m *mesh) denials(node string, want map[string]string) func(context.Context) (float64, error) {
	return func(ctx context.Context) (float64, error) {
		text, err := m.nodeGet(ctx, node, "http://127.0.0.1:15020/stats/prometheus")
		if err != nil {
			return 0, fmt.Errorf("ztunnel metrics on %s: %w", node, err)
		}
		return meshcheck.DenyCount(text, want), nil
	}
}

func (m *mesh) create(t *testing.T, gvr schema.GroupVersionResource, obj *unstructured.Unstructured) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(m.c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(gvr).Namespace(obj.GetNamespace()).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dyn.Resource(gvr).Namespace(obj.GetNamespace()).Delete(context.Background(), obj.GetName(), metav1.DeleteOptions{})
	})
}

func (m *mesh) delete(t *testing.T, gvr schema.GroupVersionResource, namespace, name string) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(m.c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := dyn.Resource(gvr).Namespace(namespace).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func mustID(t *testing.T, ns, sa string) spiffe.ID {
	t.Helper()
	id, err := spiffe.New(trustDomain, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// fetchCert asks istiod's CA for id with node's ztunnel token, as that
// ztunnel would.
func (m *mesh) fetchCert(t *testing.T, node string, id spiffe.ID) (*identity.Issued, error) {
	t.Helper()
	bb, err := netns.OpenName(testnode.BackboneNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer bb.Close()
	sockets := &netns.Sockets{NS: bb}
	token := m.ztunnelToken[node]
	c, err := identity.NewCAClient(identity.CAClientOptions{
		Address: m.istiodAddr(), ServerName: caServerName, RootCAFile: m.rootCert,
		Token: func(context.Context) (string, error) { return token, nil },
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return sockets.Dial(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Fetch(ctx, id)
}

// hasMetric reports whether the samples of the metric whose labels include
// want add up to more than zero.
func hasMetric(text, name string, want map[string]string) bool {
	return meshcheck.MetricSum(text, name, want) > 0
}
