package ca

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// MinTokenLength is the shortest token a static token file may hold.
const MinTokenLength = 16

// ErrTokenFile is wrapped by every static token file error.
var ErrTokenFile = errors.New("invalid token file")

// TokenEntry is one caller of a static token file.
type TokenEntry struct {
	// Name identifies the caller in logs, e.g. "ztunnel-node-a". Unique.
	Name string `json:"name"`
	// Token is the bearer secret, at least MinTokenLength characters. Unique.
	Token string `json:"token"`
	// Identities the caller may request: SPIFFE IDs, where the namespace or
	// service account may be "*" (any), e.g. spiffe://cluster.local/ns/*/sa/*.
	// The trust domain must be the CA's. Exclusive with Node.
	Identities []string `json:"identities,omitempty"`
	// Node makes the caller that node's ztunnel: it may request the
	// identity of a pod only while a pod with that namespace and service
	// account is on the node (AuthorizeNode, in the pods view given by
	// SetNodePods), and its xDS streams must present that node's ztunnel
	// node ID. Exclusive with Identities.
	Node string `json:"node,omitempty"`
}

type tokenFile struct {
	Tokens []TokenEntry `json:"tokens"`
}

// StaticTokens authenticates callers by fixed bearer tokens (local mode).
// Safe for concurrent use once SetNodePods was called (if needed).
type StaticTokens struct {
	byHash map[[sha256.Size]byte]*staticCaller
	pods   NodePods // for node callers; nil until SetNodePods
	nodes  int      // entries with a node
}

var (
	_ Authenticator = (*StaticTokens)(nil)
	_ Caller        = (*staticCaller)(nil)
	_ NodeBound     = (*staticCaller)(nil)
)

type idPattern struct{ ns, sa string } // "*" matches any

type staticCaller struct {
	s        *StaticTokens
	name     string
	patterns []idPattern
	node     string
	td       string
}

// LoadStaticTokens reads a token file (see ParseStaticTokens).
func LoadStaticTokens(path, trustDomain string) (*StaticTokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenFile, err)
	}
	t, err := ParseStaticTokens(data, trustDomain)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", path, err)
	}
	return t, nil
}

// ParseStaticTokens parses a token file, YAML or JSON, strict (unknown fields
// are errors):
//
//	tokens:
//	- name: ztunnel-node-a              # caller name for logs; unique
//	  token: 8f1c0e6b2d9a47c3b5e1...    # bearer secret, >= 16 chars; unique
//	  node: node-a                      # node-a's ztunnel: its pods' identities
//	- name: demo-client
//	  token: 0f9e8d7c6b5a49382716...
//	  identities:                       # what it may request; at least one
//	  - spiffe://cluster.local/ns/default/sa/client
//	  - spiffe://cluster.local/ns/shop/sa/*
//
// An entry has either a node (the caller is that node's ztunnel, bound to
// it as Kubernetes' TokenReview plus node authorization bind a ztunnel's
// token: see TokenEntry.Node) or identities. "*" stands for a whole
// namespace or service-account segment only. A commented example is
// istiod/ca/testdata/tokens.example.yaml.
func ParseStaticTokens(data []byte, trustDomain string) (*StaticTokens, error) {
	var f tokenFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenFile, err)
	}
	if len(f.Tokens) == 0 {
		return nil, fmt.Errorf("%w: no entries under \"tokens\"; add at least one {name, token, identities}", ErrTokenFile)
	}
	return NewStaticTokens(trustDomain, f.Tokens)
}

// NewStaticTokens validates entries and returns the authenticator.
func NewStaticTokens(trustDomain string, entries []TokenEntry) (*StaticTokens, error) {
	if err := spiffe.ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	s := &StaticTokens{byHash: make(map[[sha256.Size]byte]*staticCaller, len(entries))}
	names := map[string]bool{}
	for i, e := range entries {
		where := fmt.Sprintf("tokens[%d]", i)
		if e.Name == "" {
			return nil, fmt.Errorf("%w: %s: empty name; give each caller a name for the logs", ErrTokenFile, where)
		}
		where = fmt.Sprintf("tokens[%d] (%s)", i, e.Name)
		if names[e.Name] {
			return nil, fmt.Errorf("%w: %s: name used twice; names must be unique", ErrTokenFile, where)
		}
		names[e.Name] = true
		if len(e.Token) < MinTokenLength {
			return nil, fmt.Errorf("%w: %s: token is %d characters; use at least %d random characters (e.g. openssl rand -hex 32)", ErrTokenFile, where, len(e.Token), MinTokenLength)
		}
		if strings.ContainsAny(e.Token, " \t\r\n") {
			return nil, fmt.Errorf("%w: %s: token contains white space", ErrTokenFile, where)
		}
		h := sha256.Sum256([]byte(e.Token))
		if _, dup := s.byHash[h]; dup {
			return nil, fmt.Errorf("%w: %s: token already used by another entry; tokens must be unique", ErrTokenFile, where)
		}
		switch {
		case e.Node != "" && len(e.Identities) > 0:
			return nil, fmt.Errorf("%w: %s: both node and identities; a node's ztunnel gets the identities of its node's pods, give it no identities", ErrTokenFile, where)
		case e.Node != "" && !validNodeName(e.Node):
			return nil, fmt.Errorf("%w: %s: node %q is not a node name (lower-case letters, digits, '-' and '.')", ErrTokenFile, where, e.Node)
		case e.Node == "" && len(e.Identities) == 0:
			return nil, fmt.Errorf("%w: %s: no identities; list the SPIFFE IDs or patterns it may request, or set node for a node's ztunnel", ErrTokenFile, where)
		}
		c := &staticCaller{s: s, name: e.Name, node: e.Node, td: trustDomain}
		if e.Node != "" {
			s.nodes++
		}
		for j, id := range e.Identities {
			p, err := parsePattern(id, trustDomain)
			if err != nil {
				return nil, fmt.Errorf("%w: %s.identities[%d]: %v", ErrTokenFile, where, j, err)
			}
			c.patterns = append(c.patterns, p)
		}
		s.byHash[h] = c
	}
	return s, nil
}

