package main

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDemo runs the tunnel demo against a freshly built istiod binary.
func TestDemo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "istiod")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ambit-mesh/ambit/istiod/cmd/istiod").CombinedOutput(); err != nil {
		t.Fatalf("building istiod: %v\n%s", err, out)
	}
	if err := run(bin); err != nil {
		t.Fatal(err)
	}
}
