package ca

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

func TestParseStaticTokensErrors(t *testing.T) {
	cases := []struct {
		name, file, want string
	}{
		{"not YAML", "tokens: [", "invalid token file"},
		{"unknown field", "tokens:\n- name: a\n  token: 0123456789abcdef\n  identities: [spiffe://cluster.local/ns/a/sa/b]\n  role: admin\n", `unknown field "role"`},
		{"misspelled top level", "token:\n- name: a\n", `unknown field "token"`},
		{"empty", "", `no entries under "tokens"`},
		{"no name", "tokens:\n- token: 0123456789abcdef\n  identities: [spiffe://cluster.local/ns/a/sa/b]\n", "tokens[0]: empty name"},
		{"duplicate name", "tokens:\n- {name: a, token: 0123456789abcdef, identities: [spiffe://cluster.local/ns/a/sa/b]}\n- {name: a, token: 0123456789abcdeX, identities: [spiffe://cluster.local/ns/a/sa/b]}\n", "tokens[1] (a): name used twice"},
		{"short token", "tokens:\n- {name: a, token: short, identities: [spiffe://cluster.local/ns/a/sa/b]}\n", "token is 5 characters; use at least 16"},
		{"space in token", "tokens:\n- {name: a, token: '0123456789 abcdef', identities: [spiffe://cluster.local/ns/a/sa/b]}\n", "white space"},
		{"duplicate token", "tokens:\n- {name: a, token: 0123456789abcdef, identities: [spiffe://cluster.local/ns/a/sa/b]}\n- {name: b, token: 0123456789abcdef, identities: [spiffe://cluster.local/ns/a/sa/b]}\n", "tokens[1] (b): token already used"},
		{"no identities", "tokens:\n- {name: a, token: 0123456789abcdef}\n", "tokens[0] (a): no identities"},
		{"not SPIFFE", "tokens:\n- {name: a, token: 0123456789abcdef, identities: ['https://x/ns/a/sa/b']}\n", "identities[0]"},
		{"wrong trust domain", "tokens:\n- {name: a, token: 0123456789abcdef, identities: ['spiffe://other.td/ns/*/sa/*']}\n", "identities[0]"},
		{"wildcard trust domain", "tokens:\n- {name: a, token: 0123456789abcdef, identities: ['spiffe://*/ns/a/sa/b']}\n", "identities[0]"},
		{"partial wildcard", "tokens:\n- {name: a, token: 0123456789abcdef, identities: ['spiffe://cluster.local/ns/a*/sa/b']}\n", "identities[0]"},
		{"node and identities", "tokens:\n- {name: a, token: 0123456789abcdef, node: node-a, identities: ['spiffe://cluster.local/ns/a/sa/b']}\n", "tokens[0] (a): both node and identities"},
		{"bad node name", "tokens:\n- {name: a, token: 0123456789abcdef, node: 'Node A'}\n", `node "Node A" is not a node name`},
		{"bad second identity", "tokens:\n- {name: a, token: 0123456789abcdef, identities: ['spiffe://cluster.local/ns/a/sa/b', 'spiffe://cluster.local/ns/a']}\n", "identities[1]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseStaticTokens([]byte(c.file), td)
			if err == nil || !errors.Is(err, ErrTokenFile) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrTokenFile containing %q", err, c.want)
			}
		})
	}
}

func TestStaticTokensAuthorize(t *testing.T) {
	file := `
tokens:
- name: node-a
  token: node-a-0123456789abcdef
  identities:
  - spiffe://cluster.local/ns/*/sa/*
- name: shop
  token: shop-0123456789abcdef
  identities:
  - spiffe://cluster.local/ns/shop/sa/*
  - spiffe://cluster.local/ns/default/sa/client
- name: any-ns-sa-x
  token: anyns-0123456789abcdef
  identities: ["spiffe://cluster.local/ns/*/sa/x"]
`
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadStaticTokens(path, td)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		token, id string
		allowed   bool
	}{
		{"node-a-0123456789abcdef", "spiffe://cluster.local/ns/any/sa/thing", true},
		{"shop-0123456789abcdef", "spiffe://cluster.local/ns/shop/sa/cart", true},
		{"shop-0123456789abcdef", "spiffe://cluster.local/ns/default/sa/client", true},
		{"shop-0123456789abcdef", "spiffe://cluster.local/ns/default/sa/server", false},
		{"shop-0123456789abcdef", "spiffe://cluster.local/ns/shop2/sa/cart", false},
		{"anyns-0123456789abcdef", "spiffe://cluster.local/ns/q/sa/x", true},
		{"anyns-0123456789abcdef", "spiffe://cluster.local/ns/q/sa/y", false},
		{"node-a-0123456789abcdef", "spiffe://other.td/ns/a/sa/b", false},
	}
	for _, c := range cases {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+c.token))
		caller, err := s.Authenticate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := spiffe.Parse(c.id)
		if err != nil {
			t.Fatal(err)
		}
		err = caller.Authorize(ctx, id)
		if (err == nil) != c.allowed {
			t.Errorf("%s for %s: %v, want allowed=%v", caller.Name(), c.id, err, c.allowed)
		}
		if err != nil && !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("denial does not wrap ErrPermissionDenied: %v", err)
		}
	}
	if _, err := LoadStaticTokens(filepath.Join(t.TempDir(), "missing.yaml"), td); !errors.Is(err, ErrTokenFile) {
		t.Fatalf("missing file: %v", err)
	}
}

// fakeNodePods maps a node to its pods; err, if set, is every answer.
type fakeNodePods struct {
	pods map[string][]*corev1.Pod
	err  error
}

