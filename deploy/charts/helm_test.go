package charts

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// helmCLI returns the helm CLI built from the helm.sh/helm/v4 version in
// go.mod, cached by version under $AMBIT_CACHE (default ~/.cache/ambit)/bin.
// Nothing is downloaded beyond what the module build needs.
func helmCLI(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: builds the helm CLI")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", "helm.sh/helm/v4").Output()
	if err != nil {
		t.Fatalf("finding helm's version in go.mod: %v", err)
	}
	version := strings.TrimSpace(string(out))
	cache := os.Getenv("AMBIT_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache", "ambit")
	}
	bin := filepath.Join(cache, "bin", "helm-"+version)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	// Built beside the cache entry, then renamed: a concurrent test sees
	// no half-written binary.
	staged := filepath.Join(filepath.Dir(bin), ".helm-"+version+"-"+filepath.Base(t.TempDir()))
	defer os.Remove(staged)
	build := exec.CommandContext(ctx, "go", "build", "-o", staged, "helm.sh/helm/v4/cmd/helm")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the helm CLI: %v\n%s", err, out)
	}
	if err := os.Rename(staged, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// runHelm runs the CLI with its state directories in a temporary dir.
func runHelm(t *testing.T, helm string, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helm, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
	)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func valuesArgs(name string) []string {
	if f := valuesFile(name); f != "" {
		return []string{"-f", f}
	}
	return nil
}

// TestHelmLint runs `helm lint --strict` on the chart with each values
// case: no warning, no error.
func TestHelmLint(t *testing.T) {
	helm := helmCLI(t)
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", ChartDir, "-n", c.namespace}, valuesArgs(c.name)...)
			out, err := runHelm(t, helm, args...)
			if err != nil || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
	out, err := runHelm(t, helm, "lint", "--strict", ChartDir, "--set", "cni.capture=ebpf")
	if err == nil || !strings.Contains(out, "/cni/capture") {
		t.Errorf("helm lint with cni.capture=ebpf: %v; want a failure naming /cni/capture:\n%s", err, out)
	}
}

// TestHelmTemplateMatchesRender checks that Render prints exactly what
// `helm template` prints for the chart directory.
func TestHelmTemplateMatchesRender(t *testing.T) {
	helm := helmCLI(t)
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"template", testRelease, ChartDir, "-n", c.namespace}, valuesArgs(c.name)...)
			out, err := runHelm(t, helm, args...)
			if err != nil {
				t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			if diff := cmp.Diff(out, render(t, c.name, c.namespace)); diff != "" {
				t.Errorf("Render differs from helm %s (-helm +Render):\n%s", strings.Join(args, " "), diff)
			}
		})
	}
}
