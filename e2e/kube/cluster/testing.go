package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

// buildTimeout bounds a cold build plus a start, for the testing helpers.
const buildTimeout = 45 * time.Minute

// tWriter sends progress lines to a test's log, or to stderr once the test
// has ended (a shared cluster outlives the test that started it).
type tWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return os.Stderr.Write(p)
	}
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (w *tWriter) finish() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// skipOrFail skips a test whose prerequisites are missing, but fails it under
// CI=true, where a missing prerequisite is a broken machine.
func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrNoBinaries) {
		netnstest.SkipOrFail(t, "%v", err)
	}
	t.Fatal(err)
}

// checkShort skips in -short mode when the binaries would have to be built
// (fails under CI=true, where they must have been built).
func checkShort(t testing.TB, version string, withScheduler bool) {
	t.Helper()
	if !testing.Short() {
		return
	}
	if version == "" {
		version = DefaultVersion
	}
	if b, err := findBinaries(version); err != nil || len(b.missing(withScheduler)) > 0 {
		netnstest.SkipOrFail(t, "-short: kubernetes %s binaries are not built (e2e/kube/build.sh builds them in ~10 min)", version)
	}
}

// StartT starts a cluster for one test and stops it in t.Cleanup, whether the
// test passes or fails. Missing binaries are built (logged through t);
// under -short, or with AMBIT_KUBE_NO_BUILD=1, the test is skipped instead
// (failed under CI=true).
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	checkShort(t, opts.Version, opts.Scheduler)
	w := &tWriter{t: t}
	defer w.finish()
	if opts.Progress == nil {
		opts.Progress = w
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping kubernetes test cluster: %v", err)
		}
	})
	return c
}

var shared struct {
	mu      sync.Mutex
	opts    Options
	c       *Cluster
	err     error
	started bool
}

// Main is for TestMain: it runs the package's tests, then stops the cluster
// Shared started, if any, and exits with the tests' code.
//
//	func TestMain(m *testing.M) { cluster.Main(m, cluster.Options{}) }
func Main(m *testing.M, opts Options) {
	shared.mu.Lock()
	shared.opts = opts
	shared.mu.Unlock()
	code := m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e/kube: stopping the shared cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func stopShared() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c == nil {
		return nil
	}
	err := shared.c.Stop()
	shared.c = nil
	return err
}

// Shared returns the package's one cluster, starting it on first use with
// the options given to Main (so a `go test -run` that needs no cluster starts
// none). Tests sharing it must keep to their own namespaces. A failed start
// is reported to every test that asks. Without Main in TestMain the cluster
// is never stopped: its processes die with the test binary, its directory
// stays.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.started {
		checkShort(t, shared.opts.Version, shared.opts.Scheduler)
		shared.started = true
		opts := shared.opts
		w := &tWriter{t: t}
		if opts.Progress == nil {
			opts.Progress = w
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		shared.c, shared.err = Start(ctx, opts)
		cancel()
		w.finish()
	}
	if shared.err != nil {
		skipOrFail(t, shared.err)
	}
	return shared.c
}
