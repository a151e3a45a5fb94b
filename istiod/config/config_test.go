package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	// Write then rename, as an atomic writer would.
	tmp := filepath.Join(dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

const goodFile = `# comment-only documents are skipped
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
spec:
  containers:
  - name: web
    image: web
    ports:
    - name: http
      containerPort: 8080
status:
  podIP: 10.0.0.5
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.5
  ports:
  - port: 80
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: web, namespace: shop}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-abc, namespace: shop}
  addressType: IPv4
  endpoints: []
- apiVersion: security.istio.io/v1beta1
  kind: PeerAuthentication
  metadata: {name: default, namespace: istio-system}
  spec:
    mtls: {mode: STRICT}
`

// badFile holds one bad object per document, between good ones.
const badFile = `apiVersion: v1
kind: Pod
metadata:
  name: typo
  namespace: shop
spec:
  containers:
  - name: c
    image: c
    portz: []
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: good-policy
  namespace: shop
spec:
  rules:
  - from:
    - source:
        principals: [a]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: misspelt
  namespace: shop
spec:
  rules:
  - from:
    - source:
        principal: [a]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bad-port
  namespace: shop
spec:
  rules:
  - to:
    - operation:
        ports: ["http"]
---
apiVersion: v1
kind: Service
metadata:
  name: bad-ip
  namespace: shop
spec:
  clusterIP: 10.96.0.300
---
apiVersion: v1
kind: Pod
metadata:
  name: wrong-type
  namespace: shop
spec:
  containers:
  - name: c
    ports:
    - containerPort: "eighty"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.6
---
apiVersion: v1
kind: Pod
metadata:
  namespace: shop
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: ports-without-selector
  namespace: shop
spec:
  portLevelMtls:
    8080: {mode: DISABLE}
---
a: [unclosed
`

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a-good.yaml", goodFile)
	write(t, dir, "b-bad.yml", badFile)
	write(t, dir, "notes.txt", "not config")
	write(t, dir, ".hidden.yaml", "garbage: [")
	snap, errs := LoadDir(dir)

	// The good objects all apply, defaults included.
	if len(snap.Namespaces) != 1 || len(snap.ServiceAccounts) != 1 || len(snap.EndpointSlices) != 1 || len(snap.PeerAuthentications) != 1 {
		t.Errorf("snapshot %+v", snap)
	}
	pod := snap.Pods["shop/web"]
	if pod == nil || pod.Spec.ServiceAccountName != "default" || pod.Spec.Containers[0].Ports[0].Protocol != "TCP" || len(pod.Status.PodIPs) != 1 {
		t.Errorf("pod %+v", pod)
	}
	svc := snap.Services["default/web"]
	if svc == nil || svc.Spec.Ports[0].TargetPort.IntVal != 80 || svc.Spec.Ports[0].Protocol != "TCP" {
		t.Errorf("service %+v", svc)
	}
	if snap.AuthorizationPolicies["shop/good-policy"] == nil {
		t.Error("the good policy between bad objects did not apply")
	}
	if snap.Len() != 7 {
		t.Errorf("snapshot has %d objects, want 7", snap.Len())
	}

	bad := filepath.Join(dir, "b-bad.yml")
	want := []struct {
		doc    int
		object string
		field  string
		is     error
	}{
		{1, "Pod shop/typo", "spec.containers[0].portz", ErrUnknownField},
		{3, "AuthorizationPolicy shop/misspelt", "spec.rules[0].from[0].source.principal", ErrUnknownField},
		{4, "AuthorizationPolicy shop/bad-port", "spec.rules[0].to[0].operation.ports[0]", ErrInvalid},
		{5, "Service shop/bad-ip", "spec.clusterIP", ErrInvalid},
		{6, "Pod shop/wrong-type", "spec.containers.ports.containerPort", ErrInvalid},
		{7, "VirtualService vs", "", ErrUnsupportedKind},
		{9, "Pod", "metadata.name", ErrInvalid},
		{10, "PeerAuthentication shop/ports-without-selector", "spec.portLevelMtls", ErrInvalid},
		{11, "", "", ErrSyntax},
		{8, "Service default/web", "", ErrDuplicate}, // duplicates are found after the file's own errors
	}
	if len(errs) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(errs), len(want), errors.Join(errs...))
	}
	for i, w := range want {
		var oe *ObjectError
		if !errors.As(errs[i], &oe) {
			t.Errorf("error %d is %T: %v", i, errs[i], errs[i])
			continue
		}
		if oe.File != bad || oe.Doc != w.doc || oe.Object() != w.object || oe.Field != w.field || !errors.Is(oe, w.is) {
			t.Errorf("error %d = %v\nwant doc %d object %q field %q (%v)", i, oe, w.doc, w.object, w.field, w.is)
		}
		// The message names the file and, when known, the object and field.
		msg := oe.Error()
		if !strings.Contains(msg, "b-bad.yml") || !strings.Contains(msg, w.field) || !strings.Contains(msg, w.object) {
			t.Errorf("message %q does not name file, object and field", msg)
		}
	}
	if !strings.Contains(errs[9].Error(), "a-good.yaml document 4") {
		t.Errorf("duplicate does not name the first definition: %v", errs[9])
	}
}

