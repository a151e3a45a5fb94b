package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// File names of Istio's cacerts layout; the state directory uses the first two.
const (
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	CertChainFile = "cert-chain.pem"
	RootCertFile  = "root-cert.pem"
)

// LoadOrCreate is LoadOrCreateContext with a background context.
func LoadOrCreate(opts Options) (*Authority, error) {
	return LoadOrCreateContext(context.Background(), opts)
}

// LoadOrCreateContext returns the Authority from the cacerts files in
// opts.CADir; or, when CADir is empty or holds none of those files (an
// optional Kubernetes Secret that is absent mounts as an empty directory),
// the self-signed root kept in opts.RootStore, else in opts.StateDir,
// creating and storing it there if none is kept. It never overwrites or
// regenerates an existing root. ctx bounds the RootStore's calls. It logs
// one line saying which root is used.
func LoadOrCreateContext(ctx context.Context, opts Options) (*Authority, error) {
	if err := spiffe.ValidateTrustDomain(opts.TrustDomain); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CADir != "" {
		empty, err := caDirEmpty(opts.CADir)
		if err != nil {
			return nil, fmt.Errorf("loading CA from %s: %w", opts.CADir, err)
		}
		if !empty {
			a, err := loadCADir(opts.TrustDomain, opts.CADir, time.Now)
			if err != nil {
				return nil, fmt.Errorf("loading CA from %s: %w", opts.CADir, err)
			}
			log.Info("using the CA from cacerts files", "dir", opts.CADir, "subject", a.signer.Subject.String(), "not_after", a.notAfter)
			return a, nil
		}
		if opts.RootStore == nil && opts.StateDir == "" {
			return nil, fmt.Errorf("loading CA from %s: %w: the directory holds none of the cacerts files (%s, %s) and no self-signed root is kept elsewhere; put the cacerts files there, or give a state directory or a CA Secret for a self-signed root",
				opts.CADir, ErrInvalidCA, CACertFile, CAKeyFile)
		}
		log.Info("CA directory holds no cacerts files; using the self-signed root", "dir", opts.CADir)
	}
	switch {
	case opts.RootStore != nil:
		a, created, err := loadOrCreateStore(ctx, opts.TrustDomain, opts.RootStore, time.Now)
		if err != nil {
			return nil, fmt.Errorf("self-signed CA in %s: %w", opts.RootStore, err)
		}
		if created {
			log.Info("created self-signed root CA", "store", opts.RootStore.String(), "trust_domain", opts.TrustDomain, "not_after", a.notAfter)
		} else {
			log.Info("using the self-signed root CA", "store", opts.RootStore.String(), "subject", a.signer.Subject.String(), "not_after", a.notAfter)
		}
		return a, nil
	case opts.StateDir != "":
		a, created, err := loadOrCreateState(opts.TrustDomain, opts.StateDir, time.Now)
		if err != nil {
			return nil, fmt.Errorf("loading self-signed CA from %s: %w", opts.StateDir, err)
		}
		if created {
			log.Info("created self-signed root CA", "dir", opts.StateDir, "trust_domain", opts.TrustDomain, "not_after", a.notAfter)
		} else {
			log.Info("using the self-signed root CA", "dir", opts.StateDir, "subject", a.signer.Subject.String(), "not_after", a.notAfter)
		}
		return a, nil
	default:
		return nil, fmt.Errorf("%w: neither a CA directory (Istio cacerts files) nor a store for a self-signed root (state directory or CA Secret) was given", ErrInvalidCA)
	}
}

