package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// ErrBadResponse is wrapped by every error about a CA response that does not
// match the request: the certificate is refused (fail closed).
var ErrBadResponse = errors.New("CA returned an unusable certificate")

// ImpersonatedIdentityKey is the request metadata field naming the identity
// ztunnel asks for on a pod's behalf, as Istio's ztunnel sends it.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// DefaultCertTTL is the validity CAClient requests when CertTTL is 0.
const DefaultCertTTL = 24 * time.Hour

// TokenFunc returns the bearer token for one request; it is called per
// request so the token can rotate.
type TokenFunc func(ctx context.Context) (string, error)

// FileToken returns a TokenFunc that re-reads path on every call (a projected
// service-account token is rewritten in place when it rotates).
func FileToken(path string) TokenFunc {
	return func(context.Context) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("reading CA token: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("reading CA token: %s is empty", path)
		}
		return tok, nil
	}
}

// CAClientOptions configure a CAClient. Address, Token and one of RootCAFile
// or RootCAs are required.
type CAClientOptions struct {
	// Address is the CA's host:port (istiod's 15012).
	Address string
	// ServerName is verified against the CA's serving certificate; default
	// the host part of Address.
	ServerName string
	// RootCAFile is a PEM file with the roots that sign the CA's serving
	// certificate. RootCAs, if set, is used instead.
	RootCAFile string
	RootCAs    *x509.CertPool
	// Token supplies "authorization: Bearer <token>" for every request.
	Token TokenFunc
	// CertTTL is the requested validity (validity_duration); default
	// DefaultCertTTL.
	CertTTL time.Duration
	// Now is the time responses are validated at; default time.Now.
	Now func() time.Time
	// DialOptions are appended to the client's (tests, keepalives).
	DialOptions []grpc.DialOption
	// ClusterID, if set, is sent as the "ClusterID" request header, as
	// Istio's ztunnel sends it: Istio's CA picks the cluster whose API
	// server authenticates the token, and whose pods authorize
	// ImpersonatedIdentity, by it (without it, impersonation is refused).
	ClusterID string
}

// CAClient is the CertSource that asks istiod (or any Istio-compatible CA)
// over gRPC: for each Fetch it makes a new ECDSA P-256 key and a CSR whose
// only URI SAN is the identity, and checks the returned chain before handing
// it out. Safe for concurrent use; Close releases the connection.
type CAClient struct {
	addr   string
	conn   *grpc.ClientConn
	client pb.IstioCertificateServiceClient
	ttl    time.Duration
	now    func() time.Time
}

var _ CertSource = (*CAClient)(nil)

// ServerTrust resolves how a client verifies istiod's serving certificate:
// the roots (pool, else the PEM file, which is required then) and the
// server name (name, else the host of addr). The CA and xDS clients share it.
func ServerTrust(pool *x509.CertPool, file, name, addr string) (*x509.CertPool, string, error) {
	roots := pool
	if roots == nil {
		if file == "" {
			return nil, "", errors.New("no root certificate file configured to verify istiod's serving certificate")
		}
		pemBytes, err := os.ReadFile(file)
		if err != nil {
			return nil, "", fmt.Errorf("reading istiod's root certificate: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			return nil, "", fmt.Errorf("%s holds no PEM certificate", file)
		}
	}
	if name == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, "", fmt.Errorf("address %q is not host:port: %w", addr, err)
		}
		name = host
	}
	return roots, name, nil
}

// NewCAClient prepares a client; it connects lazily, on the first Fetch.
func NewCAClient(opts CAClientOptions) (*CAClient, error) {
	if opts.Address == "" {
		return nil, errors.New("CA client: no CA address configured")
	}
	if opts.Token == nil {
		return nil, errors.New("CA client: no token source configured (the CA authenticates ztunnel by bearer token)")
	}
	roots, serverName, err := ServerTrust(opts.RootCAs, opts.RootCAFile, opts.ServerName, opts.Address)
	if err != nil {
		return nil, fmt.Errorf("CA client: %w", err)
	}
	ttl := opts.CertTTL
	if ttl == 0 {
		ttl = DefaultCertTTL
	}
	if ttl < time.Second {
		return nil, fmt.Errorf("CA client: certificate TTL %v is below one second", ttl)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	tlsConf := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithPerRPCCredentials(bearer{token: opts.Token, clusterID: opts.ClusterID}),
	}, opts.DialOptions...)
	conn, err := grpc.NewClient(opts.Address, dial...)
	if err != nil {
		return nil, fmt.Errorf("CA client: %w", err)
	}
	return &CAClient{addr: opts.Address, conn: conn, client: pb.NewIstioCertificateServiceClient(conn), ttl: ttl, now: now}, nil
}

