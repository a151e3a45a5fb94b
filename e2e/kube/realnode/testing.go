package realnode

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

// startTimeout bounds a cold build of the node's binaries plus a start.
const startTimeout = 30 * time.Minute

// tLog sends progress lines to a test's log until the test ends.
type tLog struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return os.Stderr.Write(p)
	}
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// StartT starts a node for one test and stops it in t.Cleanup, whether the
// test passes or fails. Without root, or when the binaries cannot be built,
// the test is skipped (failed under CI=true); any other start failure fails
// it with the daemons' log tails.
func StartT(t testing.TB, opts Options) *Node {
	t.Helper()
	netnstest.RequireRoot(t)
	w := &tLog{t: t}
	if opts.Progress == nil {
		opts.Progress = w
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	n, err := Start(ctx, opts)
	if err != nil {
		if errors.Is(err, cluster.ErrNoBinaries) {
			netnstest.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
		if t.Failed() {
			for _, p := range n.procs {
				t.Logf("%s, last lines of %s:\n%s", p.name, p.logPath, p.tail(40))
			}
		}
		if err := n.Stop(); err != nil {
			t.Errorf("stopping real node %s: %v", n.Name, err)
		}
	})
	return n
}
