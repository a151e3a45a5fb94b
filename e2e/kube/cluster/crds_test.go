package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadObjects(t *testing.T) {
	dir := t.TempDir()
	docs := `---
# only a comment
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
---
resources: [a.yaml]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: safe-upgrades
`
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(docs), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("# not yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err := yamlFiles([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || filepath.Base(files[0]) != "a.yaml" {
		t.Fatalf("yamlFiles = %v, want only a.yaml", files)
	}
	objs, err := readObjects(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("got %d objects, want 2 (empty documents and non-objects skipped)", len(objs))
	}
	if objs[0].GetKind() != "CustomResourceDefinition" || objs[0].GetName() != "widgets.example.com" {
		t.Errorf("first object = %s %s", objs[0].GetKind(), objs[0].GetName())
	}
}
