package ambient

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// TestBuildGolden derives every resource of testdata/mesh (loaded through
// the local-mode loader) and compares them with testdata/mesh.golden, for
// both tunnel rules.
func TestBuildGolden(t *testing.T) {
	snap, errs := config.LoadDir("testdata/mesh")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"mesh", Options{}},
		{"mesh-by-enrollment", Options{Tunnel: TunnelByEnrollment, TrustDomain: "example.org", Network: "net1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, errs := Build(snap, tc.opts)
			var out bytes.Buffer
			for _, err := range errs {
				fmt.Fprintf(&out, "// error: %v\n", err)
			}
			addrs := r.Addresses()
			for _, k := range config.SortedKeys(addrs) {
				fmt.Fprintf(&out, "// Address %s\n", k)
				out.Write(stableJSON(t, addrs[k]))
			}
			for _, k := range config.SortedKeys(r.Authorizations) {
				fmt.Fprintf(&out, "// Authorization %s\n", k)
				out.Write(stableJSON(t, r.Authorizations[k]))
			}
			golden(t, tc.name+".golden", out.Bytes())
			if len(r.Workloads) != 4 || len(r.Services) != 3 {
				t.Errorf("%d workloads, %d services; want 4 and 3 (the pending pod has no IP)", len(r.Workloads), len(r.Services))
			}
		})
	}
}
