package agent_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

func TestLocalSourceFiltersNode(t *testing.T) {
	s := agent.NewLocalSource("/nonexistent", "n1", 0, nil)
	if pods, synced := s.Pods(); synced || len(pods) != 0 {
		t.Fatalf("before Set: %v %v", pods, synced)
	}
	ch := s.Changed()
	s.Set(&localcluster.State{
		Generation: 3,
		Namespaces: []localcluster.Namespace{{Name: "mesh", Labels: map[string]string{"k": "v"}}},
		Pods: []localcluster.Pod{
			{UID: "u1", Name: "a", Namespace: "mesh", Node: "n1", ServiceAccount: "sa", Labels: map[string]string{"app": "a"}, Netns: "/n/a", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
			{UID: "u2", Name: "b", Namespace: "mesh", Node: "n2", ServiceAccount: "sa", Netns: "/n/b"},
		},
	})
	select {
	case <-ch:
	default:
		t.Fatal("Changed did not fire")
	}
	pods, synced := s.Pods()
	if !synced || len(pods) != 1 {
		t.Fatalf("Pods = %+v, %v", pods, synced)
	}
	p := pods[0]
	if p.UID != "u1" || p.Key() != "mesh/a" || p.NamespaceLabels["k"] != "v" || p.Labels["app"] != "a" || p.Netns != "/n/a" || len(p.IPs) != 1 || p.ServiceAccount != "sa" {
		t.Errorf("pod %+v", p)
	}
}

func TestLocalSourceWatchesFile(t *testing.T) {
	path := t.TempDir() + "/cluster.json"
	st := &localcluster.State{Generation: 1, Namespaces: []localcluster.Namespace{{Name: "ns"}}}
	if err := localcluster.Write(path, st); err != nil {
		t.Fatal(err)
	}
	s := agent.NewLocalSource(path, "n1", 5*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait := func(cond func([]agent.Pod, bool) bool) {
		t.Helper()
		deadline := time.After(testWait)
		for {
			ch := s.Changed()
			if cond(s.Pods()) {
				return
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatal("timed out waiting for the source")
			}
		}
	}
	wait(func(p []agent.Pod, synced bool) bool { return synced && len(p) == 0 })
	st.Generation = 2
	st.Pods = []localcluster.Pod{{UID: "u", Name: "p", Namespace: "ns", Node: "n1", ServiceAccount: "sa", Netns: "/n/p"}}
	if err := localcluster.Write(path, st); err != nil {
		t.Fatal(err)
	}
	wait(func(p []agent.Pod, _ bool) bool { return len(p) == 1 && p[0].UID == "u" })
}

type nopBackend struct{}

func (nopBackend) Name() string                                            { return "nop" }
func (nopBackend) Install(context.Context, *os.File, capture.Config) error { return nil }
func (nopBackend) Verify(context.Context, *os.File, capture.Config) error  { return nil }
func (nopBackend) Remove(context.Context, *os.File) error                  { return nil }

type nopZDS struct{}

func (nopZDS) AddPod(context.Context, zds.Pod) error { return nil }
func (nopZDS) DelPod(context.Context, string) error  { return nil }
func (nopZDS) Connected() bool                       { return false }
func (nopZDS) WaitReady(ctx context.Context) error   { <-ctx.Done(); return ctx.Err() }

func TestStatusAndConfig(t *testing.T) {
	s := agent.NewLocalSource("/nonexistent", "n1", 0, nil)
	if _, err := agent.New(agent.Config{Source: s, Capture: nopBackend{}, ZDS: nopZDS{}}); err == nil {
		t.Error("New without a node succeeded")
	}
	notInstalled := errors.New("plugin not installed")
	a, err := agent.New(agent.Config{Node: "n1", Source: s, Capture: nopBackend{}, ZDS: nopZDS{}, Ready: func(context.Context) error { return notInstalled }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := a.Status(ctx); !errors.Is(err, agent.ErrNotReady) {
		t.Errorf("Status before Discover = %v", err)
	}
	// Discover waits for the source to sync.
	dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := a.Discover(dctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Discover before sync = %v", err)
	}
	s.Set(&localcluster.State{})
	if err := a.Discover(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Status(ctx); !errors.Is(err, notInstalled) {
		t.Errorf("Status = %v, want the Ready check's error", err)
	}
}
