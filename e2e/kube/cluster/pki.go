package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the set of files one cluster's processes read, all under dir.
type pki struct {
	caCert, caKey         string // cluster CA: signs serving and client certs
	servingCert, servKey  string // kube-apiserver serving cert
	adminCert, adminKey   string // client cert, group system:masters
	kcmCert, kcmKey       string // client cert, user system:kube-controller-manager
	schedCert, schedKey   string // client cert, user system:kube-scheduler
	kubeletCert           string // kube-apiserver's client cert for kubelets (system:masters)
	kubeletKey            string
	saKey, saPub          string // service-account token signing key pair (RSA)
	caPEM                 []byte
	adminCertPEM, adminKP []byte

	ca        *x509.Certificate // signs the leaves, also after makePKI (IssueClientCert)
	caSig     crypto.Signer
	notBefore time.Time
}

// certValidity bounds every certificate; clusters live for one test run.
const certValidity = 7 * 24 * time.Hour

func writePEM(path, typ string, der []byte, mode os.FileMode) ([]byte, error) {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, mode); err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return b, nil
}

func writeKey(path string, key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding key %s: %w", path, err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// makePKI writes a CA, the API server's serving certificate, the admin and
// controller-manager client certificates and the service-account key pair.
func makePKI(dir string) (*pki, error) {
	p := &pki{
		caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"), servKey: filepath.Join(dir, "apiserver.key"),
		adminCert: filepath.Join(dir, "admin.crt"), adminKey: filepath.Join(dir, "admin.key"),
		kcmCert: filepath.Join(dir, "kcm.crt"), kcmKey: filepath.Join(dir, "kcm.key"),
		schedCert: filepath.Join(dir, "scheduler.crt"), schedKey: filepath.Join(dir, "scheduler.key"),
		kubeletCert: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		kubeletKey:  filepath.Join(dir, "apiserver-kubelet-client.key"),
		saKey:       filepath.Join(dir, "sa.key"), saPub: filepath.Join(dir, "sa.pub"),
	}
	now := time.Now().Add(-time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ambit-e2e-kubernetes-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("signing CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if p.caPEM, err = writePEM(p.caCert, "CERTIFICATE", caDER, 0o644); err != nil {
		return nil, err
	}
	if _, err := writeKey(p.caKey, caKey); err != nil {
		return nil, err
	}

	p.ca, p.caSig, p.notBefore = ca, caKey, now
	leaf := p.leaf
	if _, _, err := leaf(p.servingCert, p.servKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)},
	}); err != nil {
		return nil, err
	}
	if p.adminCertPEM, p.adminKP, err = leaf(p.adminCert, p.adminKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "ambit-e2e-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, err
	}
	for _, c := range []struct{ cert, key, user, group string }{
		{p.kcmCert, p.kcmKey, "system:kube-controller-manager", ""},
		{p.schedCert, p.schedKey, "system:kube-scheduler", ""},
		// The API server calls kubelets (logs, exec, port-forward) as a
		// member of system:masters, which kubelets' webhook authorization
		// allows.
		{p.kubeletCert, p.kubeletKey, "kube-apiserver-kubelet-client", "system:masters"},
	} {
		if _, _, err := p.clientCert(c.cert, c.key, c.user, c.group); err != nil {
			return nil, err
		}
	}

	// RSA keeps the tokens RS256, what every JWT consumer (Istio included) accepts.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generating service-account key: %w", err)
	}
	if _, err := writeKey(p.saKey, saKey); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	if _, err := writePEM(p.saPub, "PUBLIC KEY", pubDER, 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

// leaf signs a new P-256 key with the cluster CA and writes the certificate
// (tmpl completed with serial, validity and key usage) and the key.
func (p *pki) leaf(certPath, keyPath string, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key for %s: %w", tmpl.Subject.CommonName, err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, nil, err
	}
	tmpl.NotBefore, tmpl.NotAfter = p.notBefore, p.notBefore.Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caSig)
	if err != nil {
		return nil, nil, fmt.Errorf("signing certificate for %s: %w", tmpl.Subject.CommonName, err)
	}
	if certPEM, err = writePEM(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = writeKey(keyPath, key); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// clientCert writes a client certificate for user, in groups.
func (p *pki) clientCert(certPath, keyPath, user string, groups ...string) (certPEM, keyPEM []byte, err error) {
	var orgs []string
	for _, g := range groups {
		if g != "" {
			orgs = append(orgs, g)
		}
	}
	return p.leaf(certPath, keyPath, &x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}