func (f *fakeNodePods) PodsOnNode(node string) ([]*corev1.Pod, error) {
	return f.pods[node], f.err
}

func nodePod(ns, name, sa, node string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: sa},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// TestStaticTokensNodeAuthorization: a node entry's caller is that node's
// ztunnel, authorized by the pods on its node (AuthorizeNode).
func TestStaticTokensNodeAuthorization(t *testing.T) {
	s, err := ParseStaticTokens([]byte(`
tokens:
- {name: ztunnel-node-a, token: node-a-0123456789abcdef, node: node-a}
- {name: ztunnel-node-b, token: node-b-0123456789abcdef, node: node-b}
`), td)
	if err != nil {
		t.Fatal(err)
	}
	if !s.HasNodes() {
		t.Fatal("HasNodes = false")
	}
	pods := &fakeNodePods{pods: map[string][]*corev1.Pod{
		"node-a": {nodePod("demo", "server-a", "server", "node-a", corev1.PodRunning)},
		"node-b": {
			nodePod("demo", "client", "client", "node-b", corev1.PodRunning),
			nodePod("demo", "plain", "", "node-b", corev1.PodPending),
			nodePod("demo", "batch", "batch", "node-b", corev1.PodSucceeded),
		},
	}}
	auth := func(token, id string) (Caller, error) {
		t.Helper()
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
		c, err := s.Authenticate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sid, err := spiffe.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		return c, c.Authorize(ctx, sid)
	}
	const tokB = "node-b-0123456789abcdef"

	// Without a pods view: never an allow, and not a permission denial
	// (the CA answers Unavailable).
	if _, err := auth(tokB, "spiffe://cluster.local/ns/demo/sa/client"); err == nil || errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("no pods view: %v, want a non-permission error", err)
	}
	s.SetNodePods(pods)
	cases := []struct {
		name, id string
		want     string // "" allowed, else part of the PermissionDenied
	}{
		{"own node's pod", "spiffe://cluster.local/ns/demo/sa/client", ""},
		{"own node's pod, default service account", "spiffe://cluster.local/ns/demo/sa/default", ""},
		{"other node's pod", "spiffe://cluster.local/ns/demo/sa/server", "no running pod with service account demo/server on node node-b"},
		{"istiod", "spiffe://cluster.local/ns/istio-system/sa/istiod", "no running pod with service account istio-system/istiod on node node-b"},
		{"unknown service account", "spiffe://cluster.local/ns/demo/sa/nobody", "no running pod with service account demo/nobody on node node-b"},
		{"same name, other namespace", "spiffe://cluster.local/ns/other/sa/client", "no running pod with service account other/client on node node-b"},
		{"terminated pod", "spiffe://cluster.local/ns/demo/sa/batch", "no running pod with service account demo/batch on node node-b"},
		{"other trust domain", "spiffe://other.td/ns/demo/sa/client", `trust domain "other.td" is not the CA's`},
	}
	for _, c := range cases {
		caller, err := auth(tokB, c.id)
		if got := caller.(NodeBound).Node(); got != "node-b" {
			t.Fatalf("Node() = %q", got)
		}
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v, want allowed", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrPermissionDenied) || !strings.Contains(err.Error(), c.want) ||
			!strings.Contains(err.Error(), "ztunnel of node node-b") || !strings.Contains(err.Error(), c.id) {
			t.Errorf("%s: %v, want PermissionDenied naming node-b, %s and %q", c.name, err, c.id, c.want)
		}
	}
	if _, err := auth("node-a-0123456789abcdef", "spiffe://cluster.local/ns/demo/sa/server"); err != nil {
		t.Errorf("node-a for its own pod: %v", err)
	}
	// A view that cannot answer is never an allow.
	pods.err = errors.New("not loaded")
	if _, err := auth(tokB, "spiffe://cluster.local/ns/demo/sa/client"); err == nil || errors.Is(err, ErrPermissionDenied) {
		t.Errorf("view not loaded: %v, want a non-permission error", err)
	}
	// An identities entry is not node-bound.
	s2, err := NewStaticTokens(td, []TokenEntry{{Name: "x", Token: "x-0123456789abcdef", Identities: []string{"spiffe://cluster.local/ns/a/sa/b"}}})
	if err != nil {
		t.Fatal(err)
	}
	if s2.HasNodes() {
		t.Error("HasNodes = true without node entries")
	}
}

func TestBearerToken(t *testing.T) {
	cases := []struct {
		md   metadata.MD
		want string
		err  string
	}{
		{metadata.Pairs("authorization", "Bearer abc"), "abc", ""},
		{metadata.Pairs("authorization", "bearer  abc "), "abc", ""},
		{metadata.MD{}, "", "no \"authorization\""},
		{metadata.Pairs("authorization", "Bearer "), "", "not \"Bearer <token>\""},
		{metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"), "", "send exactly one"},
		{metadata.Pairs("authorization", "abc"), "", "not \"Bearer <token>\""},
	}
	for _, c := range cases {
		got, err := BearerToken(metadata.NewIncomingContext(context.Background(), c.md))
		if c.err == "" {
			if err != nil || got != c.want {
				t.Errorf("%v: %q, %v", c.md, got, err)
			}
			continue
		}
		if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%v: %v, want %q", c.md, err, c.err)
		}
	}
}

// The documented example file parses.
func TestExampleTokenFile(t *testing.T) {
	s, err := LoadStaticTokens("testdata/tokens.example.yaml", td)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.byHash) != 2 {
		t.Fatalf("%d callers, want 2", len(s.byHash))
	}
}
