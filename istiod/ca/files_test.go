package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// pki is a root and an intermediate, as a user's Istio cacerts would hold.
type pki struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

func mkCert(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func caTmpl(cn string, serial int64, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{td}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	rk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ik, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rt := caTmpl("test root", 1, time.Now().Add(48*time.Hour))
	root := mkCert(t, rt, rt, &rk.PublicKey, rk)
	inter := mkCert(t, caTmpl("test intermediate", 2, time.Now().Add(24*time.Hour)), root, &ik.PublicKey, rk)
	return &pki{root: root, inter: inter, rootKey: rk, interKey: ik}
}

func pemKey(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshot returns every file in dir with its content.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

func TestStateDirCreateThenReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	a1, err := LoadOrCreate(Options{TrustDomain: td, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	root := a1.Roots()[0]
	if !root.IsCA || !slices.Equal(root.Subject.Organization, []string{td}) || root.NotAfter.Sub(root.NotBefore) < RootTTL {
		t.Fatalf("root %v org=%v validity %s", root.Subject, root.Subject.Organization, root.NotAfter.Sub(root.NotBefore))
	}
	if _, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || root.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Fatalf("root key %T, want ECDSA P-256", root.PublicKey)
	}
	for name, mode := range map[string]os.FileMode{CAKeyFile: 0o600, CACertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Fatalf("%s mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	before := snapshot(t, dir)
	if len(before) != 2 {
		t.Fatalf("state dir holds %v, want exactly the two files (no temp files left)", before)
	}
	a2, err := LoadOrCreate(Options{TrustDomain: td, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a1.RootsPEM(), a2.RootsPEM()) {
		t.Fatal("reload changed the root")
	}
	if !a1.key.Public().(*ecdsa.PublicKey).Equal(a2.key.Public()) {
		t.Fatal("reload changed the key")
	}
	if after := snapshot(t, dir); !maps(before, after) {
		t.Fatal("reload modified the state directory")
	}
	if _, err := LoadOrCreate(Options{TrustDomain: "other.td", StateDir: dir}); err == nil || !strings.Contains(err.Error(), `made for trust domain "cluster.local", not "other.td"`) {
		t.Fatalf("other trust domain: %v", err)
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestStateDirBrokenIsNotOverwritten(t *testing.T) {
	good := t.TempDir()
	if _, err := LoadOrCreate(Options{TrustDomain: td, StateDir: good}); err != nil {
		t.Fatal(err)
	}
	files := snapshot(t, good)
	cases := []struct {
		name  string
		files map[string][]byte
		is    error
		want  []string
	}{
		{"only cert", map[string][]byte{CACertFile: []byte(files[CACertFile])}, ErrPartialState, []string{"ca-key.pem is missing", "restore it from a backup"}},
		{"only key", map[string][]byte{CAKeyFile: []byte(files[CAKeyFile])}, ErrPartialState, []string{"ca-cert.pem is missing", "move both"}},
		{"corrupt cert", map[string][]byte{CACertFile: []byte("garbage"), CAKeyFile: []byte(files[CAKeyFile])}, ErrInvalidCA, []string{"ca-cert.pem holds no PEM certificate", "restore a good copy"}},
		{"corrupt key", map[string][]byte{CACertFile: []byte(files[CACertFile]), CAKeyFile: []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}, ErrInvalidCA, []string{"ca-key.pem: private key does not parse"}},
		{"empty cert", map[string][]byte{CACertFile: nil, CAKeyFile: []byte(files[CAKeyFile])}, ErrInvalidCA, []string{"ca-cert.pem holds no PEM certificate"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, c.files)
			before := snapshot(t, dir)
			_, err := LoadOrCreate(Options{TrustDomain: td, StateDir: dir})
			if err == nil || !errors.Is(err, c.is) {
				t.Fatalf("got %v, want %v", err, c.is)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name the directory", err)
			}
			if after := snapshot(t, dir); !maps(before, after) {
				t.Fatalf("state directory changed: %v -> %v", before, after)
			}
		})
	}
	// A key from another root with the right cert: mismatch, untouched.
	other := t.TempDir()
	if _, err := LoadOrCreate(Options{TrustDomain: td, StateDir: other}); err != nil {
		t.Fatal(err)
	}
	mixed := t.TempDir()
	writeFiles(t, mixed, map[string][]byte{CACertFile: []byte(files[CACertFile]), CAKeyFile: []byte(snapshot(t, other)[CAKeyFile])})
	if _, err := LoadOrCreate(Options{TrustDomain: td, StateDir: mixed}); !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: %v", err)
	}
}

func TestCADirLayouts(t *testing.T) {
	p := newPKI(t)
	rootPEM, interPEM := pemCert(p.root), pemCert(p.inter)
	interKey := pemKey(t, p.interKey)
	cases := []struct {
		name  string
		files map[string][]byte
	}{
		{"four files, chain excludes root", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey, CertChainFile: interPEM, RootCertFile: rootPEM}},
		{"chain includes ca-cert and root (Istio samples)", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey, CertChainFile: append(bytes.Clone(interPEM), rootPEM...), RootCertFile: rootPEM}},
		{"no cert-chain", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey, RootCertFile: rootPEM}},
		{"no root-cert, chain ends at root", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey, CertChainFile: append(bytes.Clone(interPEM), rootPEM...)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, c.files)
			a, err := LoadOrCreate(Options{TrustDomain: td, CADir: dir, StateDir: "/nonexistent-unused"})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a.RootsPEM(), rootPEM) {
				t.Fatal("trust bundle is not the root")
			}
			keys(t)
			chain, err := a.Issue(&ecKey.PublicKey, mustID(t, reqID), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if len(chain) != 3 || !chain[1].Equal(p.inter) || !chain[2].Equal(p.root) {
				t.Fatalf("chain of %d, want leaf, intermediate, root", len(chain))
			}
			if !chain[0].NotAfter.Before(p.inter.NotAfter) || chain[0].Issuer.CommonName != "test intermediate" {
				t.Fatal("leaf not signed by the intermediate")
			}
		})
	}
}

