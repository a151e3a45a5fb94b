package cluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
)

func TestMain(m *testing.M) { Main(m, Options{}) }

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestControllerManager checks the controllers the mesh relies on: a new
// namespace gets its default ServiceAccount, and a Service gets an
// EndpointSlice listing a pod whose status a test wrote (there is no kubelet).
func TestControllerManager(t *testing.T) {
	c := Shared(t)
	ctx := testContext(t, 2*time.Minute)
	const ns = "kcm"

	got, err := c.CreateNamespace(ctx, ns, map[string]string{"istio.io/dataplane-mode": "ambient"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["istio.io/dataplane-mode"] != "ambient" {
		t.Errorf("namespace labels = %v, want istio.io/dataplane-mode=ambient", got.Labels)
	}
	if err := c.WaitForServiceAccount(ctx, ns, "default"); err != nil {
		t.Fatal(err)
	}

	// A node and a running pod on it, as a test node would write them.
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "server-0", Labels: map[string]string{"app": "server"}},
		Spec: corev1.PodSpec{
			NodeName:   "node-1",
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/server"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{
		Phase:  corev1.PodRunning,
		PodIP:  "10.244.1.5",
		PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		},
	}
	if _, err := c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "server"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(svc.Spec.ClusterIP, "10.96.") {
		t.Errorf("cluster IP %q not in %s", svc.Spec.ClusterIP, ServiceCIDR)
	}

	err = Eventually(ctx, "an EndpointSlice of service server listing 10.244.1.5", func(ctx context.Context) error {
		list, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=server",
		})
		if err != nil {
			return err
		}
		for _, s := range list.Items {
			for _, ep := range s.Endpoints {
				if len(ep.Addresses) == 1 && ep.Addresses[0] == "10.244.1.5" &&
					ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					return nil
				}
			}
		}
		return errors.New("not listed yet")
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTokenReview checks real service-account tokens: a TokenRequest token
// passes a TokenReview with the right user, a tampered or foreign token does
// not, and neither does one presented for another audience.
func TestTokenReview(t *testing.T) {
	c := Shared(t)
	ctx := testContext(t, time.Minute)
	const ns, sa, aud = "tokens", "client", "istio-ca"
	if _, err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	token, err := c.CreateToken(ctx, ns, sa, []string{aud}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	st, err := c.ReviewToken(ctx, token, []string{aud})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Authenticated {
		t.Fatalf("token not authenticated: %+v", st)
	}
	if want := "system:serviceaccount:" + ns + ":" + sa; st.User.Username != want {
		t.Errorf("username = %q, want %q", st.User.Username, want)
	}
	if !slices.Contains(st.User.Groups, "system:serviceaccounts:"+ns) {
		t.Errorf("groups = %v, want system:serviceaccounts:%s among them", st.User.Groups, ns)
	}
	if !slices.Contains(st.Audiences, aud) {
		t.Errorf("audiences = %v, want %s", st.Audiences, aud)
	}

	// Flip one character of the signature.
	tampered := []byte(token)
	i := len(tampered) - 5
	if tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}
	for name, tc := range map[string]struct {
		token     string
		audiences []string
	}{
		"tampered":       {string(tampered), []string{aud}},
		"garbage":        {"not-a-token", []string{aud}},
		"wrong audience": {token, []string{"someone-else"}},
	} {
		st, err := c.ReviewToken(ctx, tc.token, tc.audiences)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if st.Authenticated {
			t.Errorf("%s token authenticated as %q", name, st.User.Username)
		}
	}
}

// TestKubectl checks the built kubectl and the admin kubeconfig, and that the
// version stamped at build time is reported.
func TestKubectl(t *testing.T) {
	c := Shared(t)
	ctx := testContext(t, time.Minute)
	out, err := exec.CommandContext(ctx, c.Binaries.Kubectl, "--kubeconfig", c.Kubeconfig, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Server Version: "+DefaultVersion) ||
		!strings.Contains(string(out), "Client Version: "+DefaultVersion) {
		t.Errorf("kubectl version output lacks %s:\n%s", DefaultVersion, out)
	}
	// Output, not CombinedOutput: kubectl warns on stderr that tokenreviews
	// are not namespaced.
	out, err = exec.CommandContext(ctx, c.Binaries.Kubectl, "--kubeconfig", c.Kubeconfig,
		"auth", "can-i", "create", "tokenreviews.authentication.k8s.io").Output()
	if err != nil || strings.TrimSpace(string(out)) != "yes" {
		t.Errorf("kubectl auth can-i create tokenreviews = %q, %v; want yes", out, err)
	}
}

// TestApplyIstioCRDs applies Istio's and Gateway API's CRDs from the module
// cache and creates one custom resource of each.
func TestApplyIstioCRDs(t *testing.T) {
	c := Shared(t)
	ctx := testContext(t, 3*time.Minute)
	names, err := c.ApplyIstioCRDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"authorizationpolicies.security.istio.io",
		"peerauthentications.security.istio.io",
		"gateways.gateway.networking.k8s.io",
		"httproutes.gateway.networking.k8s.io",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("CRD %s not applied (got %d: %v)", want, len(names), names)
		}
	}
	// Applying again is a no-op.
	if _, err := c.ApplyIstioCRDs(ctx); err != nil {
		t.Fatalf("second apply: %v", err)
	}

	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateNamespace(ctx, "crds", nil); err != nil {
		t.Fatal(err)
	}
	for _, obj := range []struct {
		gvr  schema.GroupVersionResource
		kind string
		spec map[string]any
	}{
		{schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
			"PeerAuthentication", map[string]any{"mtls": map[string]any{"mode": "STRICT"}}},
		{schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"},
			"Gateway", map[string]any{
				"gatewayClassName": "istio-waypoint",
				"listeners": []any{map[string]any{
					"name": "mesh", "port": int64(15008), "protocol": "HBONE",
				}},
			}},
	} {
		u := map[string]any{
			"apiVersion": obj.gvr.GroupVersion().String(),
			"kind":       obj.kind,
			"metadata":   map[string]any{"name": "test", "namespace": "crds"},
			"spec":       obj.spec,
		}
		if _, err := dyn.Resource(obj.gvr).Namespace("crds").Create(ctx, unstructuredOf(u), metav1.CreateOptions{}); err != nil {
			t.Errorf("creating %s: %v", obj.kind, err)
		}
	}
}

// TestStopCleansUp starts a cluster of its own and checks that Stop leaves no
// process and no directory behind.
func TestStopCleansUp(t *testing.T) {
	begin := time.Now()
	c := StartT(t, Options{})
	t.Logf("cluster started in %v", time.Since(begin).Round(time.Millisecond))
	pids := c.PIDs()
	if len(pids) != 3 {
		t.Fatalf("PIDs = %v, want etcd, kube-apiserver, kube-controller-manager", pids)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists after Stop (kill 0: %v)", pid, err)
		}
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists after Stop (stat: %v)", c.Dir, err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func unstructuredOf(m map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: m}
}
