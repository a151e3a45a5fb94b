package xds_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/istiod/xds/xdstest"
)

func TestParseNodeID(t *testing.T) {
	n, err := xds.ParseNodeID("ztunnel~10.1.0.7~ztunnel-x2d4.istio-system~istio-system.svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if n.Type != xds.NodeTypeZtunnel || n.IP.String() != "10.1.0.7" || n.Pod != "ztunnel-x2d4" || n.Namespace != "istio-system" || n.Domain != "istio-system.svc.cluster.local" {
		t.Errorf("parsed %+v", n)
	}
	if _, err := xds.ParseNodeID("sidecar~fd00::1~a.b~b.svc.cluster.local"); err != nil {
		t.Errorf("IPv6 sidecar: %v", err)
	}
	for _, c := range []struct{ id, want string }{
		{"", "has 1 '~'-separated parts"},
		{"ztunnel~node-a", "has 2 '~'-separated parts"},
		{"ztunnel~1.2.3.4~a.b~c~d", "has 5"},
		{"proxy~1.2.3.4~a.b~c", `type "proxy" is none of`},
		{"ztunnel~node-a~a.b~c", `"node-a" is not an IP address`},
		{"ztunnel~1.2.3.4~ab~c", `"ab" is not <pod>.<namespace>`},
		{"ztunnel~1.2.3.4~.b~c", `".b" is not <pod>.<namespace>`},
		{"ztunnel~1.2.3.4~a.~c", `"a." is not <pod>.<namespace>`},
	} {
		if _, err := xds.ParseNodeID(c.id); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseNodeID(%q) = %v, want %q", c.id, err, c.want)
		}
	}
}

func ztunnelNode(id, nodeName string) *core.Node {
	n := &core.Node{Id: id}
	if nodeName != "" {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{xds.MetadataNodeName: structpb.NewStringValue(nodeName)}}
	}
	return n
}

func TestCheckZtunnelNode(t *testing.T) {
	const own = "ztunnel~172.30.0.11~ztunnel-node-b.istio-system~istio-system.svc.cluster.local"
	for _, c := range []struct {
		name string
		node *core.Node
		want string // "" accepted
	}{
		{"own", ztunnelNode(own, "node-b"), ""},
		{"made-up ID", ztunnelNode("made-up", "node-b"), "has 1 '~'-separated parts"},
		{"other node", ztunnelNode(own, "node-a"), `is on node "node-a" (metadata NODE_NAME), not "node-b"`},
		{"no NODE_NAME", ztunnelNode(own, ""), "has no NODE_NAME metadata"},
		{"sidecar", ztunnelNode("sidecar~10.244.1.2~client.demo~demo.svc.cluster.local", "node-b"), "is a sidecar, not a ztunnel"},
		{"no node", nil, "carries no node"},
		{"empty ID", &core.Node{}, "carries no node"},
	} {
		err := xds.CheckZtunnelNode(c.node, "node-b")
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
		} else if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestAuthorizeNodeHook: the node hook sees the first request's node, and
// a refused stream gets nothing but its PermissionDenied.
func TestAuthorizeNodeHook(t *testing.T) {
	seen := make(chan *core.Node, 4)
	d, _ := startIstiod(t, xdstest.Options{XDS: xds.Options{AuthorizeNode: func(_ context.Context, n *core.Node) error {
		seen <- n
		if n.GetId() != "ztunnel~10.0.0.1~test.istio-system~istio-system.svc.cluster.local" {
			return errors.New("not the node")
		}
		return nil
	}}})
	d.XDS.Set(xdstest.Mesh(1, 1, 1))
	d.XDS.Flush()

	bad := dial(t, d, true)
	bad.send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "other"}, TypeUrl: xds.TypeAddress, ResourceNamesSubscribe: []string{"*"}})
	select {
	case err := <-bad.errc:
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "not the node") {
			t.Fatalf("got %v, want PermissionDenied: not the node", err)
		}
	case r := <-bad.resps:
		t.Fatalf("refused stream got a response: %v", r)
	case <-time.After(wait):
		t.Fatal("stream with a refused node served")
	}
	if n := <-seen; n.GetId() != "other" {
		t.Errorf("hook saw %v", n)
	}

	good := dial(t, d, true)
	good.subscribe(xds.TypeAddress, nil)
	if r := good.recv(); r.GetTypeUrl() != xds.TypeAddress || len(r.GetResources()) == 0 {
		t.Fatalf("accepted stream got %v", r)
	}
	good.subscribe(xds.TypeAuthorization, nil)
	good.recvType(xds.TypeAuthorization)
	if len(seen) != 1 {
		t.Errorf("hook called %d times for one accepted stream, want once", len(seen))
	}
}