func TestCADirRoot(t *testing.T) {
	// ca-cert is the root itself: no other file needed.
	p := newPKI(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{CACertFile: pemCert(p.root), CAKeyFile: pemKey(t, p.rootKey)})
	a, err := LoadOrCreate(Options{TrustDomain: td, CADir: dir})
	if err != nil {
		t.Fatal(err)
	}
	keys(t)
	chain, err := a.Issue(&ecKey.PublicKey, mustID(t, reqID), time.Hour)
	if err != nil || len(chain) != 2 || !chain[1].Equal(p.root) {
		t.Fatalf("chain %d, %v", len(chain), err)
	}
}

func TestCADirErrors(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t)
	rootPEM, interPEM := pemCert(p.root), pemCert(p.inter)
	interKey := pemKey(t, p.interKey)

	// A non-CA certificate, an expired intermediate and RSA PKCS#1 key forms.
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	notCA := caTmpl("not a ca", 3, time.Now().Add(time.Hour))
	notCA.IsCA = false
	notCA.KeyUsage = x509.KeyUsageDigitalSignature
	notCACert := mkCert(t, notCA, p.root, &leafKey.PublicKey, p.rootKey)
	expiredT := caTmpl("expired", 4, time.Now().Add(-time.Minute))
	expiredT.NotBefore = time.Now().Add(-2 * time.Hour)
	expired := mkCert(t, expiredT, p.root, &leafKey.PublicKey, p.rootKey)

	cases := []struct {
		name  string
		files map[string][]byte
		want  []string
	}{
		{"empty dir, no other root", nil, []string{"holds none of the cacerts files", "state directory or a CA Secret"}},
		{"missing key", map[string][]byte{CACertFile: interPEM, RootCertFile: rootPEM}, []string{"ca-key.pem"}},
		{"key does not match", map[string][]byte{CACertFile: interPEM, CAKeyFile: pemKey(t, other.interKey), RootCertFile: rootPEM}, []string{"ca-key.pem and", "does not match", "put the key of ca-cert.pem in ca-key.pem"}},
		{"not a CA", map[string][]byte{CACertFile: pemCert(notCACert), CAKeyFile: pemKey(t, leafKey), RootCertFile: rootPEM}, []string{"ca-cert.pem", "is not a CA"}},
		{"expired", map[string][]byte{CACertFile: pemCert(expired), CAKeyFile: pemKey(t, leafKey), RootCertFile: rootPEM}, []string{"ca-cert.pem", "not now", "install a current one"}},
		{"wrong root", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey, RootCertFile: pemCert(other.root)}, []string{"does not verify to the root", "root-cert.pem"}},
		{"root missing", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey}, []string{"root-cert.pem is missing", "add the root certificate"}},
		{"root-cert holds an intermediate", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey, RootCertFile: interPEM}, []string{"root-cert.pem holds", "not a self-signed CA"}},
		{"two certs in ca-cert", map[string][]byte{CACertFile: append(bytes.Clone(interPEM), rootPEM...), CAKeyFile: interKey, RootCertFile: rootPEM}, []string{"ca-cert.pem holds 2 certificates", "cert-chain.pem"}},
		{"key in cert file", map[string][]byte{CACertFile: interKey, CAKeyFile: interKey}, []string{"ca-cert.pem holds a PEM block of type \"PRIVATE KEY\""}},
		{"garbage chain", map[string][]byte{CACertFile: interPEM, CAKeyFile: interKey, CertChainFile: []byte("nope"), RootCertFile: rootPEM}, []string{"cert-chain.pem holds no PEM certificate"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, c.files)
			_, err := LoadOrCreate(Options{TrustDomain: td, CADir: dir})
			if err == nil {
				t.Fatal("loaded")
			}
			if !errors.Is(err, ErrInvalidCA) && !errors.Is(err, ErrExpired) {
				t.Errorf("error does not wrap a sentinel: %v", err)
			}
			for _, w := range append(c.want, "loading CA from "+dir) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCADirKeyFormats(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(ek)
	for name, c := range map[string]struct {
		key crypto.Signer
		pem []byte
	}{
		"RSA PKCS#1": {rk, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})},
		"EC SEC1":    {ek, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})},
	} {
		t.Run(name, func(t *testing.T) {
			tmpl := caTmpl("root", 9, time.Now().Add(time.Hour))
			root := mkCert(t, tmpl, tmpl, c.key.Public(), c.key)
			dir := t.TempDir()
			writeFiles(t, dir, map[string][]byte{CACertFile: pemCert(root), CAKeyFile: c.pem})
			if _, err := LoadOrCreate(Options{TrustDomain: td, CADir: dir}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLoadOrCreateNeedsADirectory(t *testing.T) {
	if _, err := LoadOrCreate(Options{TrustDomain: td}); !errors.Is(err, ErrInvalidCA) {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(Options{TrustDomain: "Bad TD", StateDir: t.TempDir()}); err == nil {
		t.Fatal("bad trust domain accepted")
	}
}

func mustID(t *testing.T, s string) spiffe.ID {
	t.Helper()
	id, err := spiffe.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Racing creators never leave a mixed pair: whoever wins creates the root,
// the others fail or load it.
func TestStateDirConcurrentCreate(t *testing.T) {
	dir := t.TempDir()
	const n = 4
	results := make(chan *Authority, n)
	for range n {
		go func() {
			a, _ := LoadOrCreate(Options{TrustDomain: td, StateDir: dir})
			results <- a
		}()
	}
	var got []*Authority
	for range n {
		if a := <-results; a != nil {
			got = append(got, a)
		}
	}
	final, err := LoadOrCreate(Options{TrustDomain: td, StateDir: dir})
	if err != nil {
		t.Fatalf("state after the race does not load: %v", err)
	}
	if len(got) == 0 {
		t.Fatal("no creator succeeded")
	}
	for _, a := range got {
		if !bytes.Equal(a.RootsPEM(), final.RootsPEM()) {
			t.Fatal("a creator returned a root other than the persisted one")
		}
	}
	if len(snapshot(t, dir)) != 2 {
		t.Fatalf("state dir holds %v", snapshot(t, dir))
	}
}
