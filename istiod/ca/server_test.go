package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

const (
	td        = "cluster.local"
	goodToken = "node-a-token-0123456789"
	limToken  = "limited-token-0123456789"
	reqID     = "spiffe://cluster.local/ns/default/sa/client"
)

var (
	keyOnce  sync.Once
	ecKey    *ecdsa.PrivateKey
	rsa1024  *rsa.PrivateKey
	rsa2048  *rsa.PrivateKey
	p384Key  *ecdsa.PrivateKey
	edKey    ed25519.PrivateKey
	testRoot *Authority
)

// keys generates the (slow) RSA keys once for all tests.
func keys(t *testing.T) {
	t.Helper()
	keyOnce.Do(func() {
		ecKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		p384Key, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		rsa1024, _ = rsa.GenerateKey(rand.Reader, 1024)
		rsa2048, _ = rsa.GenerateKey(rand.Reader, 2048)
		_, edKey, _ = ed25519.GenerateKey(rand.Reader)
		testRoot, _ = NewSelfSigned(td)
	})
	if testRoot == nil || rsa2048 == nil {
		t.Fatal("key generation failed")
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// csrPEM makes a CSR signed by key with the given template fields.
func csrPEM(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func uriCSR(t *testing.T, key crypto.Signer, uris ...string) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		tmpl.URIs = append(tmpl.URIs, mustURL(t, u))
	}
	return csrPEM(t, key, tmpl)
}

func withToken(tok string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
}

// logBuffer collects log output to check refusals are logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newTestServer(t *testing.T, auth *Authority, opts ServerOptions) (*Server, *logBuffer) {
	t.Helper()
	tokens, err := NewStaticTokens(td, []TokenEntry{
		{Name: "node-a", Token: goodToken, Identities: []string{"spiffe://cluster.local/ns/*/sa/*"}},
		{Name: "limited", Token: limToken, Identities: []string{"spiffe://cluster.local/ns/other/sa/only"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	s, err := NewServer(auth, tokens, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s, logs
}

type failingAuthn struct{}

func (failingAuthn) Authenticate(context.Context) (Caller, error) {
	return nil, errors.New("token review: connection refused")
}

func TestCreateCertificateRefusals(t *testing.T) {
	keys(t)
	// A CSR with a valid ECDSA signature, then its signature corrupted.
	good := uriCSR(t, ecKey, reqID)
	blk, _ := pem.Decode([]byte(good))
	der := bytes.Clone(blk.Bytes)
	der[len(der)-3] ^= 0xff
	badSig := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	meta := func(v string) *structpb.Struct {
		s, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: v})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	cases := []struct {
		name string
		ctx  context.Context
		req  *pb.IstioCertificateRequest
		code codes.Code
		msg  string
	}{
		{"no token", context.Background(), &pb.IstioCertificateRequest{Csr: good}, codes.Unauthenticated, `no "authorization" metadata`},
		{"wrong token", withToken("not-a-known-token-xxxx"), &pb.IstioCertificateRequest{Csr: good}, codes.Unauthenticated, "unknown bearer token"},
		{"not bearer", metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Basic "+goodToken)), &pb.IstioCertificateRequest{Csr: good}, codes.Unauthenticated, "is not \"Bearer <token>\""},
		{"empty csr", withToken(goodToken), &pb.IstioCertificateRequest{}, codes.InvalidArgument, "field csr is empty"},
		{"not PEM", withToken(goodToken), &pb.IstioCertificateRequest{Csr: "hello"}, codes.InvalidArgument, "field csr is not PEM"},
		{"wrong PEM type", withToken(goodToken), &pb.IstioCertificateRequest{Csr: strings.Replace(good, "CERTIFICATE REQUEST", "CERTIFICATE", 2)}, codes.InvalidArgument, `type "CERTIFICATE"`},
		{"two CSRs", withToken(goodToken), &pb.IstioCertificateRequest{Csr: good + good}, codes.InvalidArgument, "send exactly one CSR"},
		{"garbage DER", withToken(goodToken), &pb.IstioCertificateRequest{Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}))}, codes.InvalidArgument, "does not parse"},
		{"bad signature", withToken(goodToken), &pb.IstioCertificateRequest{Csr: badSig}, codes.InvalidArgument, "signature does not verify"},
		{"no URI SAN", withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, ecKey)}, codes.InvalidArgument, "has 0 URI SANs"},
		{"two URI SANs", withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, ecKey, reqID, "spiffe://cluster.local/ns/default/sa/other")}, codes.InvalidArgument, "has 2 URI SANs"},
		{"non-SPIFFE URI", withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, ecKey, "https://example.com/x")}, codes.InvalidArgument, "is not a SPIFFE workload ID"},
		{"wrong trust domain", withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, ecKey, "spiffe://other.td/ns/default/sa/client")}, codes.InvalidArgument, `in trust domain "other.td"`},
		{"DNS SAN", withToken(goodToken), &pb.IstioCertificateRequest{Csr: csrPEM(t, ecKey, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, reqID)}, DNSNames: []string{"x.example"}})}, codes.InvalidArgument, "DNS, IP or email SANs"},
		{"IP SAN", withToken(goodToken), &pb.IstioCertificateRequest{Csr: csrPEM(t, ecKey, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, reqID)}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}})}, codes.InvalidArgument, "DNS, IP or email SANs"},
		{"email SAN", withToken(goodToken), &pb.IstioCertificateRequest{Csr: csrPEM(t, ecKey, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, reqID)}, EmailAddresses: []string{"a@b.c"}})}, codes.InvalidArgument, "DNS, IP or email SANs"},
		{"RSA 1024", withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, rsa1024, reqID)}, codes.InvalidArgument, "RSA key of 1024 bits is too weak"},
		{"Ed25519", withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, edKey, reqID)}, codes.InvalidArgument, "ed25519.PublicKey is not supported"},
		{"negative TTL", withToken(goodToken), &pb.IstioCertificateRequest{Csr: good, ValidityDuration: -1}, codes.InvalidArgument, "field validity_duration is -1 seconds"},
		{"TTL over max", withToken(goodToken), &pb.IstioCertificateRequest{Csr: good, ValidityDuration: int64(DefaultMaxCertTTL/time.Second) + 1}, codes.InvalidArgument, "exceeds the maximum of 172800 seconds"},
		{"impersonated mismatch", withToken(goodToken), &pb.IstioCertificateRequest{Csr: good, Metadata: meta("spiffe://cluster.local/ns/default/sa/other")}, codes.InvalidArgument, "field metadata.ImpersonatedIdentity"},
		{"identity not allowed", withToken(limToken), &pb.IstioCertificateRequest{Csr: good}, codes.PermissionDenied, `caller "limited" may not request spiffe://cluster.local/ns/default/sa/client`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, logs := newTestServer(t, testRoot, ServerOptions{})
			resp, err := s.CreateCertificate(c.ctx, c.req)
			if err == nil {
				t.Fatalf("issued %d certs, want refusal", len(resp.GetCertChain()))
			}
			st, _ := status.FromError(err)
			if st.Code() != c.code || !strings.Contains(st.Message(), c.msg) {
				t.Fatalf("got %s %q, want %s containing %q", st.Code(), st.Message(), c.code, c.msg)
			}
			l := logs.String()
			if !strings.Contains(l, "refused certificate request") || !strings.Contains(l, "code="+c.code.String()) || !strings.Contains(l, "caller=") {
				t.Fatalf("refusal not logged with caller and code: %s", l)
			}
		})
	}

	t.Run("refusal log names caller and identity", func(t *testing.T) {
		s, logs := newTestServer(t, testRoot, ServerOptions{})
		_, _ = s.CreateCertificate(withToken(limToken), &pb.IstioCertificateRequest{Csr: good})
		if l := logs.String(); !strings.Contains(l, "caller=limited") || !strings.Contains(l, "identity="+reqID) {
			t.Fatalf("log: %s", l)
		}
	})

	t.Run("authenticator failure is Unavailable", func(t *testing.T) {
		s, err := NewServer(testRoot, failingAuthn{}, ServerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.CreateCertificate(context.Background(), &pb.IstioCertificateRequest{Csr: good})
		if st, _ := status.FromError(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "connection refused") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestCreateCertificateIssues(t *testing.T) {
	keys(t)
	cases := []struct {
		name    string
		key     crypto.Signer
		seconds int64
		meta    map[string]any
		wantTTL time.Duration
		wantKU  x509.KeyUsage
	}{
		{"ECDSA default TTL", ecKey, 0, nil, DefaultCertTTL, x509.KeyUsageDigitalSignature},
		{"ECDSA explicit TTL", ecKey, 3600, nil, time.Hour, x509.KeyUsageDigitalSignature},
		{"ECDSA TTL at max", ecKey, int64(DefaultMaxCertTTL / time.Second), nil, DefaultMaxCertTTL, x509.KeyUsageDigitalSignature},
		{"short TTL backdates by TTL only", ecKey, 60, nil, time.Minute, x509.KeyUsageDigitalSignature},
		{"ECDSA P-384", p384Key, 0, nil, DefaultCertTTL, x509.KeyUsageDigitalSignature},
		{"RSA 2048", rsa2048, 0, nil, DefaultCertTTL, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{"matching ImpersonatedIdentity", ecKey, 0, map[string]any{ImpersonatedIdentityKey: reqID, "ClusterID": "Kubernetes"}, DefaultCertTTL, x509.KeyUsageDigitalSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, logs := newTestServer(t, testRoot, ServerOptions{})
			req := &pb.IstioCertificateRequest{Csr: uriCSR(t, c.key, reqID), ValidityDuration: c.seconds}
			if c.meta != nil {
				req.Metadata, _ = structpb.NewStruct(c.meta)
			}
			before := time.Now().Truncate(time.Second)
			resp, err := s.CreateCertificate(withToken(goodToken), req)
			if err != nil {
				t.Fatal(err)
			}
			after := time.Now()
			chain := parseChain(t, resp.CertChain)
			if len(chain) != 2 || !chain[1].Equal(testRoot.Roots()[0]) {
				t.Fatalf("chain has %d certs, want [leaf, root] with the root last", len(chain))
			}
			leaf := chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != reqID {
				t.Fatalf("URI SANs %v, want only %s", leaf.URIs, reqID)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Fatalf("unexpected SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.IsCA || leaf.KeyUsage != c.wantKU {
				t.Fatalf("IsCA=%v KeyUsage=%v, want leaf with %v", leaf.IsCA, leaf.KeyUsage, c.wantKU)
			}
			if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
				t.Fatalf("ExtKeyUsage %v", leaf.ExtKeyUsage)
			}
			if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(c.key.Public()) {
				t.Fatal("leaf does not carry the CSR's key")
			}
			if leaf.NotAfter.Before(before.Add(c.wantTTL)) || leaf.NotAfter.After(after.Add(c.wantTTL)) {
				t.Fatalf("NotAfter %s, want now+%s", leaf.NotAfter, c.wantTTL)
			}
			skew := min(c.wantTTL, MaxClockSkew)
			if leaf.NotBefore.Before(before.Add(-skew)) || leaf.NotBefore.After(after.Add(-skew)) {
				t.Fatalf("NotBefore %s, want now-%s", leaf.NotBefore, skew)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: testRoot.RootPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logs.String(), "issued certificate") {
				t.Fatalf("issue not logged: %s", logs)
			}
		})
	}
}

func TestCreateCertificateConfiguredTTLs(t *testing.T) {
	keys(t)
	s, _ := newTestServer(t, testRoot, ServerOptions{DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour})
	resp, err := s.CreateCertificate(withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, ecKey, reqID)})
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, resp.CertChain)[0]
	if d := time.Until(leaf.NotAfter); d > time.Hour || d < 59*time.Minute {
		t.Fatalf("default TTL: expires in %s, want 1h", d)
	}
	_, err = s.CreateCertificate(withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, ecKey, reqID), ValidityDuration: 7201})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("over configured max: %v", err)
	}
	if _, err := NewServer(testRoot, failingAuthn{}, ServerOptions{DefaultTTL: 3 * time.Hour, MaxTTL: 2 * time.Hour}); err == nil || !strings.Contains(err.Error(), "exceeds the maximum") {
		t.Fatalf("default > max accepted: %v", err)
	}
}

