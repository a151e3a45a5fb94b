package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	apisecurityv1 "istio.io/api/security/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// TestMain turns off client-go's streaming list (WatchListClient) for the
// tests: istio.io/client-go's fake clientset predates it and never sends the
// bookmark that ends the initial stream. Real API servers support it.
func TestMain(m *testing.M) {
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}

// fakeDiscovery answers ServerResourcesForGroupVersion from a settable list.
type fakeDiscovery struct {
	mu        sync.Mutex
	resources []string // names in security.istio.io/v1; nil: group absent
	fail      error
}

func (f *fakeDiscovery) set(resources ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resources = resources
}

func (f *fakeDiscovery) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	if gv != SecurityGroupVersion || f.resources == nil {
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: "security.istio.io"}, gv)
	}
	l := &metav1.APIResourceList{GroupVersion: gv}
	for _, r := range f.resources {
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: r})
	}
	return l, nil
}

func objMeta(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}
}

type fixture struct {
	src  *Source
	kube *fake.Clientset
	ist  *istiofake.Clientset
	disc *fakeDiscovery
	done chan error
}

func start(t *testing.T, disc *fakeDiscovery) *fixture {
	t.Helper()
	kube := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		&corev1.Pod{ObjectMeta: objMeta("shop", "cart-1"), Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "cart"}},
		&corev1.Pod{ObjectMeta: objMeta("shop", "web-1"), Spec: corev1.PodSpec{NodeName: "node-b"}},
		&corev1.Service{ObjectMeta: objMeta("shop", "cart")},
		&corev1.ServiceAccount{ObjectMeta: objMeta("shop", "cart")},
		&discoveryv1.EndpointSlice{ObjectMeta: objMeta("shop", "cart-abc")},
	)
	ist := istiofake.NewSimpleClientset(
		&securityv1.AuthorizationPolicy{ObjectMeta: objMeta("shop", "deny-web"), Spec: apisecurityv1.AuthorizationPolicy{Action: apisecurityv1.AuthorizationPolicy_DENY}},
		&securityv1.PeerAuthentication{ObjectMeta: objMeta("istio-system", "strict")},
	)
	src := New(kube, ist, Options{CRDPollInterval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	src.disc = disc
	ctx, cancel := context.WithCancel(context.Background())
	f := &fixture{src: src, kube: kube, ist: ist, disc: disc, done: make(chan error, 1)}
	go func() { f.done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-f.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	select {
	case <-src.Synced():
	case err := <-f.done:
		t.Fatalf("Run returned before the first snapshot: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no first snapshot")
	}
	return f
}

// eventually polls cond on each change of the source (and at least every
// 100 ms) until it holds or the deadline passes.
func eventually(t *testing.T, src *Source, what string, cond func(*config.Snapshot) error) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	var err error
	for {
		if err = cond(src.Snapshot()); err == nil {
			return
		}
		select {
		case <-src.Changes():
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: %v", what, err)
		}
	}
}

func TestSnapshotFollowsTheAPI(t *testing.T) {
	f := start(t, &fakeDiscovery{resources: []string{ResourceAuthorizationPolicies, ResourcePeerAuthentications}})
	snap := f.src.Snapshot()
	counts := fmt.Sprint(len(snap.Namespaces), len(snap.Pods), len(snap.Services), len(snap.ServiceAccounts),
		len(snap.EndpointSlices), len(snap.AuthorizationPolicies), len(snap.PeerAuthentications))
	if counts != "1 2 1 1 1 1 1" {
		t.Fatalf("first snapshot counts %s", counts)
	}
	if p := snap.Pods["shop/cart-1"]; p == nil || p.ManagedFields != nil {
		t.Errorf("pod %v: managedFields must be dropped", p)
	}
	if f.src.Generation() == 0 {
		t.Error("generation 0 after Synced")
	}

	ctx := context.Background()
	// Update.
	p := snap.Pods["shop/cart-1"].DeepCopy()
	p.Labels = map[string]string{"app": "cart"}
	if _, err := f.kube.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, f.src, "pod label", func(s *config.Snapshot) error {
		if s.Pods["shop/cart-1"].Labels["app"] != "cart" {
			return errors.New("label not seen")
		}
		return nil
	})
	// Delete and create.
	if err := f.kube.CoreV1().Services("shop").Delete(ctx, "cart", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.ist.SecurityV1().AuthorizationPolicies("shop").Delete(ctx, "deny-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ist.SecurityV1().AuthorizationPolicies("shop").Create(ctx,
		&securityv1.AuthorizationPolicy{ObjectMeta: objMeta("shop", "allow-all")}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, f.src, "service deleted, policy replaced", func(s *config.Snapshot) error {
		if len(s.Services) != 0 || s.AuthorizationPolicies["shop/deny-web"] != nil || s.AuthorizationPolicies["shop/allow-all"] == nil {
			return fmt.Errorf("services %v policies %v", config.SortedKeys(s.Services), config.SortedKeys(s.AuthorizationPolicies))
		}
		return nil
	})
	// The earlier snapshot is untouched.
	if len(snap.Services) != 1 || snap.Pods["shop/cart-1"].Labels != nil {
		t.Error("a published snapshot changed")
	}
}

func TestMissingCRDs(t *testing.T) {
	disc := &fakeDiscovery{} // no security.istio.io
	f := start(t, disc)
	snap := f.src.Snapshot()
	if len(snap.Pods) != 2 || len(snap.AuthorizationPolicies) != 0 || len(snap.PeerAuthentications) != 0 {
		t.Fatalf("pods %d policies %d/%d", len(snap.Pods), len(snap.AuthorizationPolicies), len(snap.PeerAuthentications))
	}
	// One CRD appears, then the other.
	disc.set(ResourcePeerAuthentications)
	eventually(t, f.src, "peer authentications", func(s *config.Snapshot) error {
		if len(s.PeerAuthentications) != 1 || len(s.AuthorizationPolicies) != 0 {
			return fmt.Errorf("policies %d/%d", len(s.AuthorizationPolicies), len(s.PeerAuthentications))
		}
		return nil
	})
	disc.set(ResourcePeerAuthentications, ResourceAuthorizationPolicies)
	eventually(t, f.src, "authorization policies", func(s *config.Snapshot) error {
		if len(s.AuthorizationPolicies) != 1 {
			return fmt.Errorf("policies %d", len(s.AuthorizationPolicies))
		}
		return nil
	})
}

func TestDiscoveryErrorIsNotFatal(t *testing.T) {
	disc := &fakeDiscovery{fail: errors.New("connection refused")}
	f := start(t, disc)
	if len(f.src.Snapshot().Pods) != 2 {
		t.Fatal("no pods")
	}
	disc.mu.Lock()
	disc.fail, disc.resources = nil, []string{ResourceAuthorizationPolicies, ResourcePeerAuthentications}
	disc.mu.Unlock()
	eventually(t, f.src, "policies after discovery recovered", func(s *config.Snapshot) error {
		if len(s.AuthorizationPolicies) != 1 || len(s.PeerAuthentications) != 1 {
			return errors.New("policies missing")
		}
		return nil
	})
}

func TestPodIndex(t *testing.T) {
	f := start(t, &fakeDiscovery{})
	pods, err := f.src.PodsOnNode("node-a")
	if err != nil || len(pods) != 1 || pods[0].Name != "cart-1" {
		t.Fatalf("PodsOnNode(node-a) = %v, %v", pods, err)
	}
	if pods, _ := f.src.PodsOnNode("node-z"); len(pods) != 0 {
		t.Errorf("node-z: %v", pods)
	}
	if p, err := f.src.Pod("shop", "web-1"); err != nil || p == nil || p.Spec.NodeName != "node-b" {
		t.Errorf("Pod(shop/web-1) = %v, %v", p, err)
	}
	if p, err := f.src.Pod("shop", "nope"); err != nil || p != nil {
		t.Errorf("Pod(shop/nope) = %v, %v", p, err)
	}
	// Moves are seen.
	ctx := context.Background()
	p, _ := f.src.Pod("shop", "web-1")
	p = p.DeepCopy()
	if err := f.kube.CoreV1().Pods("shop").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p.ResourceVersion, p.Spec.NodeName = "", "node-a"
	if _, err := f.kube.CoreV1().Pods("shop").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, f.src, "pod moved", func(*config.Snapshot) error {
		if pods, _ := f.src.PodsOnNode("node-a"); len(pods) != 2 {
			return fmt.Errorf("%d pods on node-a", len(pods))
		}
		return nil
	})
}

