package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// fieldManager owns what the helpers apply with server-side apply.
const fieldManager = "ambit-e2e"

// ApplyCRDs server-side-applies every CustomResourceDefinition found in
// paths (YAML files, or directories whose *.yaml and *.yml files are read,
// not recursively) and waits until each is Established. Documents of other
// kinds (Gateway API ships a ValidatingAdmissionPolicy next to its CRDs) are
// skipped. It returns the names of the applied CRDs, sorted.
func ApplyCRDs(ctx context.Context, cfg *rest.Config, paths ...string) ([]string, error) {
	files, err := yamlFiles(paths)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building dynamic client: %w", err)
	}
	crds := dyn.Resource(crdGVR)
	var names []string
	for _, f := range files {
		objs, err := readObjects(f)
		if err != nil {
			return nil, err
		}
		for _, obj := range objs {
			if obj.GetAPIVersion() != "apiextensions.k8s.io/v1" || obj.GetKind() != "CustomResourceDefinition" {
				continue
			}
			obj.SetResourceVersion("")
			if _, err := crds.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil {
				return nil, fmt.Errorf("applying CRD %s from %s: %w", obj.GetName(), f, err)
			}
			names = append(names, obj.GetName())
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no CustomResourceDefinition in %s", strings.Join(paths, ", "))
	}
	for _, name := range names {
		if err := Eventually(ctx, "CRD "+name+" to be Established", func(ctx context.Context) error {
			u, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			return crdEstablished(u)
		}); err != nil {
			return nil, err
		}
	}
	sort.Strings(names)
	return names, nil
}

func crdEstablished(u *unstructured.Unstructured) error {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == "Established" && m["status"] == "True" {
			return nil
		}
	}
	return fmt.Errorf("CRD %s not Established yet", u.GetName())
}

func yamlFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("reading CRDs: %w", err)
		}
		if !fi.IsDir() {
			out = append(out, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("reading CRDs: %w", err)
		}
		for _, e := range entries {
			if !e.IsDir() && (strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
				out = append(out, filepath.Join(p, e.Name()))
			}
		}
	}
	return out, nil
}

// readObjects decodes every document of a multi-document YAML file that is
// a Kubernetes object (has apiVersion and kind); others are skipped.
func readObjects(path string) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReaderSize(f, 1<<20))
	var out []*unstructured.Unstructured
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("decoding document %d of %s: %w", i, path, err)
		}
		if len(bytes.TrimSpace(js)) == 0 || string(bytes.TrimSpace(js)) == "null" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(js, &m); err != nil {
			return nil, fmt.Errorf("decoding document %d of %s: %w", i, path, err)
		}
		obj := &unstructured.Unstructured{Object: m}
		if obj.GetAPIVersion() == "" || obj.GetKind() == "" {
			continue // not an object: a kustomization.yaml, a values file
		}
		out = append(out, obj)
	}
}

// moduleDir returns the directory of module path at the version the ambit
// module's build list selects, downloading it through the Go module proxy if
// needed. Nothing in the repository (go.mod, go.sum) changes.
func moduleDir(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", path).Output()
	if err != nil {
		return "", fmt.Errorf("finding the version of %s in go.mod (go list -m): %w%s", path, err, stderrOf(err))
	}
	version := strings.TrimSpace(string(out))
	if version == "" {
		return "", fmt.Errorf("%s is not in ambit's module graph", path)
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", path+"@"+version)
	cmd.Dir = os.TempDir() // outside any module: go.sum stays untouched
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err = cmd.Output()
	if err != nil {
		return "", fmt.Errorf("downloading %s@%s: %w%s", path, version, err, stderrOf(err))
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("parsing go mod download output for %s: %w", path, err)
	}
	if m.Dir == "" {
		return "", fmt.Errorf("downloading %s@%s: %s", path, version, m.Error)
	}
	return m.Dir, nil
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// IstioCRDs returns the path of Istio's crd-all.gen.yaml (every istio.io
// CRD) from the istio.io/istio module ambit's go.mod pins.
func IstioCRDs(ctx context.Context) (string, error) {
	dir, err := moduleDir(ctx, "istio.io/istio")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "manifests", "charts", "base", "files", "crd-all.gen.yaml")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("istio CRDs: %w", err)
	}
	return p, nil
}

// GatewayAPICRDs returns the directory of Gateway API's experimental-channel
// CRDs (a superset of the standard channel, which Istio's own integration
// tests install) from the sigs.k8s.io/gateway-api version the module graph
// selects (Istio's requirement).
func GatewayAPICRDs(ctx context.Context) (string, error) {
	dir, err := moduleDir(ctx, "sigs.k8s.io/gateway-api")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "config", "crd", "experimental")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("gateway API CRDs: %w", err)
	}
	return p, nil
}

// ApplyIstioCRDs applies Istio's and Gateway API's CRDs, what
// pilot-discovery needs before it serves, and returns their names.
func (c *Cluster) ApplyIstioCRDs(ctx context.Context) ([]string, error) {
	istio, err := IstioCRDs(ctx)
	if err != nil {
		return nil, err
	}
	gw, err := GatewayAPICRDs(ctx)
	if err != nil {
		return nil, err
	}
	return ApplyCRDs(ctx, c.Config, istio, gw)
}
