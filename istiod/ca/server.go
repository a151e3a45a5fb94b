package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

const (
	// DefaultCertTTL is the leaf lifetime when a request names none.
	DefaultCertTTL = 24 * time.Hour
	// DefaultMaxCertTTL is the longest lifetime a request may ask for.
	DefaultMaxCertTTL = 48 * time.Hour
	// MinRSABits is the smallest RSA key accepted in a CSR.
	MinRSABits = 2048
	// ImpersonatedIdentityKey is the request metadata field in which Istio's
	// ztunnel names the SPIFFE ID it asks for on behalf of a pod.
	ImpersonatedIdentityKey = "ImpersonatedIdentity"
	// shutdownGrace bounds the graceful stop in Serve.
	shutdownGrace = 10 * time.Second
)

// ServerOptions tunes the CreateCertificate service.
type ServerOptions struct {
	// DefaultTTL is used when the request's validity_duration is 0;
	// 0 means DefaultCertTTL.
	DefaultTTL time.Duration
	// MaxTTL refuses (does not clamp) longer requests; 0 means
	// DefaultMaxCertTTL. Must be >= DefaultTTL.
	MaxTTL time.Duration
	// Logger receives one line per issued certificate and per refusal; nil
	// discards.
	Logger *slog.Logger
}

// Server implements istio.v1.auth.IstioCertificateService. Safe for
// concurrent use.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer

	auth   *Authority
	authn  Authenticator
	defTTL time.Duration
	maxTTL time.Duration
	log    *slog.Logger
}

var _ pb.IstioCertificateServiceServer = (*Server)(nil)

// NewServer returns the certificate service signing with auth and
// authenticating callers with authn.
func NewServer(auth *Authority, authn Authenticator, opts ServerOptions) (*Server, error) {
	if auth == nil || authn == nil {
		return nil, errors.New("ca.NewServer: nil Authority or Authenticator")
	}
	s := &Server{auth: auth, authn: authn, defTTL: opts.DefaultTTL, maxTTL: opts.MaxTTL, log: opts.Logger}
	if s.defTTL == 0 {
		s.defTTL = DefaultCertTTL
	}
	if s.maxTTL == 0 {
		s.maxTTL = DefaultMaxCertTTL
	}
	if s.defTTL < 0 || s.maxTTL < 0 {
		return nil, fmt.Errorf("certificate TTLs must be positive (default %s, max %s)", s.defTTL, s.maxTTL)
	}
	if s.defTTL > s.maxTTL {
		return nil, fmt.Errorf("default certificate TTL %s exceeds the maximum %s; lower the default or raise the maximum", s.defTTL, s.maxTTL)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Register adds the service to gs. Call before gs.Serve.
func (s *Server) Register(gs *grpc.Server) { pb.RegisterIstioCertificateServiceServer(gs, s) }

// Serve runs a gRPC server with TLS from tlsConf and this service on lis
// until ctx is cancelled, then stops gracefully (in-flight calls finish,
// within a bound) and returns nil. It returns early with the error if
// serving fails. It closes lis.
func (s *Server) Serve(ctx context.Context, lis net.Listener, tlsConf *tls.Config) error {
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)))
	s.Register(gs)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving certificates on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	t := time.NewTimer(shutdownGrace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// refusal is a request error with its gRPC code.
type refusal struct {
	code codes.Code
	msg  string
}

func refuse(code codes.Code, format string, args ...any) *refusal {
	return &refusal{code: code, msg: fmt.Sprintf(format, args...)}
}

// CreateCertificate authenticates the caller, validates the CSR, authorizes
// the identity and issues a leaf. The response chain is [leaf,
// intermediates..., root].
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	callerName := "unauthenticated"
	var requested string
	fail := func(r *refusal) error {
		attrs := []any{"caller", callerName, "identity", requested, "code", r.code.String(), "reason", r.msg}
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			attrs = append(attrs, "peer", p.Addr.String())
		}
		s.log.Warn("refused certificate request", attrs...)
		return status.Error(r.code, r.msg)
	}

	caller, err := s.authn.Authenticate(ctx)
	if err != nil {
		if errors.Is(err, ErrUnauthenticated) {
			return nil, fail(refuse(codes.Unauthenticated, "%v", err))
		}
		return nil, fail(refuse(codes.Unavailable, "authenticating caller: %v", err))
	}
	callerName = caller.Name()

	csr, id, r := s.parseCSR(req.GetCsr())
	if !id.IsZero() {
		requested = id.String()
	}
	if r != nil {
		return nil, fail(r)
	}
	if r := checkImpersonated(req, id); r != nil {
		return nil, fail(r)
	}
	ttl, r := s.ttl(req.GetValidityDuration())
	if r != nil {
		return nil, fail(r)
	}
	if err := caller.Authorize(ctx, id); err != nil {
		if errors.Is(err, ErrPermissionDenied) {
			return nil, fail(refuse(codes.PermissionDenied, "%v", err))
		}
		return nil, fail(refuse(codes.Unavailable, "authorizing caller %q for %s: %v", callerName, id, err))
	}
	chain, err := s.auth.Issue(csr.PublicKey, id, ttl)
	if err != nil {
		return nil, fail(refuse(codes.Unavailable, "issuing certificate for %s: %v", id, err))
	}
	out := &pb.IstioCertificateResponse{CertChain: make([]string, len(chain))}
	for i, c := range chain {
		out.CertChain[i] = string(pemCert(c))
	}
	leaf := chain[0]
	s.log.Info("issued certificate", "caller", callerName, "identity", requested,
		"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	return out, nil
}

