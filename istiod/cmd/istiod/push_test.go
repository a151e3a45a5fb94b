package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	apisecurityv1 "istio.io/api/security/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/config"
	"github.com/ambit-mesh/ambit/istiod/xds"
)

// chanSource is a config.Source fed by the test.
type chanSource struct {
	mu      sync.Mutex
	snap    *config.Snapshot
	changes chan struct{}
}

func (s *chanSource) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (s *chanSource) Changes() <-chan struct{}      { return s.changes }
func (s *chanSource) Snapshot() *config.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}
func (s *chanSource) publish(snap *config.Snapshot) {
	s.mu.Lock()
	s.snap = snap
	s.mu.Unlock()
	s.changes <- struct{}{}
}

// TestPushLoop: every snapshot is built and set on the xDS server, the first
// push marks istiod ready, and a build error is logged once while it lasts.
func TestPushLoop(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	x, err := xds.New(xds.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	src := &chanSource{snap: config.NewSnapshot(), changes: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		pushLoop(ctx, src, ambient.Options{}, x, nil, log, func() { close(ready) })
	}()
	defer func() { cancel(); <-done }()

	snap := func(pods ...string) *config.Snapshot {
		s := config.NewSnapshot()
		s.AuthorizationPolicies["shop/audit"] = &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "audit"},
			Spec:       apisecurityv1.AuthorizationPolicy{Action: apisecurityv1.AuthorizationPolicy_AUDIT},
		}
		for i, p := range pods {
			s.Pods["shop/"+p] = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: p},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0." + string(rune('1'+i))}}
		}
		return s
	}
	src.publish(snap("a"))
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("not ready after the first snapshot")
	}
	if x.Generation() != 1 {
		t.Errorf("generation %d after the first push (flushed), want 1", x.Generation())
	}
	src.publish(snap("a", "b"))
	src.publish(snap("a", "b")) // the loop took the previous one: this send blocks until it did
	deadline := time.Now().Add(10 * time.Second)
	for x.Stats().Sets < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling a counter under a deadline
	}
	if s := x.Stats(); s.Sets != 3 {
		t.Errorf("Sets %d, want 3", s.Sets)
	}
	if n := strings.Count(logs.String(), "shop/audit"); n != 1 {
		t.Errorf("the AUDIT policy was logged %d times, want once:\n%s", n, logs.String())
	}
}