func TestNotSyncedBeforeRun(t *testing.T) {
	src := New(fake.NewClientset(), istiofake.NewSimpleClientset(), Options{})
	if _, err := src.PodsOnNode("n"); !errors.Is(err, ErrNotSynced) {
		t.Errorf("PodsOnNode before Run: %v", err)
	}
	if _, err := src.Pod("a", "b"); !errors.Is(err, ErrNotSynced) {
		t.Errorf("Pod before Run: %v", err)
	}
	if src.Snapshot() == nil || src.Snapshot().Len() != 0 {
		t.Error("Snapshot before Run must be empty, not nil")
	}
}

// TestIncrementalSnapshot: a change re-reads only its object: the kinds
// without events keep their maps and the other objects their pointers,
// and the result equals the caches' content.
func TestIncrementalSnapshot(t *testing.T) {
	f := start(t, &fakeDiscovery{resources: []string{ResourceAuthorizationPolicies, ResourcePeerAuthentications}})
	eventually(t, f.src, "policies", func(s *config.Snapshot) error {
		if len(s.AuthorizationPolicies) != 1 || len(s.PeerAuthentications) != 1 {
			return errors.New("policies not seen yet")
		}
		return nil
	})
	before := f.src.Snapshot()
	p := before.Pods["shop/cart-1"].DeepCopy()
	p.Labels = map[string]string{"app": "cart"}
	if _, err := f.kube.CoreV1().Pods("shop").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, f.src, "pod label", func(s *config.Snapshot) error {
		if s.Pods["shop/cart-1"].Labels["app"] != "cart" {
			return errors.New("label not seen")
		}
		return nil
	})
	after := f.src.Snapshot()
	if after.Pods["shop/web-1"] != before.Pods["shop/web-1"] {
		t.Error("the unchanged pod is a new pointer")
	}
	same := func(a, b any) bool { return fmt.Sprintf("%p", a) == fmt.Sprintf("%p", b) }
	if !same(after.Services, before.Services) || !same(after.Namespaces, before.Namespaces) ||
		!same(after.AuthorizationPolicies, before.AuthorizationPolicies) || !same(after.PeerAuthentications, before.PeerAuthentications) {
		t.Error("a kind without events got a new map")
	}
	if same(after.Pods, before.Pods) {
		t.Error("the pods map was modified in place")
	}
	if n := len(f.src.podInf.GetStore().ListKeys()); n != len(after.Pods) {
		t.Errorf("%d pods in the snapshot, %d cached", len(after.Pods), n)
	}
}