// caDirEmpty reports whether dir holds none of the cacerts files. A
// missing dir is an error (a mistyped path must not silently mean "no
// cacerts"); Kubernetes' hidden "..data" entries of a Secret volume are
// ignored, and the files may be symlinks into them.
func caDirEmpty(dir string) (bool, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return false, fmt.Errorf("%w: %v; create the directory (or mount the cacerts Secret there) or drop the CA directory setting", ErrInvalidCA, err)
	}
	if !st.IsDir() {
		return false, fmt.Errorf("%w: %s is not a directory", ErrInvalidCA, dir)
	}
	for _, f := range []string{CACertFile, CAKeyFile, CertChainFile, RootCertFile} {
		ok, err := exists(filepath.Join(dir, f))
		if err != nil {
			return false, err
		}
		if ok {
			return false, nil
		}
	}
	return true, nil
}

func loadCADir(td, dir string, now func() time.Time) (*Authority, error) {
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)
	certs, err := readCerts(certPath, true)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%w: %s holds %d certificates; put only the signing certificate there and the others in %s", ErrInvalidCA, certPath, len(certs), CertChainFile)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	m := Material{Cert: certs[0], Key: key}
	if err := checkKeyMatches(m.Cert, m.Key); err != nil {
		return nil, fmt.Errorf("%s and %s: %w; put the key of %s in %s", keyPath, certPath, err, CACertFile, CAKeyFile)
	}
	if err := checkIsCA(m.Cert); err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	chainPath := filepath.Join(dir, CertChainFile)
	if m.Chain, err = readCerts(chainPath, false); err != nil {
		return nil, err
	}
	rootPath := filepath.Join(dir, RootCertFile)
	if m.Roots, err = readCerts(rootPath, false); err != nil {
		return nil, err
	}
	for _, r := range m.Roots {
		if !r.IsCA || !isSelfSigned(r) {
			return nil, fmt.Errorf("%w: %s holds %q, which is not a self-signed CA certificate; put only root certificates there", ErrInvalidCA, rootPath, r.Subject)
		}
	}
	if len(m.Roots) == 0 {
		// Without root-cert.pem, the root is ca-cert itself or the last
		// self-signed certificate of cert-chain.pem.
		candidates := append([]*x509.Certificate{m.Cert}, m.Chain...)
		for _, c := range slices.Backward(candidates) {
			if c.IsCA && isSelfSigned(c) {
				m.Roots = []*x509.Certificate{c}
				break
			}
		}
		if len(m.Roots) == 0 {
			return nil, fmt.Errorf("%w: %s is missing and %s is not self-signed; add the root certificate as %s", ErrInvalidCA, rootPath, CACertFile, RootCertFile)
		}
	}
	a, err := newAuthority(td, m, now)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (check %s and %s)", certPath, err, CertChainFile, RootCertFile)
	}
	return a, nil
}

// loadOrCreateState loads ca-cert.pem + ca-key.pem from dir, or creates them
// if neither exists. created reports whether it made a new root.
func loadOrCreateState(td, dir string, now func() time.Time) (a *Authority, created bool, err error) {
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)
	certOK, err := exists(certPath)
	if err != nil {
		return nil, false, err
	}
	keyOK, err := exists(keyPath)
	if err != nil {
		return nil, false, err
	}
	const restore = "restore it from a backup, or, to start a new root (every workload and client must then trust the new root), move both %s and %s away"
	switch {
	case certOK && !keyOK:
		return nil, false, fmt.Errorf("%w: %s exists but %s is missing; "+restore, ErrPartialState, certPath, keyPath, CACertFile, CAKeyFile)
	case keyOK && !certOK:
		return nil, false, fmt.Errorf("%w: %s exists but %s is missing; "+restore, ErrPartialState, keyPath, certPath, CACertFile, CAKeyFile)
	case certOK && keyOK:
		a, err := loadState(td, certPath, keyPath, now)
		if err != nil {
			return nil, false, err
		}
		return a, false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("creating state directory: %w", err)
	}
	cert, key, err := newRoot(td, now())
	if err != nil {
		return nil, false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, err
	}
	// Key first: a crash between the two renames leaves a key without a
	// certificate, which the next start reports instead of regenerating.
	// Exclusive: if another process created the root meanwhile, fail
	// rather than mix two roots' files.
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600, true); err != nil {
		return nil, false, err
	}
	if err := writeFile(certPath, pemCert(cert), 0o644, true); err != nil {
		return nil, false, err
	}
	a, err = newAuthority(td, Material{Cert: cert, Key: key}, now)
	return a, true, err
}