func validNodeName(n string) bool {
	if len(n) > 253 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// SetNodePods gives the node callers the view of the pods they are
// authorized by. Call it before the first Authenticate; without it a node
// caller's requests fail (Unavailable), never allowed.
func (s *StaticTokens) SetNodePods(p NodePods) { s.pods = p }

// HasNodes reports whether some entry is a node's ztunnel (then
// SetNodePods is needed).
func (s *StaticTokens) HasNodes() bool { return s.nodes > 0 }

func parsePattern(s, td string) (idPattern, error) {
	// Substitute wildcards by a valid label, parse, then put them back.
	const ph = "wildcard"
	probe, anyNS, anySA := s, false, false
	if rest, ok := strings.CutPrefix(s, spiffe.Scheme+"://"+td+"/"); ok {
		parts := strings.Split(rest, "/")
		if len(parts) == 4 {
			anyNS, anySA = parts[1] == "*", parts[3] == "*"
			if anyNS {
				parts[1] = ph
			}
			if anySA {
				parts[3] = ph
			}
			probe = spiffe.Scheme + "://" + td + "/" + strings.Join(parts, "/")
		}
	}
	id, err := spiffe.Parse(probe)
	if err != nil {
		return idPattern{}, fmt.Errorf("%q: %v; want spiffe://%s/ns/<namespace or *>/sa/<service account or *>", s, err, td)
	}
	if id.TrustDomain != td {
		return idPattern{}, fmt.Errorf("%q is in trust domain %q, but the CA's is %q", s, id.TrustDomain, td)
	}
	p := idPattern{ns: id.Namespace, sa: id.ServiceAccount}
	if anyNS {
		p.ns = "*"
	}
	if anySA {
		p.sa = "*"
	}
	return p, nil
}

// Authenticate implements Authenticator.
func (s *StaticTokens) Authenticate(ctx context.Context) (Caller, error) {
	tok, err := BearerToken(ctx)
	if err != nil {
		return nil, err
	}
	c, ok := s.byHash[sha256.Sum256([]byte(tok))]
	if !ok {
		return nil, fmt.Errorf("%w: unknown bearer token; use a token from istiod's token file", ErrUnauthenticated)
	}
	return c, nil
}

func (c *staticCaller) Name() string { return c.name }

// Node implements NodeBound: the entry's node, "" for other callers.
func (c *staticCaller) Node() string { return c.node }

func (c *staticCaller) Authorize(_ context.Context, id spiffe.ID) error {
	if c.node != "" {
		return c.authorizeNode(id)
	}
	if id.TrustDomain == c.td {
		for _, p := range c.patterns {
			if (p.ns == "*" || p.ns == id.Namespace) && (p.sa == "*" || p.sa == id.ServiceAccount) {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: caller %q may not request %s; add it to that caller's identities in the token file", ErrPermissionDenied, c.name, id)
}

// authorizeNode is node authorization for the ztunnel of c.node.
func (c *staticCaller) authorizeNode(id spiffe.ID) error {
	if id.TrustDomain != c.td {
		return fmt.Errorf("%w: caller %q (ztunnel of node %s) may not request %s: trust domain %q is not the CA's %q",
			ErrPermissionDenied, c.name, c.node, id, id.TrustDomain, c.td)
	}
	if c.s.pods == nil {
		return fmt.Errorf("caller %q is the ztunnel of node %s, but istiod has no view of the pods to authorize it (run istiod with a config source)", c.name, c.node)
	}
	if err := AuthorizeNode(c.s.pods, c.node, id); err != nil {
		return fmt.Errorf("caller %q (ztunnel of node %s) may not request %s: %w", c.name, c.node, id, err)
	}
	return nil
}