// A leaf never outlives the signing certificate.
func TestNotAfterCappedBySigner(t *testing.T) {
	keys(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "short root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(2 * time.Hour).Truncate(time.Second),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	root, _ := x509.ParseCertificate(der)
	auth, err := NewAuthority(td, Material{Cert: root, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newTestServer(t, auth, ServerOptions{})
	resp, err := s.CreateCertificate(withToken(goodToken), &pb.IstioCertificateRequest{Csr: uriCSR(t, ecKey, reqID)})
	if err != nil {
		t.Fatal(err)
	}
	if leaf := parseChain(t, resp.CertChain)[0]; !leaf.NotAfter.Equal(root.NotAfter) {
		t.Fatalf("NotAfter %s, want the signer's %s", leaf.NotAfter, root.NotAfter)
	}
}

func TestIssueRejectsOtherTrustDomain(t *testing.T) {
	keys(t)
	id, _ := spiffe.New("other.td", "a", "b")
	if _, err := testRoot.Issue(&ecKey.PublicKey, id, time.Hour); err == nil {
		t.Fatal("issued for another trust domain")
	}
}

func TestServingCertificate(t *testing.T) {
	keys(t)
	c, err := testRoot.ServingCertificate([]string{"istiod.istio-system.svc"}, []net.IP{net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Certificate) != 1 {
		t.Fatalf("chain of %d, want leaf only (signer is the root)", len(c.Certificate))
	}
	for _, name := range []string{"istiod.istio-system.svc", "::1"} {
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: testRoot.RootPool()}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := testRoot.ServingCertificate(nil, nil); err == nil {
		t.Fatal("serving certificate without names")
	}
}

func parseChain(t *testing.T, pems []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for i, p := range pems {
		b, rest := pem.Decode([]byte(p))
		if b == nil || len(bytes.TrimSpace(rest)) != 0 {
			t.Fatalf("cert_chain[%d] is not one PEM block", i)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}
