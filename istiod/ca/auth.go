package ca

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Sentinels an Authenticator or Caller wraps to choose the gRPC code of a
// refusal. Any other error is reported as Unavailable (a transient failure,
// such as an unreachable Kubernetes API, the client should retry).
var (
	// ErrUnauthenticated: no credential, or one that is not valid.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the caller may not request this identity.
	ErrPermissionDenied = errors.New("permission denied")
)

// Authenticator identifies the caller of a CreateCertificate request from its
// gRPC context (metadata, peer). Implementations must be safe for concurrent
// use. The static token file (StaticTokens) is one; a Kubernetes TokenReview
// authenticator whose Caller is "the ztunnel on node N" is another.
type Authenticator interface {
	// Authenticate returns the caller, or an error wrapping
	// ErrUnauthenticated whose message says what is wrong with the
	// credential (never the credential itself).
	Authenticate(ctx context.Context) (Caller, error)
}

// Caller is an authenticated client.
type Caller interface {
	// Name identifies the caller in logs and error messages (for example
	// "ztunnel on node worker-1"); it must not contain secrets.
	Name() string
	// Authorize returns nil if the caller may obtain a certificate for id,
	// or an error wrapping ErrPermissionDenied saying why not. ctx is the
	// request's context (for lookups such as "does a pod with this service
	// account run on the caller's node").
	Authorize(ctx context.Context, id spiffe.ID) error
}

// AuthorizationHeader is the gRPC metadata key carrying "Bearer <token>".
const AuthorizationHeader = "authorization"

// BearerToken returns the token of the request's "authorization: Bearer
// <token>" metadata, or an error wrapping ErrUnauthenticated.
func BearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(AuthorizationHeader)
	switch len(vals) {
	case 0:
		return "", fmt.Errorf("%w: no %q metadata; send \"authorization: Bearer <token>\"", ErrUnauthenticated, AuthorizationHeader)
	case 1:
	default:
		return "", fmt.Errorf("%w: %d %q metadata values; send exactly one", ErrUnauthenticated, len(vals), AuthorizationHeader)
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: %q metadata is not \"Bearer <token>\"", ErrUnauthenticated, AuthorizationHeader)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", fmt.Errorf("%w: empty bearer token", ErrUnauthenticated)
	}
	return token, nil
}