func loadState(td, certPath, keyPath string, now func() time.Time) (*Authority, error) {
	reset := fmt.Sprintf("restore a good copy from a backup, or move %s and %s away to create a new root", CACertFile, CAKeyFile)
	certData, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v; %s", ErrInvalidCA, certPath, err, reset)
	}
	keyData, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v; %s", ErrInvalidCA, keyPath, err, reset)
	}
	return parseSelfSigned(td, certData, keyData, certPath, keyPath, reset, now)
}

// parseSelfSigned checks and loads a kept self-signed root: one
// certificate made for td, and its key. certName and keyName name where
// they were read; reset is the fix appended to every error.
func parseSelfSigned(td string, certData, keyData []byte, certName, keyName, reset string, now func() time.Time) (*Authority, error) {
	certs, err := parseCerts(certData, certName, true)
	if err != nil {
		return nil, fmt.Errorf("%w; %s", err, reset)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%w: %s holds %d certificates, want 1; %s", ErrInvalidCA, certName, len(certs), reset)
	}
	key, err := parseKey(keyData, keyName)
	if err != nil {
		return nil, fmt.Errorf("%w; %s", err, reset)
	}
	cert := certs[0]
	if !slices.Equal(cert.Subject.Organization, []string{td}) {
		return nil, fmt.Errorf("%w: the root in %s was made for trust domain %q, not %q; set the trust domain it was made for, or keep the root elsewhere",
			ErrInvalidCA, certName, firstNonEmpty(cert.Subject.Organization), td)
	}
	a, err := newAuthority(td, Material{Cert: cert, Key: key}, now)
	if err != nil {
		return nil, fmt.Errorf("%s: %w; %s", certName, err, reset)
	}
	return a, nil
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("checking %s: %w", path, err)
}

// readCerts reads PEM certificates. A missing optional file yields none.
func readCerts(path string, required bool) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if !required && errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: reading %s: %v", ErrInvalidCA, path, err)
	}
	return parseCerts(data, path, required)
}

// parseCerts decodes PEM certificates read from name. Empty data yields
// none unless required.
func parseCerts(data []byte, name string, required bool) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: %s holds a PEM block of type %q; it must hold only CERTIFICATE blocks", ErrInvalidCA, name, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: certificate %d does not parse: %v", ErrInvalidCA, name, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 && (required || len(data) > 0) {
		return nil, fmt.Errorf("%w: %s holds no PEM certificate; it must hold PEM \"CERTIFICATE\" blocks", ErrInvalidCA, name)
	}
	return certs, nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrInvalidCA, path, err)
	}
	return parseKey(data, path)
}

// parseKey decodes a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) read
// from name.
func parseKey(data []byte, name string) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%w: %s holds no PEM private key", ErrInvalidCA, name)
	}
	var (
		key any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%w: %s holds a PEM block of type %q; want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY", ErrInvalidCA, name, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: private key does not parse: %v", ErrInvalidCA, name, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %s: key type %T cannot sign", ErrInvalidCA, name, key)
	}
	return s, nil
}

// WriteFileAtomic writes data to path with mode perm through a synced
// temporary file in the same directory and a rename, so readers see the old
// file or the new one. istiod uses it for the root certificate it publishes.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return writeFile(path, data, perm, false)
}

// writeFile writes through a synced temporary file; exclusive links it into
// place (failing if path exists, so nothing is ever replaced) instead of
// renaming over it.
func writeFile(path string, data []byte, perm os.FileMode, exclusive bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a rename or link this is a no-op or drops the extra name
	fail := func(err error) error {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if exclusive {
		err = os.Link(tmp, path)
	} else {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
