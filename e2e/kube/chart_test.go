package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/deploy/charts"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
)

// chartValuesDir holds the chart tests' non-default values files.
const chartValuesDir = "../../deploy/charts/testdata"

// TestChartServerDryRun applies the chart's CRDs, then offers every object
// the chart renders, for the default values and each values file of the
// chart's golden tests, to the API server as a server-side apply with
// dryRun=All in a namespace of its own: the API server's validation and
// admission must accept each one.
func TestChartServerDryRun(t *testing.T) {
	c := cluster.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	crds, err := charts.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	crdFile := filepath.Join(t.TempDir(), "crds.yaml")
	if err := os.WriteFile(crdFile, crds, 0o644); err != nil {
		t.Fatal(err)
	}
	names, err := cluster.ApplyCRDs(ctx, c.Config, crdFile)
	if err != nil {
		t.Fatalf("applying the chart's CRDs: %v", err)
	}
	t.Logf("the chart's %d CRDs are Established", len(names))

	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))

	files, err := filepath.Glob(filepath.Join(chartValuesDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no values files in %s (%v)", chartValuesDir, err)
	}
	for _, f := range append([]string{""}, files...) {
		name := "default"
		if f != "" {
			name = strings.TrimSuffix(filepath.Base(f), ".yaml")
		}
		t.Run(name, func(t *testing.T) {
			values := map[string]any{}
			if f != "" {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if err := yaml.Unmarshal(data, &values); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
			}
			ns := "ambit-chart-" + name
			if _, err := c.CreateNamespace(ctx, ns, nil); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = c.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
			})
			manifest, err := charts.Render(values, "ambit", ns)
			if err != nil {
				t.Fatal(err)
			}
			objs := decodeManifest(t, manifest)
			kinds := map[string]int{}
			for _, obj := range objs {
				kinds[obj.GetKind()]++
				if err := dryRunApply(ctx, dyn, mapper, obj, ns); err != nil {
					t.Errorf("%s %s rejected: %v", obj.GetKind(), obj.GetName(), err)
				}
			}
			t.Logf("%d objects accepted by a server-side dry run: %v", len(objs), kinds)
			for _, k := range []string{"Deployment", "DaemonSet", "Service", "ClusterRole", "Role"} {
				if kinds[k] == 0 {
					t.Errorf("rendered no %s", k)
				}
			}
		})
	}

	// The dry run validates: a cni-agent whose netns mount propagates both
	// ways, which only a privileged container may have, is refused (the
	// chart's HostToContainer is what an unprivileged agent can have).
	manifest, err := charts.Render(nil, "ambit", "ambit-chart-invalid")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("InvalidRefused", func(t *testing.T) {
		if _, err := c.CreateNamespace(ctx, "ambit-chart-invalid", nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Client.CoreV1().Namespaces().Delete(context.Background(), "ambit-chart-invalid", metav1.DeleteOptions{})
		})
		var agent *unstructured.Unstructured
		for _, obj := range decodeManifest(t, manifest) {
			if obj.GetKind() == "DaemonSet" && obj.GetName() == "cni-agent" {
				agent = obj
			}
		}
		if agent == nil {
			t.Fatal("no cni-agent DaemonSet rendered")
		}
		if err := dryRunApply(ctx, dyn, mapper, agent, "ambit-chart-invalid"); err != nil {
			t.Fatalf("the unchanged cni-agent DaemonSet: %v", err)
		}
		containers, _, _ := unstructured.NestedSlice(agent.Object, "spec", "template", "spec", "containers")
		changed := false
		for _, m := range containers[0].(map[string]any)["volumeMounts"].([]any) {
			if m := m.(map[string]any); m["mountPath"] == "/var/run/netns" {
				m["mountPropagation"], m["readOnly"] = "Bidirectional", false
				changed = true
			}
		}
		if !changed {
			t.Fatal("the cni-agent mounts nothing at /var/run/netns")
		}
		if err := unstructured.SetNestedSlice(agent.Object, containers, "spec", "template", "spec", "containers"); err != nil {
			t.Fatal(err)
		}
		err := dryRunApply(ctx, dyn, mapper, agent, "ambit-chart-invalid")
		if !apierrors.IsInvalid(err) {
			t.Fatalf("cni-agent with a Bidirectional /var/run/netns mount: %v, want Invalid", err)
		}
		t.Logf("refused as expected: %v", err)
	})
}

// dryRunApply server-side-applies obj with dryRun=All; nothing persists.
func dryRunApply(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, obj *unstructured.Unstructured, ns string) error {
	gvk := obj.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() != ns {
			return errors.New("rendered in namespace " + obj.GetNamespace() + ", not the release's " + ns)
		}
		ri = dyn.Resource(m.Resource).Namespace(ns)
	}
	got, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{
		FieldManager: "ambit-chart-e2e", Force: true, DryRun: []string{metav1.DryRunAll},
	})
	if err != nil {
		return err
	}
	if got.GetName() != obj.GetName() {
		return errors.New("the API server answered with " + got.GetName())
	}
	return nil
}

