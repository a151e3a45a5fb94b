package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// alpnH2 is the only protocol HBONE negotiates.
const alpnH2 = "h2"

// verifyPeer checks the peer's chain against roots for usage and returns its
// SPIFFE ID. It also requires ALPN h2.
func verifyPeer(cs tls.ConnectionState, roots *x509.CertPool, usage x509.ExtKeyUsage) (spiffe.ID, error) {
	if cs.NegotiatedProtocol != alpnH2 {
		return spiffe.ID{}, fmt.Errorf("%w (got %q)", ErrALPN, cs.NegotiatedProtocol)
	}
	certs := cs.PeerCertificates
	if len(certs) == 0 {
		return spiffe.ID{}, ErrNoPeerCertificate
	}
	if roots == nil {
		return spiffe.ID{}, errors.New("no trust bundle to verify the peer against")
	}
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}
	if len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return spiffe.ID{}, fmt.Errorf("verifying peer certificate: %w", err)
	}
	id, err := spiffe.FromCertificate(certs[0])
	if err != nil {
		return spiffe.ID{}, fmt.Errorf("peer certificate: %w", err)
	}
	return id, nil
}

// serverTLSConfig requires TLS 1.3, ALPN h2 and a client certificate chaining
// to the current trust bundle with an ID in trustDomain.
func serverTLSConfig(cfg *ServerConfig) *tls.Config {
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		MaxVersion:                  tls.VersionTLS13,
		NextProtos:                  []string{alpnH2},
		ClientAuth:                  tls.RequireAnyClientCert,
		GetCertificate:              cfg.GetCertificate,
		SessionTicketsDisabled:      true,
		DynamicRecordSizingDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := verifyPeer(cs, cfg.TrustBundle(), x509.ExtKeyUsageClientAuth)
			if err != nil {
				return err
			}
			if id.TrustDomain != cfg.TrustDomain {
				return fmt.Errorf("%w: %s is not in %s", ErrTrustDomain, id, cfg.TrustDomain)
			}
			return nil
		},
	}
}

// clientTLSConfig presents source's certificate, sends no SNI, and accepts
// only a server whose verified ID is dest.
func clientTLSConfig(cfg *PoolConfig, source, dest spiffe.ID) *tls.Config {
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		MaxVersion:                  tls.VersionTLS13,
		NextProtos:                  []string{alpnH2},
		ServerName:                  "",
		InsecureSkipVerify:          true, // the chain and ID are checked in VerifyConnection
		DynamicRecordSizingDisabled: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cfg.ClientCertificate(source)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := verifyPeer(cs, cfg.TrustBundle(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id != dest {
				return &PeerIdentityError{Got: id, Want: dest}
			}
			return nil
		},
	}
}
