package charts

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/pkg/version"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.yaml from the rendered output")

// renderCases are the golden cases: default values, and each non-default
// values file testdata/<name>.yaml.
var renderCases = []struct{ name, namespace string }{
	{"default", "istio-system"},
	{"k3s-iptables", "istio-system"},
	{"ha", "mesh-system"},
	{"custom-dirs", "istio-system"},
}

const testRelease = "ambit"

// valuesFile is the values file of a case, "" for the defaults.
func valuesFile(name string) string {
	if name == "default" {
		return ""
	}
	return filepath.Join("testdata", name+".yaml")
}

func readValues(t *testing.T, name string) map[string]any {
	t.Helper()
	f := valuesFile(name)
	if f == "" {
		return nil
	}
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	return v
}

func render(t *testing.T, name, namespace string) string {
	t.Helper()
	out, err := Render(readValues(t, name), testRelease, namespace)
	if err != nil {
		t.Fatalf("rendering %s: %v", name, err)
	}
	return out
}

func TestGolden(t *testing.T) {
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			got := render(t, c.name, c.namespace)
			golden := filepath.Join("testdata", "golden", c.name+".yaml")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./deploy/charts -run TestGolden -update)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("%s differs from the rendered chart (-golden +rendered); if intended, run with -update:\n%s", golden, diff)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Name() != "ambit" || c.Metadata.Version != version.Dev || c.Metadata.AppVersion != version.Dev {
		t.Errorf("chart %s version %s appVersion %s; want ambit, %s, %s (pkg/version.Dev)",
			c.Name(), c.Metadata.Version, c.Metadata.AppVersion, version.Dev, version.Dev)
	}
	if len(c.Schema) == 0 {
		t.Error("the chart has no values.schema.json")
	}
	// A fresh copy each time: changing one does not change the next.
	c.Metadata.Version = "9.9.9"
	c2, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c2.Metadata.Version != version.Dev {
		t.Errorf("second Load sees version %s: Load must return a fresh chart", c2.Metadata.Version)
	}
	if got, want := len(c2.CRDObjects()), len(wantCRDs); got != want {
		t.Errorf("chart has %d CRD objects, want %d", got, want)
	}
}

// wantCRDs are the CRDs the chart carries.
var wantCRDs = []string{
	"authorizationpolicies.security.istio.io",
	"backendtlspolicies.gateway.networking.k8s.io",
	"destinationrules.networking.istio.io",
	"gatewayclasses.gateway.networking.k8s.io",
	"gateways.gateway.networking.k8s.io",
	"grpcroutes.gateway.networking.k8s.io",
	"httproutes.gateway.networking.k8s.io",
	"listenersets.gateway.networking.k8s.io",
	"peerauthentications.security.istio.io",
	"referencegrants.gateway.networking.k8s.io",
	"serviceentries.networking.istio.io",
	"tcproutes.gateway.networking.k8s.io",
	"tlsroutes.gateway.networking.k8s.io",
	"udproutes.gateway.networking.k8s.io",
	"virtualservices.networking.istio.io",
	"workloadentries.networking.istio.io",
}

func TestCRDs(t *testing.T) {
	data, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, doc := range splitDocs(t, data) {
		var head struct {
			APIVersion, Kind string
			Metadata         struct{ Name string }
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatal(err)
		}
		if head.APIVersion != "apiextensions.k8s.io/v1" || head.Kind != "CustomResourceDefinition" {
			t.Errorf("crds/ holds a %s %s %q, want only CustomResourceDefinitions", head.APIVersion, head.Kind, head.Metadata.Name)
		}
		names = append(names, head.Metadata.Name)
	}
	if diff := cmp.Diff(wantCRDs, names); diff != "" {
		t.Errorf("CRDs (-want +got):\n%s", diff)
	}
	if out := render(t, "default", "istio-system"); strings.Contains(out, "kind: CustomResourceDefinition") {
		t.Error("Render's output holds a CRD; CRDs come only from CRDs()")
	}
}

func TestBadValues(t *testing.T) {
	for _, c := range []struct {
		values map[string]any
		field  string
	}{
		{map[string]any{"cni": map[string]any{"capture": "ebpf"}}, "/cni/capture"},
		{map[string]any{"istiod": map[string]any{"replicas": 0}}, "/istiod/replicas"},
		{map[string]any{"ztunnel": map[string]any{"connectionLimits": map[string]any{"open": -1}}}, "/ztunnel/connectionLimits/open"},
		{map[string]any{"trustDomain": "Example.COM"}, "/trustDomain"},
		{map[string]any{"logLevel": "verbose"}, "/logLevel"},
		{map[string]any{"platform": "openshift"}, "/platform"},
		{map[string]any{"cni": map[string]any{"binDir": "opt/cni/bin"}}, "/cni/binDir"},
		{map[string]any{"istiod": map[string]any{"certTTL": "one day"}}, "/istiod/certTTL"},
		{map[string]any{"ztunnel": map[string]any{"memoryLimit": "1GB"}}, "/ztunnel/memoryLimit"},
		{map[string]any{"global": map[string]any{"pullPolicy": "Sometimes"}}, "/global/pullPolicy"},
		{map[string]any{"istiod": map[string]any{"resources": map[string]any{"requests": map[string]any{"cpu": "lots"}}}}, "/istiod/resources/requests/cpu"},
		{map[string]any{"ztunnel": map[string]any{"replicas": 2}}, "'replicas' not allowed"},
	} {
		t.Run(c.field, func(t *testing.T) {
			_, err := Render(c.values, testRelease, "istio-system")
			if err == nil {
				t.Fatalf("values %v rendered; want an error naming %s", c.values, c.field)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("error does not name %s: %v", c.field, err)
			}
		})
	}
	if _, err := Render(nil, "", "istio-system"); err == nil {
		t.Error("Render without a release name succeeded")
	}
}

func splitDocs(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(stripYAMLComments(doc))) > 0 {
			out = append(out, doc)
		}
	}
}

func stripYAMLComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

// decodeAll decodes every rendered object strictly into its typed Go form:
// a misspelled or misplaced field fails here.
func decodeAll(t *testing.T, manifest string) []runtime.Object {
	t.Helper()
	s := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, json.SerializerOptions{Yaml: true, Strict: true})
	var out []runtime.Object
	for i, doc := range splitDocs(t, []byte(manifest)) {
		obj, _, err := s.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("rendered document %d: %v\n%s", i, err, doc)
		}
		out = append(out, obj)
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
