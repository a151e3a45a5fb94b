package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
)

// TestMain lets the test binary be the clients process too, as the program
// re-executes itself (os.Executable) for it.
func TestMain(m *testing.M) {
	if os.Getenv(EnvRole) == roleClients {
		if err := clientsMain(); err != nil {
			fmt.Fprintln(os.Stderr, "cpbench clients:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// tWriter sends progress lines to the test log.
type tWriter struct {
	t  *testing.T
	mu sync.Mutex
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// skipWithoutBinaries skips when the kube or pilot binaries are missing and
// building them is not allowed (never under CI=true: then it fails).
func skipWithoutBinaries(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if (errors.Is(err, cluster.ErrNoBinaries) || errors.Is(err, pilot.ErrNoBinary)) && os.Getenv("CI") != "true" {
		t.Skipf("%v (build them: bash e2e/kube/build.sh, bash e2e/kube/pilot/build.sh)", err)
	}
	t.Fatal(err)
}

// TestCPBenchSmall runs the whole program with tiny numbers against both
// servers and checks that every figure is printed for each (not the
// values: benchmarks assert nothing about time).
func TestCPBenchSmall(t *testing.T) {
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("-short: starts a cluster, istiod and pilot-discovery")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	w := &tWriter{t: t}
	_, err := cluster.EnsureBinaries(ctx, "", w)
	skipWithoutBinaries(t, err)
	_, err = pilot.EnsureBinary(ctx, w)
	skipWithoutBinaries(t, err)

	cfg, err := parseFlags([]string{"-pods", "200", "-services", "20", "-clients", "5", "-changes", "3", "-nodes", "4", "-namespaces", "4",
		"-sync-timeout", "2m", "-change-timeout", "20s", "-timeout", "10m"}, w)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	start := time.Now()
	if err := run(ctx, cfg, &out, w); err != nil {
		t.Fatalf("cpbench: %v\noutput so far:\n%s", err, out.String())
	}
	t.Logf("cpbench ran in %s:\n%s", time.Since(start).Round(time.Millisecond), out.String())

	text := out.String()
	for _, want := range []string{
		"control-plane scale: 200 pods, 20 services", "4 simulated nodes; 5 clients; 3 changes",
		"objects created in", "machine: ", "load average when ambit started", "load average when pilot started",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	lines := strings.Split(text, "\n")
	header := regexp.MustCompile(`^figure\s+ambit\s+pilot\s+pilot/ambit\s*$`)
	if !anyMatch(lines, header) {
		t.Errorf("no table header with columns ambit, pilot, pilot/ambit")
	}
	cols := regexp.MustCompile(`\S+(?: \S+)*`) // cells are separated by 2+ spaces
	for _, r := range rows {
		var found bool
		for _, l := range lines {
			if !strings.HasPrefix(l, r.label+"  ") {
				continue
			}
			found = true
			cells := cols.FindAllString(strings.TrimPrefix(l, r.label), -1)
			if len(cells) < 2 {
				t.Errorf("figure %q: want a value per server, got %q", r.label, l)
			}
		}
		if !found {
			t.Errorf("figure %q not printed", r.label)
		}
	}
}

func anyMatch(lines []string, re *regexp.Regexp) bool {
	for _, l := range lines {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}
