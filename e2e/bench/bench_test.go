package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestBenchRuns checks that the benchmark program still runs end to end and
// prints every figure (with tiny loads); it asserts nothing about speed.
func TestBenchRuns(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("iperf3 missing under CI: hack/install-deps.sh should have installed it")
		}
		t.Skip("iperf3 not installed (make deps)")
	}
	bin := filepath.Join(t.TempDir(), "bench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building bench: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-duration", "1s", "-pings", "200", "-dials", "20", "-mesh=false").CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	for _, re := range []string{
		`through HBONE +[0-9.]+ Gbit/s +ratio [0-9.]+× direct`,
		`proxy CPU +[0-9.]+ CPU-s/GB`,
		`through HBONE +p50 +[0-9]+µs +p99 +[0-9]+µs +added p50`,
		`cold pool +p50 +[0-9]+µs`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("output lacks %q:\n%s", re, out)
		}
	}
}
