package ca

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

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
