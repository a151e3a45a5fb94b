package charts

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	helmrelease "helm.sh/helm/v4/pkg/release/v1"
)

//go:generate go run ./gencrds -out ambit/crds

// chartFS holds the chart directory; "all:" keeps files such as .helmignore.
//
//go:embed all:ambit
var chartFS embed.FS

// ChartDir is the chart's directory in chartFS (and under deploy/charts).
const ChartDir = "ambit"

// Load returns the embedded chart. Each call returns a fresh copy.
func Load() (*chart.Chart, error) {
	var files []*archive.BufferedFile
	err := fs.WalkDir(chartFS, ChartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := chartFS.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, &archive.BufferedFile{Name: strings.TrimPrefix(p, ChartDir+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the embedded chart: %w", err)
	}
	c, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("loading the embedded chart: %w", err)
	}
	return c, nil
}

// Render returns the manifest `helm template` prints for the chart with
// values (user overrides, merged over values.yaml; nil for the defaults) as
// release in namespace, CRDs excluded. Invalid values fail the schema check
// with an error naming the field.
func Render(values map[string]any, release, namespace string) (string, error) {
	if release == "" || namespace == "" {
		return "", errors.New("rendering the chart: release name and namespace are required")
	}
	c, err := Load()
	if err != nil {
		return "", err
	}
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(slog.DiscardHandler))
	inst := action.NewInstall(cfg)
	inst.DryRunStrategy = action.DryRunClient
	inst.Replace = true // no release store to check the name against
	inst.ReleaseName = release
	inst.Namespace = namespace
	inst.IncludeCRDs = false
	if values == nil {
		values = map[string]any{}
	}
	r, err := inst.Run(c, values)
	if err != nil {
		return "", fmt.Errorf("rendering the chart: %w", err)
	}
	return manifestOf(r)
}

func manifestOf(r any) (string, error) {
	rel, ok := r.(*helmrelease.Release)
	if !ok {
		return "", fmt.Errorf("rendering the chart: unexpected release type %T", r)
	}
	var b strings.Builder
	b.WriteString(strings.TrimSpace(rel.Manifest))
	b.WriteString("\n")
	for _, h := range rel.Hooks {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", h.Path, h.Manifest)
	}
	return b.String(), nil
}

// CRDs returns the chart's crds/ files, in name order, as one
// multi-document YAML stream.
func CRDs() ([]byte, error) {
	dir := path.Join(ChartDir, "crds")
	entries, err := chartFS.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading the chart's CRDs: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".yaml") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var out []byte
	for _, n := range names {
		data, err := chartFS.ReadFile(path.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("reading the chart's CRDs: %w", err)
		}
		if len(out) > 0 {
			out = append(out, "---\n"...)
		}
		out = append(out, data...)
	}
	if len(out) == 0 {
		return nil, errors.New("the chart has no CRDs: run make generate")
	}
	return out, nil
}