// parseCSR checks the PEM CSR and returns it with its one SPIFFE ID. id is
// set whenever it could be read, even when r is not nil.
func (s *Server) parseCSR(csrPEM string) (csr *x509.CertificateRequest, id spiffe.ID, r *refusal) {
	if strings.TrimSpace(csrPEM) == "" {
		return nil, id, refuse(codes.InvalidArgument, "field csr is empty; send a PEM \"CERTIFICATE REQUEST\"")
	}
	block, rest := pem.Decode([]byte(csrPEM))
	if block == nil {
		return nil, id, refuse(codes.InvalidArgument, "field csr is not PEM; send a PEM \"CERTIFICATE REQUEST\"")
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, id, refuse(codes.InvalidArgument, "field csr holds a PEM block of type %q; send a PEM \"CERTIFICATE REQUEST\"", block.Type)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, id, refuse(codes.InvalidArgument, "field csr has data after the CERTIFICATE REQUEST block; send exactly one CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, id, refuse(codes.InvalidArgument, "field csr does not parse as a PKCS#10 request: %v", err)
	}
	if len(csr.URIs) == 1 {
		// Read the ID early so refusals below can be logged with it.
		if pid, err := spiffe.FromURIs(csr.URIs); err == nil {
			id = pid
		}
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, id, refuse(codes.InvalidArgument, "field csr: signature does not verify (%v); sign the CSR with the key it carries", err)
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, id, refuse(codes.InvalidArgument, "field csr: ECDSA curve %s is not supported; use P-256 or P-384", pub.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < MinRSABits {
			return nil, id, refuse(codes.InvalidArgument, "field csr: RSA key of %d bits is too weak; use at least %d bits or ECDSA P-256", bits, MinRSABits)
		}
	default:
		return nil, id, refuse(codes.InvalidArgument, "field csr: key type %T is not supported; use ECDSA P-256 (or P-384, or RSA >= %d bits)", csr.PublicKey, MinRSABits)
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return nil, id, refuse(codes.InvalidArgument, "field csr has DNS, IP or email SANs (%d); a workload CSR must carry only its SPIFFE ID as a URI SAN", n)
	}
	if len(csr.URIs) != 1 {
		return nil, id, refuse(codes.InvalidArgument, "field csr has %d URI SANs; it must have exactly one, the SPIFFE ID spiffe://%s/ns/<namespace>/sa/<service-account>", len(csr.URIs), s.auth.trustDomain)
	}
	pid, err := spiffe.FromURIs(csr.URIs)
	if err != nil {
		return nil, id, refuse(codes.InvalidArgument, "field csr: URI SAN %q is not a SPIFFE workload ID: %v", csr.URIs[0].String(), err)
	}
	id = pid
	if id.TrustDomain != s.auth.trustDomain {
		return nil, id, refuse(codes.InvalidArgument, "field csr: URI SAN %s is in trust domain %q, but this CA issues for %q; request an ID in %q", id, id.TrustDomain, s.auth.trustDomain, s.auth.trustDomain)
	}
	return csr, id, nil
}

// checkImpersonated enforces that metadata.ImpersonatedIdentity, when sent,
// names the CSR's identity.
func checkImpersonated(req *pb.IstioCertificateRequest, id spiffe.ID) *refusal {
	f, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]
	if !ok {
		return nil
	}
	v := f.GetStringValue()
	if v != id.String() {
		return refuse(codes.InvalidArgument, "field metadata.%s is %q but the CSR's URI SAN is %s; they must be the same identity", ImpersonatedIdentityKey, v, id)
	}
	return nil
}

func (s *Server) ttl(seconds int64) (time.Duration, *refusal) {
	switch {
	case seconds < 0:
		return 0, refuse(codes.InvalidArgument, "field validity_duration is %d seconds; it must be 0 (default %s) or positive", seconds, s.defTTL)
	case seconds == 0:
		return s.defTTL, nil
	case seconds > int64(s.maxTTL/time.Second):
		return 0, refuse(codes.InvalidArgument, "field validity_duration %d seconds exceeds the maximum of %d seconds (%s); ask for less", seconds, int64(s.maxTTL/time.Second), s.maxTTL)
	}
	return time.Duration(seconds) * time.Second, nil
}
