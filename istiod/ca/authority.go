package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

const (
	// RootTTL is the validity of a self-signed root made by LoadOrCreate.
	RootTTL = 10 * 365 * 24 * time.Hour
	// ServingCertTTL is the validity of istiod's own serving certificate.
	ServingCertTTL = 24 * time.Hour
	// MaxClockSkew is how far NotBefore is backdated (at most the TTL).
	MaxClockSkew = 5 * time.Minute
)

// Sentinel errors. Errors from LoadOrCreate wrap one of them.
var (
	// ErrInvalidCA means the configured CA files are unusable.
	ErrInvalidCA = errors.New("invalid CA")
	// ErrPartialState means the state directory holds some but not all of a
	// persisted CA; it is never overwritten.
	ErrPartialState = errors.New("partial CA state")
	// ErrExpired means the signing certificate is no longer (or not yet) valid.
	ErrExpired = errors.New("CA certificate not valid now")
)

// Options says where the CA comes from.
type Options struct {
	// TrustDomain is the SPIFFE trust domain issued identities must be in.
	TrustDomain string
	// CADir holds Istio's cacerts files. When it holds any of them,
	// RootStore and StateDir are not used.
	CADir string
	// RootStore keeps the self-signed root when CADir is empty or holds
	// no cacerts files; it wins over StateDir.
	RootStore RootStore
	// StateDir holds the self-signed root when CADir is empty and no
	// RootStore is given; created 0700 if missing.
	StateDir string
	// Logger receives one line when a root is created or loaded; nil
	// discards.
	Logger *slog.Logger
}

// Material is a signing certificate with its key and chain, for NewAuthority.
type Material struct {
	// Cert signs the leaves; it must be a CA matching Key.
	Cert *x509.Certificate
	Key  crypto.Signer
	// Chain holds certificates between Cert and a root, in any order; it may
	// include Cert and the root too.
	Chain []*x509.Certificate
	// Roots are the trust anchors published to workloads; empty means Cert
	// is a self-signed root.
	Roots []*x509.Certificate
}

// Authority signs leaf certificates. It is immutable after construction and
// safe for concurrent use.
type Authority struct {
	trustDomain string
	signer      *x509.Certificate
	key         crypto.Signer
	// chain is [signer, intermediates..., root] as verified; the root is the
	// last element (chain has one element when signer is the root).
	chain    []*x509.Certificate
	roots    []*x509.Certificate
	rootsPEM []byte
	notAfter time.Time // min NotAfter over chain
	now      func() time.Time
}

// NewAuthority builds an Authority from in-memory material, after the same
// checks as LoadOrCreate: key matches, Cert is an unexpired CA, and the chain
// verifies to one of Roots.
func NewAuthority(trustDomain string, m Material) (*Authority, error) {
	if err := spiffe.ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	return newAuthority(trustDomain, m, time.Now)
}

// NewSelfSigned returns an Authority with a new in-memory root for the trust
// domain, as LoadOrCreate would make, without persisting it: for tests and
// demos.
func NewSelfSigned(trustDomain string) (*Authority, error) {
	if err := spiffe.ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	cert, key, err := newRoot(trustDomain, time.Now())
	if err != nil {
		return nil, err
	}
	return newAuthority(trustDomain, Material{Cert: cert, Key: key}, time.Now)
}

func newAuthority(td string, m Material, now func() time.Time) (*Authority, error) {
	if m.Cert == nil || m.Key == nil {
		return nil, fmt.Errorf("%w: no signing certificate or key", ErrInvalidCA)
	}
	if err := checkKeyMatches(m.Cert, m.Key); err != nil {
		return nil, err
	}
	if err := checkIsCA(m.Cert); err != nil {
		return nil, err
	}
	t := now()
	if t.Before(m.Cert.NotBefore.Add(-MaxClockSkew)) || t.After(m.Cert.NotAfter) {
		return nil, fmt.Errorf("%w: signing certificate %q is valid from %s to %s, not now (%s); install a current one",
			ErrExpired, m.Cert.Subject, m.Cert.NotBefore.UTC().Format(time.RFC3339), m.Cert.NotAfter.UTC().Format(time.RFC3339), t.UTC().Format(time.RFC3339))
	}
	roots := m.Roots
	if len(roots) == 0 {
		if !isSelfSigned(m.Cert) {
			return nil, fmt.Errorf("%w: signing certificate %q is not self-signed and no root was given; provide the root certificate", ErrInvalidCA, m.Cert.Subject)
		}
		roots = []*x509.Certificate{m.Cert}
	}
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range m.Chain {
		inter.AddCert(c)
	}
	chains, err := m.Cert.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: inter,
		CurrentTime:   t,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: signing certificate %q does not verify to the root: %v; the chain must lead from the signing certificate to a root", ErrInvalidCA, m.Cert.Subject, err)
	}
	chain := chains[0]
	a := &Authority{
		trustDomain: td,
		signer:      m.Cert,
		key:         m.Key,
		chain:       chain,
		roots:       roots,
		notAfter:    m.Cert.NotAfter,
		now:         now,
	}
	for _, c := range chain {
		if c.NotAfter.Before(a.notAfter) {
			a.notAfter = c.NotAfter
		}
	}
	for _, r := range roots {
		a.rootsPEM = append(a.rootsPEM, pemCert(r)...)
	}
	return a, nil
}