// Close closes the connection to the CA.
func (c *CAClient) Close() error { return c.conn.Close() }

// Fetch obtains a new key and certificate for id from the CA.
func (c *CAClient) Fetch(ctx context.Context, id spiffe.ID) (*Issued, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("requesting certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key for %s: %w", id, err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("creating CSR for %s: %w", id, err)
	}
	md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: id.String()})
	if err != nil {
		return nil, fmt.Errorf("building request metadata for %s: %w", id, err)
	}
	resp, err := c.client.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		ValidityDuration: int64(c.ttl / time.Second),
		Metadata:         md,
	})
	if err != nil {
		return nil, fmt.Errorf("requesting certificate for %s from CA %s: %w", id, c.addr, err)
	}
	chain, err := VerifyIssued(id, key.Public(), resp.GetCertChain(), c.now())
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", c.addr, err)
	}
	return &Issued{Key: key, Chain: chain}, nil
}

// VerifyIssued parses a CA's PEM chain (leaf first, root last; an element
// may hold several certificates) and checks it is fit to present as id with
// the key whose public half is pub, at time now: the leaf's only URI SAN is
// id, its key is pub, it is usable for TLS client and server auth, and the
// chain verifies to its last certificate, a CA, with every certificate valid
// at now. Errors wrap ErrBadResponse and name id.
func VerifyIssued(id spiffe.ID, pub crypto.PublicKey, pemChain []string, now time.Time) ([]*x509.Certificate, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w for %s: %s", ErrBadResponse, id, fmt.Sprintf(format, args...))
	}
	var chain []*x509.Certificate
	for i, s := range pemChain {
		rest := []byte(s)
		n := 0
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				return nil, bad("cert_chain[%d] holds a PEM block of type %q", i, block.Type)
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, bad("cert_chain[%d] does not parse: %v", i, err)
			}
			chain = append(chain, cert)
			n++
		}
		if n == 0 || strings.TrimSpace(string(rest)) != "" {
			return nil, bad("cert_chain[%d] is not a PEM certificate", i)
		}
	}
	if len(chain) == 0 {
		return nil, bad("the certificate chain is empty")
	}
	if len(chain) < 2 {
		return nil, bad("the chain has only the leaf; it must end with the root")
	}
	leaf, root := chain[0], chain[len(chain)-1]
	got, err := spiffe.FromCertificate(leaf)
	if err != nil {
		return nil, bad("the leaf's identity: %v", err)
	}
	if got != id {
		return nil, bad("the leaf is for %s", got)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if k, ok := pub.(equaler); !ok || !k.Equal(leaf.PublicKey) {
		return nil, bad("the leaf certifies a different public key than the one in our CSR")
	}
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) &&
		!(slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) && slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth)) {
		return nil, bad("the leaf is not valid for both TLS client and server authentication (HBONE needs both)")
	}
	if !root.IsCA {
		return nil, bad("the last certificate of the chain (%q) is not a CA", root.Subject)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range chain[1 : len(chain)-1] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, bad("the chain does not verify to its root: %v", err)
	}
	// Verify may build a chain that skips a listed certificate; each one
	// must be in its validity period anyway.
	for i, c := range chain {
		if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
			return nil, bad("cert_chain certificate %d (%q) is valid only from %s to %s", i, c.Subject,
				c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return chain, nil
}

// bearer sends "authorization: Bearer <token>" (and "ClusterID" when set)
// on every RPC, over TLS only.
type bearer struct {
	token     TokenFunc
	clusterID string
}

// ClusterIDHeader is the request header carrying ztunnel's cluster ID, as
// Istio's ztunnel sends it.
const ClusterIDHeader = "ClusterID"

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := b.token(ctx)
	if err != nil {
		return nil, err
	}
	md := map[string]string{"authorization": "Bearer " + tok}
	if b.clusterID != "" {
		md[ClusterIDHeader] = b.clusterID
	}
	return md, nil
}

func (bearer) RequireTransportSecurity() bool { return true }
