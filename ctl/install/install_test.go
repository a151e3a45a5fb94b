package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValues(t *testing.T) {
	dir := t.TempDir()
	f1, f2 := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	if err := os.WriteFile(f1, []byte("logLevel: debug\ncni:\n  capture: iptables\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f2, []byte("cni:\n  capture: nftables\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := Options{ValueFiles: []string{f1, f2}, Set: []string{"logLevel=warn", "istiod.replicas=2"}}
	v, err := o.Values()
	if err != nil {
		t.Fatal(err)
	}
	if v["logLevel"] != "warn" || v["cni"].(map[string]any)["capture"] != "nftables" || v["istiod"].(map[string]any)["replicas"] != int64(2) {
		t.Errorf("values = %#v", v)
	}
	if _, err := (&Options{ValueFiles: []string{filepath.Join(dir, "missing.yaml")}}).Values(); err == nil || !strings.Contains(err.Error(), "-f") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := (&Options{Set: []string{"no-value"}}).Values(); err == nil {
		t.Error("bad --set accepted")
	}
}

func TestRender(t *testing.T) {
	m, err := Render(Options{Namespace: "mesh", Set: []string{"cni.capture=iptables"}})
	if err != nil {
		t.Fatal(err)
	}
	if c, d := strings.Index(m, "kind: CustomResourceDefinition"), strings.Index(m, "kind: Deployment"); c < 0 || d < c {
		t.Errorf("the CRDs do not come first (CRD at %d, Deployment at %d)", c, d)
	}
	for _, want := range []string{"kind: CustomResourceDefinition", "kind: DaemonSet", "namespace: mesh", "iptables"} {
		if !strings.Contains(m, want) {
			t.Errorf("render lacks %q", want)
		}
	}
}
