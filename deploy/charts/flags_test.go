package charts

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// binaryFlags are the flag names each binary defines: the values of the
// Flag* constants of its config.go (the contract the chart's args follow).
func binaryFlags(t *testing.T, configGo string) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), configGo, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]bool{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, "Flag") || i >= len(vs.Values) {
					continue
				}
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					v, _ := strconv.Unquote(lit.Value)
					flags[v] = true
				}
			}
		}
	}
	if len(flags) == 0 {
		t.Fatalf("no Flag* constants in %s", configGo)
	}
	return flags
}

// TestArgsAreBinaryFlags checks that every --flag the chart passes is one
// the binary defines, for every values case.
func TestArgsAreBinaryFlags(t *testing.T) {
	repo := filepath.Join("..", "..")
	bins := map[string]struct{ workload, container, config string }{
		"istiod":    {"istiod", "discovery", "istiod/cmd/istiod/config.go"},
		"ztunnel":   {"ztunnel", "ztunnel", "ztunnel/cmd/ztunnel/config.go"},
		"cni-agent": {"cni-agent", "cni-agent", "cni/cmd/cni-agent/config.go"},
	}
	defined := map[string]map[string]bool{}
	for name, b := range bins {
		defined[name] = binaryFlags(t, filepath.Join(repo, b.config))
	}
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			r := renderObjects(t, c.name, c.namespace)
			for name, b := range bins {
				var args []string
				if d := r.deployments[b.workload]; d != nil {
					args = container(t, d.Spec.Template.Spec, b.container).Args
				} else if ds := r.daemonSets[b.workload]; ds != nil {
					args = container(t, ds.Spec.Template.Spec, b.container).Args
				} else {
					t.Fatalf("no workload %s", b.workload)
				}
				if len(args) == 0 {
					t.Errorf("%s has no args", name)
				}
				for _, a := range args {
					flag, _, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
					if !strings.HasPrefix(a, "--") || !ok {
						t.Errorf("%s arg %q is not --flag=value", name, a)
						continue
					}
					if !defined[name][flag] {
						t.Errorf("%s arg %q: %s defines no flag %q (%s)", name, a, name, flag, bins[name].config)
					}
				}
			}
		})
	}
}
