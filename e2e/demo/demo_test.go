package main

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDemo runs the tunnel demo against a freshly built istiod binary.
func TestTunnelDemo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "istiod")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ambit-mesh/ambit/istiod/cmd/istiod").CombinedOutput(); err != nil {
		t.Fatalf("building istiod: %v\n%s", err, out)
	}
	if err := runTunnel(bin); err != nil {
		t.Fatal(err)
	}
}
