package main

import (
	"context"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// fixedCaller is a caller on node (node-bound when node is set).
type fixedCaller struct{ node string }

func (c fixedCaller) Name() string                               { return "test caller" }
func (c fixedCaller) Authorize(context.Context, spiffe.ID) error { return nil }
func (c fixedCaller) Node() string                               { return c.node }

type fixedAuth struct{ c ca.Caller }

func (a fixedAuth) Authenticate(context.Context) (ca.Caller, error) { return a.c, nil }

// TestAuthorizeStreamNode: a node-bound caller (a static node token or a
// Kubernetes ztunnel whose node is known) streams only as its node's
// ztunnel; a caller whose node is unknown or that is not node-bound is not
// bound.
func TestAuthorizeStreamNode(t *testing.T) {
	node := func(name string) *core.Node {
		return &core.Node{Id: "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local",
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"NODE_NAME": structpb.NewStringValue(name)}}}
	}
	for _, c := range []struct {
		name   string
		caller ca.Caller
		node   *core.Node
		want   codes.Code
	}{
		{"own node", fixedCaller{"node-a"}, node("node-a"), codes.OK},
		{"other node", fixedCaller{"node-a"}, node("node-b"), codes.PermissionDenied},
		{"made-up node ID", fixedCaller{"node-a"}, &core.Node{Id: "made-up"}, codes.PermissionDenied},
		{"node unknown", fixedCaller{""}, &core.Node{Id: "made-up"}, codes.OK},
	} {
		err := authorizeStreamNode(fixedAuth{c.caller})(context.Background(), c.node)
		if status.Code(err) != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), "is the ztunnel of node node-a and may stream only as that node's ztunnel") {
			t.Errorf("%s: refusal %q does not name the node", c.name, err)
		}
	}
}
