package kube

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