func decodeManifest(t *testing.T, manifest string) []*unstructured.Unstructured {
	t.Helper()
	d := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatal(err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

// TestChartRBAC installs the chart's service accounts and RBAC for real and
// asks the API server's authorizer (SubjectAccessReview) what each
// component's service account may do: what it needs, and nothing beside.
func TestChartRBAC(t *testing.T) {
	c := cluster.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "ambit-chart-rbac"
	if _, err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	manifest, err := charts.Render(nil, "ambit", ns)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	var clusterScoped []*unstructured.Unstructured
	t.Cleanup(func() {
		ctx := context.Background()
		for _, obj := range clusterScoped {
			gvk := obj.GroupVersionKind()
			if m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err == nil {
				_ = dyn.Resource(m.Resource).Delete(ctx, obj.GetName(), metav1.DeleteOptions{})
			}
		}
		_ = c.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	})
	for _, obj := range decodeManifest(t, manifest) {
		switch obj.GetKind() {
		case "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding":
		default:
			continue
		}
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatal(err)
		}
		ri := dynamic.ResourceInterface(dyn.Resource(m.Resource))
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(ns)
		} else {
			clusterScoped = append(clusterScoped, obj)
		}
		if _, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "ambit-chart-e2e", Force: true}); err != nil {
			t.Fatalf("applying %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}

	type check struct {
		sa, verb, group, resource, namespace, name string
		allowed                                    bool
	}
	can := func(ctx context.Context, k check) (bool, error) {
		sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:" + ns + ":" + k.sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{
				Namespace: k.namespace, Verb: k.verb, Group: k.group, Resource: k.resource, Name: k.name,
			},
		}}
		got, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.Allowed, nil
	}
	// The authorizer's caches catch up with the new bindings.
	if err := cluster.Eventually(ctx, "istiod's RBAC to take effect", func(ctx context.Context) error {
		for _, k := range []check{{sa: "istiod", verb: "list", resource: "pods"}, {sa: "cni-agent", verb: "get", group: "apps", resource: "daemonsets", namespace: ns, name: "cni-agent"}} {
			if ok, err := can(ctx, k); err != nil || !ok {
				return fmt.Errorf("%s may not %s %s yet (%v)", k.sa, k.verb, k.resource, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []check{
		// ztunnel: nothing at all.
		{"ztunnel", "list", "", "pods", "", "", false},
		{"ztunnel", "get", "", "configmaps", ns, "istio-ca-root-cert", false},
		{"ztunnel", "create", "authentication.k8s.io", "tokenreviews", "", "", false},
		{"ztunnel", "get", "", "secrets", ns, "istio-ca-secret", false},
		// istiod: its config source, token reviews, the trust bundle, its root.
		{"istiod", "watch", "", "pods", "", "", true},
		{"istiod", "list", "", "serviceaccounts", "", "", true},
		{"istiod", "watch", "discovery.k8s.io", "endpointslices", "", "", true},
		{"istiod", "list", "security.istio.io", "authorizationpolicies", "", "", true},
		{"istiod", "watch", "security.istio.io", "peerauthentications", "", "", true},
		{"istiod", "create", "authentication.k8s.io", "tokenreviews", "", "", true},
		{"istiod", "update", "", "configmaps", "default", "istio-ca-root-cert", true},
		{"istiod", "create", "", "configmaps", "default", "", true},
		{"istiod", "update", "", "configmaps", "default", "kube-root-ca.crt", false},
		{"istiod", "delete", "", "configmaps", "default", "istio-ca-root-cert", false},
		{"istiod", "get", "", "secrets", ns, "istio-ca-secret", true},
		{"istiod", "create", "", "secrets", ns, "", true},
		{"istiod", "get", "", "secrets", ns, "cacerts", false},
		{"istiod", "list", "", "secrets", ns, "", false},
		{"istiod", "get", "", "secrets", "default", "istio-ca-secret", false},
		{"istiod", "create", "", "pods", "default", "", false},
		// cni-agent: its node's pods, namespaces, its node and DaemonSet.
		{"cni-agent", "watch", "", "pods", "", "", true},
		{"cni-agent", "patch", "", "pods", "default", "p", true},
		{"cni-agent", "delete", "", "pods", "default", "p", false},
		{"cni-agent", "list", "", "namespaces", "", "", true},
		{"cni-agent", "get", "", "nodes", "", "node-1", true},
		{"cni-agent", "list", "", "nodes", "", "", false},
		{"cni-agent", "get", "apps", "daemonsets", ns, "ztunnel", false},
		{"cni-agent", "get", "", "secrets", ns, "istio-ca-secret", false},
	} {
		got, err := can(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if got != k.allowed {
			t.Errorf("%s %s %s %s/%s in %q: allowed %v, want %v", k.sa, k.verb, k.group, k.resource, k.name, k.namespace, got, k.allowed)
		}
	}
}
