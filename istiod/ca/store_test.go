package ca

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// memStore is a RootStore in memory with a create-if-absent, as the
// Kubernetes Secret is. gate, if set, holds every Load until closed, so
// concurrent callers all find the store empty.
type memStore struct {
	mu        sync.Mutex
	cert, key []byte
	stored    bool
	creates   int
	gate      chan struct{}
}

func (m *memStore) Load(ctx context.Context) ([]byte, []byte, error) {
	if m.gate != nil {
		<-m.gate
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.stored {
		return nil, nil, ErrNoRoot
	}
	return m.cert, m.key, nil
}

func (m *memStore) Create(ctx context.Context, cert, key []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.creates++
	if m.stored {
		return ErrRootExists
	}
	m.cert, m.key, m.stored = cert, key, true
	return nil
}

func (m *memStore) String() string { return "Secret test/istio-ca-secret" }

func TestRootStoreCreateThenReload(t *testing.T) {
	s := &memStore{}
	a1, err := LoadOrCreate(Options{TrustDomain: td, RootStore: s})
	if err != nil {
		t.Fatal(err)
	}
	a2, err := LoadOrCreate(Options{TrustDomain: td, RootStore: s})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a1.RootsPEM(), a2.RootsPEM()) || !bytes.Equal(a1.RootsPEM(), s.cert) || s.creates != 1 {
		t.Fatalf("restart made another root (creates %d)", s.creates)
	}
	// The store wins over a state directory.
	dir := t.TempDir()
	a3, err := LoadOrCreate(Options{TrustDomain: td, RootStore: s, StateDir: dir})
	if err != nil || !bytes.Equal(a3.RootsPEM(), a1.RootsPEM()) {
		t.Fatalf("store and state dir: %v", err)
	}
	if len(snapshot(t, dir)) != 0 {
		t.Fatal("state dir written although a store was given")
	}
}

func TestRootStoreConcurrentCreate(t *testing.T) {
	s := &memStore{gate: make(chan struct{})}
	const n = 4
	results := make(chan *Authority, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			a, err := LoadOrCreate(Options{TrustDomain: td, RootStore: s})
			results <- a
			errs <- err
		}()
	}
	close(s.gate)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		if a := <-results; !bytes.Equal(a.RootsPEM(), s.cert) {
			t.Fatal("a racing istiod uses a root other than the stored one")
		}
	}
}

func TestRootStoreBrokenIsNotOverwritten(t *testing.T) {
	good := &memStore{}
	if _, err := LoadOrCreate(Options{TrustDomain: td, RootStore: good}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		cert, key []byte
		sentinel  error
		want      string
	}{
		{"no key", good.cert, nil, ErrPartialState, "ca-key.pem (0 bytes)"},
		{"no cert", nil, good.key, ErrPartialState, "ca-cert.pem (0 bytes)"},
		{"garbage key", good.cert, []byte("nope"), ErrInvalidCA, "Secret test/istio-ca-secret ca-key.pem holds no PEM private key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &memStore{cert: c.cert, key: c.key, stored: true}
			_, err := LoadOrCreate(Options{TrustDomain: td, RootStore: s})
			if !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "delete it to create a new root") {
				t.Fatalf("error %v; want %v containing %q", err, c.sentinel, c.want)
			}
			if s.creates != 0 {
				t.Fatal("a broken stored root was replaced")
			}
		})
	}
	if _, err := LoadOrCreate(Options{TrustDomain: "other.td", RootStore: good}); err == nil || !strings.Contains(err.Error(), `made for trust domain "cluster.local", not "other.td"`) {
		t.Fatalf("trust domain mismatch: %v", err)
	}
}

// TestEmptyCADir: a CA directory holding none of the cacerts files (an
// absent optional Secret's mount, with Kubernetes' hidden entries) means
// "no cacerts": the self-signed root is used.
func TestEmptyCADir(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "..2026_12_05"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..2026_12_05", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	s := &memStore{}
	a, err := LoadOrCreate(Options{TrustDomain: td, CADir: dir, RootStore: s})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.RootsPEM(), s.cert) {
		t.Fatal("empty CA dir: not the stored root")
	}
	state := t.TempDir()
	if _, err := LoadOrCreate(Options{TrustDomain: td, CADir: dir, StateDir: state}); err != nil || len(snapshot(t, state)) != 2 {
		t.Fatalf("empty CA dir with a state dir: %v, %v", err, snapshot(t, state))
	}
	if _, err := LoadOrCreate(Options{TrustDomain: td, CADir: filepath.Join(dir, "missing"), RootStore: s}); !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("a missing CA dir must be an error, not 'no cacerts': %v", err)
	}
	// Cacerts present win over the store.
	p := newPKI(t)
	full := t.TempDir()
	writeFiles(t, full, map[string][]byte{CACertFile: pemCert(p.inter), CAKeyFile: pemKey(t, p.interKey), RootCertFile: pemCert(p.root)})
	a, err = LoadOrCreate(Options{TrustDomain: td, CADir: full, RootStore: s})
	if err != nil || !bytes.Equal(a.RootsPEM(), pemCert(p.root)) {
		t.Fatalf("cacerts with a store: %v", err)
	}
}
