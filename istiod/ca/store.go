package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of a RootStore.
var (
	// ErrNoRoot means the store keeps no root yet.
	ErrNoRoot = errors.New("no root stored")
	// ErrRootExists means Create found a root already stored (another
	// istiod stored one first).
	ErrRootExists = errors.New("a root is already stored")
)

// RootStore keeps the self-signed root outside istiod's file system, so
// every replica and every restart uses the same one (istiod's Kubernetes
// Secret: istiod/ca/casecret).
type RootStore interface {
	// Load returns the stored root certificate and key (PEM), or an error
	// wrapping ErrNoRoot when none is stored.
	Load(ctx context.Context) (certPEM, keyPEM []byte, err error)
	// Create stores a root unless one is stored: it returns an error
	// wrapping ErrRootExists then, and never replaces the stored root.
	Create(ctx context.Context, certPEM, keyPEM []byte) error
	// String names the store in logs and errors.
	String() string
}

// loadOrCreateStore loads the root kept in store, or creates one and
// stores it. Two istiods starting at once agree: the one whose Create loses
// loads the winner's root. created reports whether this call stored it.
func loadOrCreateStore(ctx context.Context, td string, store RootStore, now func() time.Time) (a *Authority, created bool, err error) {
	certPEM, keyPEM, err := store.Load(ctx)
	switch {
	case err == nil:
		a, err := parseStored(td, store, certPEM, keyPEM, now)
		return a, false, err
	case !errors.Is(err, ErrNoRoot):
		return nil, false, err
	}
	cert, key, err := newRoot(td, now())
	if err != nil {
		return nil, false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, err
	}
	err = store.Create(ctx, pemCert(cert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	switch {
	case err == nil:
		a, err := newAuthority(td, Material{Cert: cert, Key: key}, now)
		return a, true, err
	case errors.Is(err, ErrRootExists):
		if certPEM, keyPEM, err = store.Load(ctx); err != nil {
			return nil, false, fmt.Errorf("reading the root another istiod stored: %w", err)
		}
		a, err := parseStored(td, store, certPEM, keyPEM, now)
		return a, false, err
	default:
		return nil, false, err
	}
}

func parseStored(td string, store RootStore, certPEM, keyPEM []byte, now func() time.Time) (*Authority, error) {
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, fmt.Errorf("%w: %s holds %s (%d bytes) and %s (%d bytes), both are needed; restore them from a backup, or delete it to create a new root (every workload and client must then trust the new root)",
			ErrPartialState, store, CACertFile, len(certPEM), CAKeyFile, len(keyPEM))
	}
	reset := fmt.Sprintf("restore %s from a backup, or delete it to create a new root (every workload and client must then trust the new root)", store)
	return parseSelfSigned(td, certPEM, keyPEM, store.String()+" "+CACertFile, store.String()+" "+CAKeyFile, reset, now)
}
