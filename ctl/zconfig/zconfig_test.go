package zconfig

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// now lies inside the validity of the certificates in the captured dumps.
var now = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

// The dumps in testdata were captured from the local mesh of
// testdata/mesh.yaml (`ambitctl local up -f testdata/mesh.yaml`, then GET
// /config_dump in each node's netns).
func load(t *testing.T, node string) *Dump {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", node+".config_dump.json"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestTablesGolden(t *testing.T) {
	for _, node := range []string{"node-a", "node-b"} {
		d := load(t, node)
		for _, kind := range append(Kinds, All) {
			var b bytes.Buffer
			if err := Write(&b, d, kind, Short, now); err != nil {
				t.Fatal(err)
			}
			golden(t, node+"."+kind+".txt", b.Bytes())
		}
	}
}

func TestTableContents(t *testing.T) {
	d := load(t, "node-a")
	var b bytes.Buffer
	if err := Write(&b, d, All, Short, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"NAMESPACE POD NAME ADDRESS    NODE   WAYPOINT PROTOCOL",
		"demo      client   10.244.0.2 node-a None     HBONE",
		"legacy    legacy   10.244.1.3 node-b None     TCP",
		"demo      echo-b       10.96.0.10  None     1/1",
		"demo         echo-b-from-client            Allow  WorkloadSelector",
		"istio-system deny-legacy                   Deny   Global",
		"spiffe://cluster.local/ns/demo/sa/client Leaf Available true       612076e76d94dee2ae766d8360efbe3e 2026-12-06T10:43:03Z 2026-12-05T10:38:03Z",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	if err := Write(&b, d, Certificates, Short, now.Add(48*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Available false") {
		t.Errorf("an expired certificate is not shown invalid:\n%s", b.String())
	}
}

func TestDataFormats(t *testing.T) {
	d := load(t, "node-a")
	for _, kind := range append(Kinds, All) {
		for _, format := range []string{JSON, YAML} {
			var b bytes.Buffer
			if err := Write(&b, d, kind, format, now); err != nil {
				t.Fatal(err)
			}
			js := b.Bytes()
			if format == YAML {
				var err error
				if js, err = yaml.YAMLToJSON(js); err != nil {
					t.Fatalf("%s %s: %v", kind, format, err)
				}
			}
			var v any
			if err := json.Unmarshal(js, &v); err != nil {
				t.Fatalf("%s %s: %v\n%s", kind, format, err, b.Bytes())
			}
			if kind == All {
				if m, ok := v.(map[string]any); !ok || m["workloads"] == nil {
					t.Errorf("%s %s: not the whole dump: %s", kind, format, b.Bytes())
				}
			} else if l, ok := v.([]any); !ok || len(l) == 0 {
				t.Errorf("%s %s: want a non-empty list, got %s", kind, format, b.Bytes())
			}
		}
	}
	var b bytes.Buffer
	if err := Write(&b, d, Workloads, JSON, now); err != nil {
		t.Fatal(err)
	}
	golden(t, "node-a.workloads.json", b.Bytes())
}

func TestWaypointColumn(t *testing.T) {
	doc := `{"workloads":[
	  {"uid":"a","name":"p1","namespace":"ns","addresses":["10.0.0.1"],"waypoint":{"address":{"address":"10.96.0.50"},"hboneMtlsPort":15008}},
	  {"uid":"b","name":"p2","namespace":"ns","addresses":["10.0.0.2"],"waypoint":{"hostname":{"namespace":"ns","hostname":"wp.ns.svc.cluster.local"}},"tunnelProtocol":"HBONE"},
	  {"uid":"c","name":"p3","namespace":"ns","addresses":["10.0.0.3"],"waypoint":{"address":{"address":"10.96.0.99"}}, "status":"UNHEALTHY",
	   "services":{"ns/wp.ns.svc.cluster.local":{}}}],
	 "services":[{"name":"wp","namespace":"ns","hostname":"wp.ns.svc.cluster.local","addresses":[{"address":"10.96.0.50"}]}],
	 "policies":[],"certificates":[],"pods":[]}`
	d, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Write(&b, d, All, Short, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ns        p1       10.0.0.1      wp         TCP",
		"ns        p2       10.0.0.2      wp         HBONE",
		"ns        p3       10.0.0.3      10.96.0.99 TCP",
		"ns        wp           10.96.0.50  None     0/1",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestChecks(t *testing.T) {
	if err := CheckKind("pods"); err == nil || !strings.Contains(err.Error(), "workloads, services") {
		t.Errorf("CheckKind: %v", err)
	}
	if err := CheckFormat("wide"); err == nil || !strings.Contains(err.Error(), "short, json, yaml") {
		t.Errorf("CheckFormat: %v", err)
	}
	if _, err := Parse([]byte(`{"workloads":[{"bogus":1}]}`)); err == nil {
		t.Error("a workload with an unknown field parsed")
	}
}