func TestLoadDirMissing(t *testing.T) {
	snap, errs := LoadDir(filepath.Join(t.TempDir(), "nope"))
	if snap == nil || snap.Len() != 0 || len(errs) != 1 {
		t.Fatalf("got %v, %v", snap, errs)
	}
}

// recorder collects WatchDir calls for polling with a deadline.
type recorder struct {
	mu    sync.Mutex
	snaps []*Snapshot
	errs  [][]error
}

func (r *recorder) fn(s *Snapshot, errs []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snaps = append(r.snaps, s)
	r.errs = append(r.errs, errs)
}

func (r *recorder) waitFor(t *testing.T, what string, ok func(*Snapshot, []error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		n := len(r.snaps)
		var s *Snapshot
		var e []error
		if n > 0 {
			s, e = r.snaps[n-1], r.errs[n-1]
		}
		r.mu.Unlock()
		if s != nil && ok(s, e) {
			return
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a readiness guess
	}
	t.Fatalf("timed out waiting for %s", what)
}

func (r *recorder) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.snaps)
}

func TestWatchDir(t *testing.T) {
	for _, tc := range []struct {
		name           string
		debounce, poll time.Duration
	}{
		{"file events", 20 * time.Millisecond, time.Hour},
		{"polling only", time.Hour, 50 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(context.Background())
			var r recorder
			done := make(chan error, 1)
			go func() { done <- watchDir(ctx, dir, tc.debounce, tc.poll, r.fn) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			r.waitFor(t, "the initial empty snapshot", func(s *Snapshot, _ []error) bool { return s.Len() == 0 })

			write(t, dir, "a.yaml", goodFile)
			r.waitFor(t, "the new file", func(s *Snapshot, _ []error) bool { return s.Pods["shop/web"] != nil })

			write(t, dir, "b.yaml", badFile)
			r.waitFor(t, "the bad file's errors", func(s *Snapshot, e []error) bool {
				return len(e) == 10 && s.AuthorizationPolicies["shop/good-policy"] != nil
			})

			if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
				t.Fatal(err)
			}
			r.waitFor(t, "the removal", func(s *Snapshot, e []error) bool {
				return len(e) == 0 && s.AuthorizationPolicies["shop/good-policy"] == nil
			})

			// Rewriting identical content does not call fn again.
			n := r.calls()
			write(t, dir, "a.yaml", goodFile)
			write(t, dir, "c.yaml", "# empty\n")
			r.waitFor(t, "c.yaml", func(*Snapshot, []error) bool { return r.calls() > n })
			if got := r.calls(); got != n+1 {
				t.Errorf("%d calls after rewrite of identical a.yaml plus new c.yaml, want %d", got, n+1)
			}
		})
	}
}

func TestDirSource(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", goodFile)
	src := NewDirSource(dir, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-src.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("no first snapshot")
	}
	if src.Snapshot().Pods["shop/web"] == nil || len(src.Errors()) != 0 {
		t.Fatalf("snapshot %+v errors %v", src.Snapshot(), src.Errors())
	}
	write(t, dir, "b.yaml", badFile)
	deadline := time.After(10 * time.Second)
	for len(src.Errors()) == 0 {
		select {
		case <-src.Changes():
		case <-deadline:
			t.Fatal("bad file not seen")
		}
	}
}
