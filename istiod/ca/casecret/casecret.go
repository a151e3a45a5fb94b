package casecret

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/ambit-mesh/ambit/istiod/ca"
)

// Istio's names and keys.
const (
	// DefaultName is the Secret Istio's istiod keeps its self-signed root in.
	DefaultName = "istio-ca-secret"
	// SecretType is the type Istio gives that Secret.
	SecretType corev1.SecretType = "istio.io/ca-root"
	// KeyPrivateKey is a key Istio writes empty.
	KeyPrivateKey = "key.pem"
)

// Retry backoff for transient API errors.
const (
	initialBackoff = 200 * time.Millisecond
	maxBackoff     = 5 * time.Second
)

// Store is a ca.RootStore in one Secret. Safe for concurrent use.
type Store struct {
	secrets   typedcorev1.SecretInterface
	namespace string
	name      string
}

var _ ca.RootStore = (*Store)(nil)

// New returns the store of Secret namespace/name; secrets is the client
// of that namespace (clientset.CoreV1().Secrets(namespace)).
func New(secrets typedcorev1.SecretInterface, namespace, name string) *Store {
	return &Store{secrets: secrets, namespace: namespace, name: name}
}

// String is "Secret <namespace>/<name>".
func (s *Store) String() string { return "Secret " + s.namespace + "/" + s.name }

// Load returns ca-cert.pem and ca-key.pem of the Secret, or an error
// wrapping ca.ErrNoRoot when the Secret does not exist.
func (s *Store) Load(ctx context.Context) (certPEM, keyPEM []byte, err error) {
	var sec *corev1.Secret
	err = s.retry(ctx, "get", func() error {
		var err error
		sec, err = s.secrets.Get(ctx, s.name, metav1.GetOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("%s: %w", s, ca.ErrNoRoot)
	}
	if err != nil {
		return nil, nil, err
	}
	return sec.Data[ca.CACertFile], sec.Data[ca.CAKeyFile], nil
}

// Create creates the Secret holding the root, or returns an error
// wrapping ca.ErrRootExists when it exists.
func (s *Store) Create(ctx context.Context, certPEM, keyPEM []byte) error {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.namespace, Name: s.name},
		Type:       SecretType,
		Data: map[string][]byte{
			ca.CACertFile:    certPEM,
			ca.CAKeyFile:     keyPEM,
			ca.RootCertFile:  certPEM,
			ca.CertChainFile: {},
			KeyPrivateKey:    {},
		},
	}
	err := s.retry(ctx, "create", func() error {
		_, err := s.secrets.Create(ctx, sec, metav1.CreateOptions{})
		return err
	})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%s: %w", s, ca.ErrRootExists)
	}
	return err
}

// retry calls f until it succeeds, fails with an answer that retrying
// cannot change (NotFound, AlreadyExists, Forbidden, Invalid, ...), or ctx
// ends.
func (s *Store) retry(ctx context.Context, verb string, f func() error) error {
	delay := initialBackoff
	for {
		err := f()
		if err == nil || apierrors.IsNotFound(err) || apierrors.IsAlreadyExists(err) {
			return err
		}
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("%s: %w; grant istiod's service account %q on secrets in namespace %s (a Role: get on resourceNames [%s], and create)",
				s, err, verb, s.namespace, s.name)
		}
		if !transient(err) {
			return fmt.Errorf("%s: %s: %w", s, verb, err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %s: %w (gave up: %v)", s, verb, err, context.Cause(ctx))
		case <-t.C:
		}
		delay = min(2*delay, maxBackoff)
	}
}

// transient reports whether err may go away on retry: network errors and
// the API server's overload and timeout answers.
func transient(err error) bool {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return true // no answer from the API server: connection refused, reset, DNS
	}
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) || apierrors.IsConflict(err)
}
