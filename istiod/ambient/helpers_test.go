package ambient

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/istiod/config"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// snapshot decodes YAML documents into a snapshot, failing on any error.
func snapshot(t *testing.T, docs ...string) *config.Snapshot {
	t.Helper()
	s := config.NewSnapshot()
	objs, errs := config.DecodeFile("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	for _, err := range errs {
		t.Fatalf("fixture: %v", err)
	}
	for _, d := range objs {
		if !s.Add(d.Object) {
			t.Fatalf("fixture: duplicate %s/%s", d.Object.GetNamespace(), d.Object.GetName())
		}
	}
	return s
}

// stableJSON renders m as indented JSON with sorted keys (protojson's own
// output varies its whitespace on purpose).
func stableJSON(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

// slug turns a test case name into a file name.
func slug(name string) string {
	return strings.Trim(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '-'
	}, name), "-")
}

// golden compares got with testdata/<name>, rewriting it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the golden file (run with -update after checking):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