// TrustDomain returns the trust domain this CA issues identities in.
func (a *Authority) TrustDomain() string { return a.trustDomain }

// Roots returns the trust anchors (a copy of the slice; do not modify the
// certificates).
func (a *Authority) Roots() []*x509.Certificate { return append([]*x509.Certificate(nil), a.roots...) }

// RootPool returns a new pool holding the trust anchors.
func (a *Authority) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range a.roots {
		p.AddCert(r)
	}
	return p
}

// RootsPEM returns the trust bundle, concatenated PEM certificates, to
// publish to workloads. The caller must not modify it.
func (a *Authority) RootsPEM() []byte { return a.rootsPEM }

// SigningCert returns the certificate that signs leaves.
func (a *Authority) SigningCert() *x509.Certificate { return a.signer }

// NotAfter returns the end of the chain's validity; no leaf outlives it.
func (a *Authority) NotAfter() time.Time { return a.notAfter }

// Issue signs a workload leaf for id with pub, valid for ttl (backdated by
// min(ttl, MaxClockSkew), ending no later than NotAfter). It does no
// authorization: the caller must have checked that id may be issued. It
// returns [leaf, intermediates..., root].
func (a *Authority) Issue(pub crypto.PublicKey, id spiffe.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if id.TrustDomain != a.trustDomain {
		return nil, fmt.Errorf("identity %s is not in trust domain %q", id, a.trustDomain)
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	return a.sign(&x509.Certificate{
		KeyUsage:    ku,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id.URL()},
	}, pub, ttl)
}

func (a *Authority) sign(tmpl *x509.Certificate, pub crypto.PublicKey, ttl time.Duration) ([]*x509.Certificate, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("certificate lifetime %s is not positive", ttl)
	}
	now := a.now()
	if !now.Before(a.notAfter) {
		return nil, fmt.Errorf("%w: CA chain expired at %s; install a new CA certificate", ErrExpired, a.notAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-min(ttl, MaxClockSkew))
	tmpl.NotAfter = now.Add(ttl)
	if tmpl.NotAfter.After(a.notAfter) {
		tmpl.NotAfter = a.notAfter
	}
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = false
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.signer, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing issued certificate: %w", err)
	}
	return append([]*x509.Certificate{leaf}, a.chain...), nil
}

// ServingCertificate issues istiod's own TLS serving certificate: a new
// ECDSA P-256 key, the given DNS and IP SANs, server auth, valid for
// ServingCertTTL. The returned chain excludes the root.
func (a *Authority) ServingCertificate(dnsNames []string, ips []net.IP) (*tls.Certificate, error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, errors.New("serving certificate needs at least one DNS name or IP address")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	chain, err := a.sign(&x509.Certificate{
		Subject:     pkix.Name{Organization: []string{a.trustDomain}, CommonName: firstNonEmpty(dnsNames)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    dnsNames,
		IPAddresses: ips,
	}, &key.PublicKey, ServingCertTTL)
	if err != nil {
		return nil, fmt.Errorf("issuing serving certificate: %w", err)
	}
	out := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain[:len(chain)-1] {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out, nil
}

// ServingTLSConfig returns a server TLS config whose certificate comes from
// ServingCertificate and is reissued once two thirds of its life has passed.
// It fails if the first certificate cannot be issued.
func (a *Authority) ServingTLSConfig(dnsNames []string, ips []net.IP) (*tls.Config, error) {
	r := &servingRotator{a: a, dns: dnsNames, ips: ips}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.get()
		},
	}, nil
}

type servingRotator struct {
	a   *Authority
	dns []string
	ips []net.IP

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

func (r *servingRotator) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.a.now()
	if r.cert != nil && now.Before(r.renewAt) {
		return r.cert, nil
	}
	c, err := r.a.ServingCertificate(r.dns, r.ips)
	if err != nil {
		if r.cert != nil && now.Before(r.cert.Leaf.NotAfter) {
			return r.cert, nil // keep serving the old one while it is valid
		}
		return nil, err
	}
	r.cert = c
	r.renewAt = c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) * 2 / 3)
	return c, nil
}

func firstNonEmpty(s []string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func newRoot(td string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{td}, CommonName: "Ambit root CA"},
		NotBefore:             now.Add(-MaxClockSkew),
		NotAfter:              now.Add(RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signing root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func checkKeyMatches(cert *x509.Certificate, key crypto.Signer) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("%w: private key does not match the certificate %q", ErrInvalidCA, cert.Subject)
	}
	return nil
}

func checkIsCA(cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return fmt.Errorf("%w: certificate %q is not a CA (basic constraints CA:TRUE missing); use a CA certificate", ErrInvalidCA, cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: certificate %q lacks the keyCertSign key usage; use a CA certificate that may sign certificates", ErrInvalidCA, cert.Subject)
	}
	return nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
