package pstatus

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/ambit-mesh/ambit/pkg/syncz"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testdata/syncz.json is written by hand (a waypoint, a NACK, a stale
// type); syncz-local.json was captured from the local mesh's istiod
// (`ambitctl proxy-status --local -o json` on deploy/examples/local).
func TestTableGolden(t *testing.T) {
	for _, name := range []string{"syncz", "syncz-local"} {
		golden(t, name)
	}
}

func golden(t *testing.T, name string) {
	in, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"short", "yaml"} {
		var b bytes.Buffer
		if err := Write(&b, ps, format); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", name+"."+format+".golden")
		if *update {
			if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.Bytes(), want) {
			t.Errorf("%s differs (go test -update rewrites it):\n%s", path, b.Bytes())
		}
	}
}

func TestErrors(t *testing.T) {
	var ps []syncz.Proxy
	if err := Write(&bytes.Buffer{}, ps, "wide"); err == nil {
		t.Error("-o wide accepted")
	}
	if _, err := Parse([]byte("404 page not found")); err == nil {
		t.Error("a non-JSON answer parsed")
	}
}

func TestShortName(t *testing.T) {
	for url, want := range map[string]string{
		"type.googleapis.com/istio.workload.Address":            "WDS",
		"type.googleapis.com/istio.security.Authorization":      "WADS",
		"type.googleapis.com/envoy.config.listener.v3.Listener": "LDS",
		"type.googleapis.com/example.Other":                     "OTHER",
	} {
		if got := ShortName(url); got != want {
			t.Errorf("ShortName(%s) = %s, want %s", url, got, want)
		}
	}
}
