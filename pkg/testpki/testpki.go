// Package testpki makes throw-away certificate authorities and SPIFFE leaf
// certificates for tests: valid, expired, or from another trust domain. Only
// tests import it; production certificates come from istiod/ca.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// CA is a self-signed root for one trust domain.
type CA struct {
	TrustDomain string
	Cert        *x509.Certificate
	Key         *ecdsa.PrivateKey
}

// NewCA makes a root valid from an hour ago for a day.
func NewCA(t testing.TB, trustDomain string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "testpki root " + trustDomain},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{TrustDomain: trustDomain, Cert: cert, Key: key}
}

// Pool returns a cert pool holding only this root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// LeafOption changes a leaf template before signing.
type LeafOption func(*x509.Certificate)

// Expired makes the leaf's validity end an hour ago.
func Expired() LeafOption {
	return func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(-2 * time.Hour)
		c.NotAfter = time.Now().Add(-time.Hour)
	}
}

// Validity sets the leaf's validity window.
func Validity(notBefore, notAfter time.Time) LeafOption {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// IPs adds IP SANs (for servers that are not addressed by SPIFFE ID).
func IPs(ips ...net.IP) LeafOption {
	return func(c *x509.Certificate) { c.IPAddresses = append(c.IPAddresses, ips...) }
}

// Leaf issues a certificate for a workload in ns/sa of this CA's trust
// domain, usable for both client and server auth.
func (ca *CA) Leaf(t testing.TB, ns, sa string, opts ...LeafOption) tls.Certificate {
	t.Helper()
	id, err := spiffe.New(ca.TrustDomain, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return ca.LeafFor(t, id, opts...)
}

// LeafFor issues a certificate whose only URI SAN is id (which may name
// another trust domain than the CA's, to test that peers reject it).
func (ca *CA) LeafFor(t testing.TB, id spiffe.ID, opts ...LeafOption) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         nil,
	}
	tmpl.URIs = append(tmpl.URIs, id.URL())
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
