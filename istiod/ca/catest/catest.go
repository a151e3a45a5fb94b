package catest

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"github.com/ambit-mesh/ambit/istiod/ca"
)

// ServerName is the DNS name in the test server's certificate.
const ServerName = "istiod.istio-system.svc"

// Options configures Start. The zero value is a fresh in-memory root for
// cluster.local and one token allowed every identity in it.
type Options struct {
	// TrustDomain defaults to "cluster.local".
	TrustDomain string
	// Authority defaults to ca.NewSelfSigned(TrustDomain).
	Authority *ca.Authority
	// Tokens default to one entry {Name: "test-client", Token: DefaultToken,
	// Identities: ["spiffe://<td>/ns/*/sa/*"]}.
	Tokens []ca.TokenEntry
	// Authenticator, if set, replaces Tokens.
	Authenticator ca.Authenticator
	// Server tunes TTLs and logging.
	Server ca.ServerOptions
}

// DefaultToken is the bearer token of the default caller.
const DefaultToken = "catest-token-0123456789abcdef"

// CA is a running CA server.
type CA struct {
	Authority *ca.Authority
	// Addr is the server's 127.0.0.1:port.
	Addr string
	// ServerName verifies the server certificate (ServerName).
	ServerName string
	// RootsPEM is the trust bundle clients must trust.
	RootsPEM []byte
	// Token is DefaultToken when the default tokens are used.
	Token string
}

// Start runs a CA server until the test ends; it fails the test on error.
func Start(t testing.TB, opts Options) *CA {
	t.Helper()
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	auth := opts.Authority
	var err error
	if auth == nil {
		if auth, err = ca.NewSelfSigned(opts.TrustDomain); err != nil {
			t.Fatalf("catest: %v", err)
		}
	}
	c := &CA{Authority: auth, ServerName: ServerName, RootsPEM: auth.RootsPEM()}
	authn := opts.Authenticator
	if authn == nil {
		entries := opts.Tokens
		if entries == nil {
			entries = []ca.TokenEntry{{Name: "test-client", Token: DefaultToken, Identities: []string{"spiffe://" + auth.TrustDomain() + "/ns/*/sa/*"}}}
			c.Token = DefaultToken
		}
		if authn, err = ca.NewStaticTokens(auth.TrustDomain(), entries); err != nil {
			t.Fatalf("catest: %v", err)
		}
	}
	srv, err := ca.NewServer(auth, authn, opts.Server)
	if err != nil {
		t.Fatalf("catest: %v", err)
	}
	tlsConf, err := auth.ServingTLSConfig([]string{ServerName}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("catest: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("catest: %v", err)
	}
	c.Addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, tlsConf) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("catest: %v", err)
		}
	})
	return c
}

// ClientTLS returns a client TLS config that trusts the CA's roots and
// verifies ServerName.
func (c *CA) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: c.Authority.RootPool(), ServerName: c.ServerName, MinVersion: tls.VersionTLS12}
}
