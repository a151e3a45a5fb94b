package spiffe

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Scheme is the URI scheme of every SPIFFE ID.
const Scheme = "spiffe"

// ErrInvalid is wrapped by every parse or validation error.
var ErrInvalid = errors.New("invalid SPIFFE ID")

// ID is a workload identity in Istio's form. The zero value is not valid.
type ID struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// New returns the ID for a service account, validated.
func New(trustDomain, namespace, serviceAccount string) (ID, error) {
	id := ID{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: serviceAccount}
	return id, id.Validate()
}

// String formats the ID as spiffe://<td>/ns/<ns>/sa/<sa>.
func (id ID) String() string {
	return Scheme + "://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns the ID as a URL, as it stands in a certificate's URI SAN.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: Scheme, Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// Validate checks every part of the ID.
func (id ID) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if err := validateLabel("namespace", id.Namespace, 63); err != nil {
		return err
	}
	return validateLabel("service account", id.ServiceAccount, 253)
}

// ValidateTrustDomain checks a trust domain: lowercase letters, digits, '.', '-'
// and '_', at most 255 characters, as the SPIFFE specification allows.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return fmt.Errorf("%w: empty trust domain (set one such as cluster.local)", ErrInvalid)
	}
	if len(td) > 255 {
		return fmt.Errorf("%w: trust domain %q is longer than 255 characters", ErrInvalid, td)
	}
	for _, c := range td {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: trust domain %q has character %q; use lowercase letters, digits, '.', '-', '_'", ErrInvalid, td, c)
		}
	}
	return nil
}

// validateLabel checks a Kubernetes name: lowercase alphanumerics, '-' and
// '.', starting and ending alphanumeric.
func validateLabel(what, v string, max int) error {
	if v == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if len(v) > max {
		return fmt.Errorf("%w: %s %q is longer than %d characters", ErrInvalid, what, v, max)
	}
	for i, c := range v {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if alnum {
			continue
		}
		if (c == '-' || c == '.') && i > 0 && i < len(v)-1 {
			continue
		}
		return fmt.Errorf("%w: %s %q is not a Kubernetes name (lowercase letters, digits, '-' and '.', alphanumeric at both ends)", ErrInvalid, what, v)
	}
	return nil
}

// Parse parses and validates spiffe://<td>/ns/<ns>/sa/<sa>. Anything else,
// including query strings, fragments, ports, user info, percent-encoding and
// extra path segments, is rejected.
func Parse(s string) (ID, error) {
	rest, ok := strings.CutPrefix(s, Scheme+"://")
	if !ok {
		return ID{}, fmt.Errorf("%w: %q does not start with spiffe://", ErrInvalid, s)
	}
	if strings.ContainsAny(rest, "?#%@:") {
		return ID{}, fmt.Errorf("%w: %q contains one of ?#%%@: (no query, fragment, encoding, user or port allowed)", ErrInvalid, s)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ID{}, fmt.Errorf("%w: %q has no path; want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", ErrInvalid, s)
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return ID{}, fmt.Errorf("%w: path of %q is not /ns/<namespace>/sa/<service-account>", ErrInvalid, s)
	}
	id := ID{TrustDomain: td, Namespace: parts[1], ServiceAccount: parts[3]}
	if err := id.Validate(); err != nil {
		return ID{}, fmt.Errorf("parsing %q: %w", s, err)
	}
	return id, nil
}

// FromURIs returns the one SPIFFE ID among a certificate's or CSR's URI SANs.
// It fails when there is none, more than one URI SAN, or the one is invalid.
func FromURIs(uris []*url.URL) (ID, error) {
	if len(uris) != 1 {
		return ID{}, fmt.Errorf("%w: want exactly one URI SAN, found %d", ErrInvalid, len(uris))
	}
	return Parse(uris[0].String())
}

// FromCertificate returns the SPIFFE ID of a (verified) certificate.
func FromCertificate(cert *x509.Certificate) (ID, error) {
	return FromURIs(cert.URIs)
}
