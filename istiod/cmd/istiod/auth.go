package main

import (
	"context"
	"errors"
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/xds"
)

// chain tries each authenticator in order: the first that does not answer
// ErrUnauthenticated decides (static tokens before TokenReview, so a local
// token never reaches the API server). With none it refuses everyone.
type chain []ca.Authenticator

var _ ca.Authenticator = chain(nil)

// Authenticate implements ca.Authenticator.
func (c chain) Authenticate(ctx context.Context) (ca.Caller, error) {
	var errs []error
	for _, a := range c {
		caller, err := a.Authenticate(ctx)
		if err == nil || !errors.Is(err, ca.ErrUnauthenticated) {
			return caller, err
		}
		errs = append(errs, err)
	}
	switch len(errs) {
	case 0:
		return nil, fmt.Errorf("%w: no authentication configured", ca.ErrUnauthenticated)
	case 1:
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

// authorizeStream lets a workload discovery stream through when its caller
// authenticates as for the CA (any authenticated caller receives the mesh
// state, as with Istio), mapping refusals to gRPC codes.
func authorizeStream(authn ca.Authenticator) xds.AuthorizeFunc {
	return func(ctx context.Context) error {
		_, err := authn.Authenticate(ctx)
		return streamAuthError(err)
	}
}

// streamAuthError maps an Authenticate error to the stream's gRPC status
// (nil for nil).
func streamAuthError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ca.ErrUnauthenticated):
		return status.Errorf(codes.Unauthenticated, "workload discovery: %v", err)
	case errors.Is(err, ca.ErrPermissionDenied):
		return status.Errorf(codes.PermissionDenied, "workload discovery: %v", err)
	}
	return status.Errorf(codes.Unavailable, "workload discovery: authenticating the caller: %v", err)
}

// authorizeStreamNode binds a node-bound caller's stream to its node: the
// caller of a stream whose credential is a node's ztunnel (a static node
// token, or a Kubernetes ztunnel token whose node is known) may stream only
// with the node ID and metadata of a ztunnel of that node
// (xds.CheckZtunnelNode); any other caller as before.
func authorizeStreamNode(authn ca.Authenticator) xds.AuthorizeNodeFunc {
	return func(ctx context.Context, n *core.Node) error {
		caller, err := authn.Authenticate(ctx)
		if err != nil {
			return streamAuthError(err)
		}
		nb, ok := caller.(ca.NodeBound)
		if !ok || nb.Node() == "" {
			return nil
		}
		if err := xds.CheckZtunnelNode(n, nb.Node()); err != nil {
			return status.Errorf(codes.PermissionDenied, "workload discovery: caller %s is the ztunnel of node %s and may stream only as that node's ztunnel: %v", caller.Name(), nb.Node(), err)
		}
		return nil
	}
}
