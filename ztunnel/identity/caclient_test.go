package identity

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/istiod/ca/catest"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/testpki"
)

// Process tier: real gRPC over real TLS on 127.0.0.1.

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newIstiodClient starts the real istiod CA and a CAClient for it whose
// token is read from the returned file.
func newIstiodClient(t *testing.T, ttl time.Duration) (*catest.CA, *CAClient, string) {
	t.Helper()
	c := catest.Start(t, catest.Options{})
	tokenFile := writeFile(t, "token", []byte(c.Token+"\n"))
	cl, err := NewCAClient(CAClientOptions{
		Address:    c.Addr,
		ServerName: c.ServerName,
		RootCAFile: writeFile(t, "root.pem", c.RootsPEM),
		Token:      FileToken(tokenFile),
		CertTTL:    ttl,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return c, cl, tokenFile
}

func rootPool(t *testing.T, pemBytes []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemBytes) {
		t.Fatal("no roots")
	}
	return p
}

func TestCAClientFetchFromIstiodCA(t *testing.T) {
	c, cl, _ := newIstiodClient(t, time.Hour)
	id := mustID(t, "cluster.local", "default", "web")
	iss, err := cl.Fetch(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	leaf := iss.Chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("leaf URI SANs %v, want only %s", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has other SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if !iss.Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("leaf does not certify the generated key")
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < time.Hour || life > time.Hour+10*time.Minute {
		t.Errorf("lifetime %v, want the requested 1h (plus any backdating)", life)
	}
	inter := x509.NewCertPool()
	for _, ic := range iss.Chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: rootPool(t, c.RootsPEM), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("chain does not verify to the CA's published roots: %v", err)
	}
	if !rootPool(t, c.RootsPEM).Equal(func() *x509.CertPool {
		p := x509.NewCertPool()
		p.AddCert(iss.Chain[len(iss.Chain)-1])
		return p
	}()) {
		t.Error("the chain does not end with the CA's published root")
	}
}

func TestManagerWithIstiodCA(t *testing.T) {
	c, cl, tokenFile := newIstiodClient(t, time.Hour)
	clk := newFakeClock(time.Now())
	m, err := New(context.Background(), Options{Source: cl, Clock: clk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	attempts := make(chan error, 10)
	m.hooks.attemptDone = func(_ spiffe.ID, err error) { attempts <- err }

	client := mustID(t, "cluster.local", "default", "sleep")
	server := mustID(t, "cluster.local", "shop", "cart")
	cc, err := m.GetCertificate(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := m.GetCertificate(context.Background(), server)
	if err != nil {
		t.Fatal(err)
	}
	<-attempts
	<-attempts
	if !m.Roots().Equal(rootPool(t, c.RootsPEM)) {
		t.Error("Roots is not the CA's root")
	}
	// The two certificates authenticate each other in a TLS 1.3 handshake, as
	// HBONE uses them, verified against the manager's trust bundle.
	if got := mtls(t, m, cc, sc); got != server {
		t.Errorf("client saw server identity %s, want %s", got, server)
	}

	// Rotation: advance the clock to the renewal point; a new certificate
	// comes from the CA and is served.
	p := clk.Pending()
	clk.Advance(p[0].Sub(clk.Now()))
	if err := <-attempts; err != nil {
		t.Fatalf("renewal: %v", err)
	}
	var renewedID spiffe.ID
	var renewed *tls.Certificate
	for _, id := range []spiffe.ID{client, server} {
		got, err := m.GetCertificate(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if got != cc && got != sc {
			renewedID, renewed = id, got
		}
	}
	if renewed == nil {
		t.Fatal("no certificate was replaced by the renewal")
	}
	if renewed.Leaf.SerialNumber.Cmp(cc.Leaf.SerialNumber) == 0 || renewed.Leaf.SerialNumber.Cmp(sc.Leaf.SerialNumber) == 0 {
		t.Error("renewed certificate has an old serial")
	}
	if got, _ := spiffe.FromCertificate(renewed.Leaf); got != renewedID {
		t.Errorf("renewed certificate names %s, want %s", got, renewedID)
	}

	// Wrong bearer token: the next renewal fails with the CA's message and
	// the still-valid certificate keeps being served.
	if err := os.WriteFile(tokenFile, []byte("wrong-token-0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	p = clk.Pending()
	clk.Advance(p[0].Sub(clk.Now()))
	err = <-attempts
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "unknown bearer token") {
		t.Fatalf("renewal with a wrong token: %v; want Unauthenticated with the CA's message", err)
	}
	for _, id := range []spiffe.ID{client, server} {
		if _, err := m.GetCertificate(context.Background(), id); err != nil {
			t.Errorf("%s: %v while the certificate is still valid", id, err)
		}
	}
}

// mtls runs a TLS 1.3 handshake with mutual authentication between the two
// certificates, each side verifying against m.Roots(), and returns the
// server's identity as the client verified it.
func mtls(t *testing.T, m *Manager, client, server *tls.Certificate) spiffe.ID {
	t.Helper()
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no peer certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: m.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := tls.Server(b, &tls.Config{
		Certificates: []tls.Certificate{*server}, ClientAuth: tls.RequireAnyClientCert,
		MinVersion: tls.VersionTLS13, VerifyConnection: verify,
	})
	cli := tls.Client(a, &tls.Config{
		Certificates: []tls.Certificate{*client}, InsecureSkipVerify: true, // verified by VerifyConnection
		MinVersion: tls.VersionTLS13, VerifyConnection: verify,
	})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	id, err := spiffe.FromCertificate(cli.ConnectionState().PeerCertificates[0])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCAClientWrongTokenSurfacesCAMessage(t *testing.T) {
	_, cl, tokenFile := newIstiodClient(t, time.Hour)
	if err := os.WriteFile(tokenFile, []byte("not-the-token-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := mustID(t, "cluster.local", "default", "web")
	_, err := cl.Fetch(context.Background(), id)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "unknown bearer token") || !strings.Contains(err.Error(), id.String()) {
		t.Fatalf("got %v; want Unauthenticated naming %s with the CA's message", err, id)
	}
	t.Log(err)
	// The token file is re-read per request: fixing it fixes the next fetch.
	if err := os.WriteFile(tokenFile, []byte(catest.DefaultToken), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Fetch(context.Background(), id); err != nil {
		t.Fatalf("after restoring the token: %v", err)
	}
}

func TestCAClientRejectsUntrustedCA(t *testing.T) {
	c := catest.Start(t, catest.Options{})
	cl, err := NewCAClient(CAClientOptions{
		Address: c.Addr, ServerName: c.ServerName,
		RootCAs: testpki.NewCA(t, "cluster.local").Pool(), // not the CA's root
		Token:   func(context.Context) (string, error) { return c.Token, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Fetch(context.Background(), mustID(t, "cluster.local", "default", "web")); err == nil {
		t.Fatal("fetched a certificate from a CA whose serving certificate does not verify")
	} else if status.Code(err) != codes.Unavailable {
		t.Errorf("got %v, want Unavailable (TLS verification failure)", err)
	}
}

// fakeCA is a gRPC IstioCertificateService that records requests and answers
// with respond, signing with a testpki CA.
type fakeCA struct {
	pb.UnimplementedIstioCertificateServiceServer
	t       *testing.T
	ca      *testpki.CA
	respond func(csr *x509.CertificateRequest) []string

	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	req       *pb.IstioCertificateRequest
	auth      []string
	clusterID []string
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{req: req, auth: md.Get("authorization"), clusterID: md.Get(ClusterIDHeader)})
	f.mu.Unlock()
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "no CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &pb.IstioCertificateResponse{CertChain: f.respond(csr)}, nil
}

// sign issues a leaf for id certifying the CSR's key, as the CA would.
func (f *fakeCA) sign(csr *x509.CertificateRequest, signer *testpki.CA, id spiffe.ID, opts ...testpki.LeafOption) string {
	tc := signer.LeafFor(f.t, id, opts...)
	// Re-sign the template with the CSR's public key.
	tmpl := *tc.Leaf
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, signer.Cert, csr.PublicKey, signer.Key)
	if err != nil {
		f.t.Error(err)
	}
	return pemCert(der)
}

func pemCert(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func startFakeCA(t *testing.T, respond func(f *fakeCA, csr *x509.CertificateRequest) []string) (*fakeCA, *CAClient) {
	t.Helper()
	f := &fakeCA{t: t, ca: testpki.NewCA(t, "cluster.local")}
	f.respond = func(csr *x509.CertificateRequest) []string { return respond(f, csr) }
	servingCA := testpki.NewCA(t, "serving")
	serving := servingCA.Leaf(t, "istio-system", "istiod", testpki.IPs(net.IPv4(127, 0, 0, 1)))
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serving}, MinVersion: tls.VersionTLS13})))
	pb.RegisterIstioCertificateServiceServer(srv, f)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	cl, err := NewCAClient(CAClientOptions{
		Address:   lis.Addr().String(), // verified against the 127.0.0.1 IP SAN
		RootCAs:   servingCA.Pool(),
		Token:     func(context.Context) (string, error) { return "tok-0123456789abcdef", nil },
		CertTTL:   2 * time.Hour,
		ClusterID: "Kubernetes",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return f, cl
}

func TestCAClientRequestShape(t *testing.T) {
	f, cl := startFakeCA(t, func(f *fakeCA, csr *x509.CertificateRequest) []string {
		id, _ := spiffe.FromURIs(csr.URIs)
		return []string{f.sign(csr, f.ca, id), pemCert(f.ca.Cert.Raw)}
	})
	id := mustID(t, "cluster.local", "default", "web")
	if _, err := cl.Fetch(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if len(f.reqs) != 1 {
		t.Fatalf("%d requests", len(f.reqs))
	}
	r := f.reqs[0]
	if len(r.auth) != 1 || r.auth[0] != "Bearer tok-0123456789abcdef" {
		t.Errorf("authorization metadata %q", r.auth)
	}
	if len(r.clusterID) != 1 || r.clusterID[0] != "Kubernetes" {
		t.Errorf("ClusterID metadata %q, want Kubernetes (Istio's CA refuses impersonation without it)", r.clusterID)
	}
	if r.req.GetValidityDuration() != 7200 {
		t.Errorf("validity_duration %d, want 7200", r.req.GetValidityDuration())
	}
	if got := r.req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue(); got != id.String() {
		t.Errorf("metadata %s = %q, want %s", ImpersonatedIdentityKey, got, id)
	}
	block, _ := pem.Decode([]byte(r.req.GetCsr()))
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Error(err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Errorf("CSR SANs: URIs %v DNS %v IPs %v", csr.URIs, csr.DNSNames, csr.IPAddresses)
	}
}

func TestCAClientRejectsMaliciousResponses(t *testing.T) {
	other := spiffe.ID{TrustDomain: "cluster.local", Namespace: "kube-system", ServiceAccount: "admin"}
	cases := map[string]struct {
		respond func(f *fakeCA, csr *x509.CertificateRequest, id spiffe.ID) []string
		want    string
	}{
		"certificate for another identity": {
			respond: func(f *fakeCA, csr *x509.CertificateRequest, _ spiffe.ID) []string {
				return []string{f.sign(csr, f.ca, other), pemCert(f.ca.Cert.Raw)}
			},
			want: "the leaf is for " + other.String(),
		},
		"certificate for another key": {
			respond: func(f *fakeCA, _ *x509.CertificateRequest, id spiffe.ID) []string {
				return []string{pemCert(f.ca.LeafFor(f.t, id).Leaf.Raw), pemCert(f.ca.Cert.Raw)}
			},
			want: "different public key",
		},
		"expired certificate": {
			respond: func(f *fakeCA, csr *x509.CertificateRequest, id spiffe.ID) []string {
				return []string{f.sign(csr, f.ca, id, testpki.Expired()), pemCert(f.ca.Cert.Raw)}
			},
			want: "does not verify",
		},
		"chain to another root": {
			respond: func(f *fakeCA, csr *x509.CertificateRequest, id spiffe.ID) []string {
				return []string{f.sign(csr, f.ca, id), pemCert(testpki.NewCA(f.t, "cluster.local").Cert.Raw)}
			},
			want: "does not verify",
		},
		"leaf only": {
			respond: func(f *fakeCA, csr *x509.CertificateRequest, id spiffe.ID) []string {
				return []string{f.sign(csr, f.ca, id)}
			},
			want: "only the leaf",
		},
		"empty chain": {
			respond: func(*fakeCA, *x509.CertificateRequest, spiffe.ID) []string { return nil },
			want:    "empty",
		},
		"garbage": {
			respond: func(*fakeCA, *x509.CertificateRequest, spiffe.ID) []string { return []string{"hello"} },
			want:    "not a PEM certificate",
		},
		"leaf is the root": {
			respond: func(f *fakeCA, _ *x509.CertificateRequest, _ spiffe.ID) []string {
				return []string{pemCert(f.ca.Cert.Raw), pemCert(f.ca.Cert.Raw)}
			},
			want: "identity",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			id := mustID(t, "cluster.local", "default", "web")
			_, cl := startFakeCA(t, func(f *fakeCA, csr *x509.CertificateRequest) []string { return tc.respond(f, csr, id) })
			iss, err := cl.Fetch(context.Background(), id)
			if iss != nil || !errors.Is(err, ErrBadResponse) {
				t.Fatalf("got %v, %v; want ErrBadResponse", iss, err)
			}
			if !strings.Contains(err.Error(), id.String()) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s and %q", err, id, tc.want)
			}
		})
	}

	// Through the Manager: no certificate is ever served, the error names
	// the identity.
	id := mustID(t, "cluster.local", "default", "web")
	_, cl := startFakeCA(t, func(f *fakeCA, csr *x509.CertificateRequest) []string {
		return []string{f.sign(csr, f.ca, other), pemCert(f.ca.Cert.Raw)}
	})
	m, err := New(context.Background(), Options{Source: cl, Clock: newFakeClock(time.Now()), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if c, err := m.GetCertificate(context.Background(), id); c != nil || !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), id.String()) {
		t.Errorf("Manager with a malicious CA: %v, %v", c, err)
	}
}

func TestNewCAClientOptions(t *testing.T) {
	tok := func(context.Context) (string, error) { return "t", nil }
	for name, o := range map[string]CAClientOptions{
		"no address": {Token: tok, RootCAs: x509.NewCertPool()},
		"no token":   {Address: "127.0.0.1:1", RootCAs: x509.NewCertPool()},
		"no roots":   {Address: "127.0.0.1:1", Token: tok},
		"bad roots":  {Address: "127.0.0.1:1", Token: tok, RootCAFile: writeFile(t, "x.pem", []byte("nope"))},
		"bad addr":   {Address: "nohostport", Token: tok, RootCAs: x509.NewCertPool()},
	} {
		if _, err := NewCAClient(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := FileToken(writeFile(t, "empty", nil))(context.Background()); err == nil {
		t.Error("empty token file accepted")
	}
}
