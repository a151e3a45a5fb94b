package ca_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/ca/catest"
)

const wantID = "spiffe://cluster.local/ns/default/sa/client"

// request sends a CSR for id over real gRPC/TLS with the given token ("" =
// none) and returns the parsed chain.
func request(t *testing.T, c *catest.CA, token, id string) ([]*x509.Certificate, *ecdsa.PrivateKey, error) {
	t.Helper()
	conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(credentials.NewTLS(c.ClientTLS())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
	})
	if err != nil {
		return nil, nil, err
	}
	var chain []*x509.Certificate
	for _, p := range resp.CertChain {
		b, _ := pem.Decode([]byte(p))
		if b == nil {
			t.Fatalf("cert_chain entry not PEM: %q", p)
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, cert)
	}
	return chain, key, nil
}

// verify checks the leaf against roots (PEM, as a client would get them),
// with the chain's middle as intermediates, and its URI SAN.
func verify(t *testing.T, chain []*x509.Certificate, rootsPEM []byte, id string) {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM) {
		t.Fatal("roots PEM holds no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1 : len(chain)-1] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("leaf does not verify against the root: %v", err)
	}
	if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id {
		t.Fatalf("URI SANs %v, want %s", chain[0].URIs, id)
	}
	if !bytes.Equal(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[len(chain)-1].Raw}), rootsPEM) {
		t.Fatal("last certificate of the chain is not the published root")
	}
}

func TestOverTLS(t *testing.T) {
	c := catest.Start(t, catest.Options{Tokens: []ca.TokenEntry{
		{Name: "node-a", Token: "node-a-token-0123456789", Identities: []string{"spiffe://cluster.local/ns/*/sa/*"}},
		{Name: "limited", Token: "limited-token-0123456789", Identities: []string{"spiffe://cluster.local/ns/other/sa/only"}},
	}})

	chain, key, err := request(t, c, "node-a-token-0123456789", wantID)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, chain, c.RootsPEM, wantID)
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		t.Fatal("leaf key is not the CSR's key")
	}

	for _, tc := range []struct {
		name, token string
		code        codes.Code
		msg         string
	}{
		{"no token", "", codes.Unauthenticated, "authorization"},
		{"wrong token", "wrong-token-0123456789", codes.Unauthenticated, "unknown bearer token"},
		{"identity not allowed", "limited-token-0123456789", codes.PermissionDenied, "may not request " + wantID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := request(t, c, tc.token, wantID)
			st, _ := status.FromError(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.msg)
			}
		})
	}
}

func TestRestartKeepsRoot(t *testing.T) {
	dir := t.TempDir()
	auth1, err := ca.LoadOrCreate(ca.Options{TrustDomain: "cluster.local", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	keyBefore, _ := os.ReadFile(filepath.Join(dir, ca.CAKeyFile))
	var firstRoots []byte
	t.Run("first run", func(t *testing.T) {
		c := catest.Start(t, catest.Options{Authority: auth1})
		chain, _, err := request(t, c, c.Token, wantID)
		if err != nil {
			t.Fatal(err)
		}
		verify(t, chain, c.RootsPEM, wantID)
		firstRoots = c.RootsPEM
	}) // the server stops here

	auth2, err := ca.LoadOrCreate(ca.Options{TrustDomain: "cluster.local", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c := catest.Start(t, catest.Options{Authority: auth2})
	if !bytes.Equal(c.RootsPEM, firstRoots) {
		t.Fatal("restart changed the root")
	}
	if keyAfter, _ := os.ReadFile(filepath.Join(dir, ca.CAKeyFile)); !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("restart changed the key file")
	}
	chain, _, err := request(t, c, c.Token, wantID)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, chain, firstRoots, wantID) // trusted by clients of the first run
}

func TestIstioCACertsOverTLS(t *testing.T) {
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := func(cn string, n int64) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(n), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		}
	}
	rt := tmpl("root", 1)
	rootDER, _ := x509.CreateCertificate(rand.Reader, rt, rt, &rootKey.PublicKey, rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	interDER, _ := x509.CreateCertificate(rand.Reader, tmpl("intermediate", 2), root, &interKey.PublicKey, rootKey)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(interKey)
	certPEM := func(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}) }

	dir := t.TempDir()
	for name, data := range map[string][]byte{
		ca.CACertFile:    certPEM(interDER),
		ca.CAKeyFile:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		ca.CertChainFile: append(certPEM(interDER), certPEM(rootDER)...),
		ca.RootCertFile:  certPEM(rootDER),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	auth, err := ca.LoadOrCreate(ca.Options{TrustDomain: "cluster.local", CADir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c := catest.Start(t, catest.Options{Authority: auth})
	chain, _, err := request(t, c, c.Token, wantID)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || !bytes.Equal(chain[1].Raw, interDER) || !bytes.Equal(chain[2].Raw, rootDER) {
		t.Fatalf("chain of %d, want leaf, intermediate, root", len(chain))
	}
	verify(t, chain, certPEM(rootDER), wantID)
}

// Serve stops when its context ends and the port is then closed.
func TestServeStops(t *testing.T) {
	auth, err := ca.NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	tokens, _ := ca.NewStaticTokens("cluster.local", []ca.TokenEntry{{Name: "x", Token: "0123456789abcdef", Identities: []string{wantID}}})
	srv, err := ca.NewServer(auth, tokens, ca.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := auth.ServingTLSConfig([]string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, tlsConf) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if conn, err := net.Dial("tcp", lis.Addr().String()); err == nil {
		conn.Close()
		t.Fatal("listener still open after Serve returned")
	}
}
