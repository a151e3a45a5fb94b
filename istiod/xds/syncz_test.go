package xds_test

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/istiod/xds/xdstest"
	"github.com/ambit-mesh/ambit/pkg/syncz"
)

// syncType returns the syncz entry of the single proxy for typeURL.
func syncType(t *testing.T, s *xds.Server, typeURL string) (syncz.Proxy, syncz.Type) {
	t.Helper()
	ps := s.Syncz()
	if len(ps) != 1 {
		t.Fatalf("syncz lists %d proxies, want 1: %+v", len(ps), ps)
	}
	for _, ty := range ps[0].Types {
		if ty.TypeURL == typeURL {
			return ps[0], ty
		}
	}
	t.Fatalf("syncz has no %s: %+v", typeURL, ps[0])
	return syncz.Proxy{}, syncz.Type{}
}

// TestSyncz follows one stream's status through NOT SENT (subscribed before
// the first publish), STALE (sent, not acked), SYNCED (acked), STALE with
// the message (NACKed), and SYNCED again with the error cleared.
func TestSyncz(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{})
	if ps := d.XDS.Syncz(); len(ps) != 0 {
		t.Fatalf("syncz before any stream: %+v", ps)
	}
	c := dial(t, d, true)
	md, _ := structpb.NewStruct(map[string]any{"NODE_NAME": "node-a", "ISTIO_VERSION": "1.2.3"})
	c.send(&discovery.DeltaDiscoveryRequest{
		Node:    &core.Node{Id: "ztunnel~10.0.0.1~zt-1.istio-system~istio-system.svc.cluster.local", Metadata: md},
		TypeUrl: xds.TypeAddress, ResourceNamesSubscribe: []string{"*"},
	})
	eventually(t, "the stream in syncz", func() bool { return len(d.XDS.Syncz()) == 1 })
	p, ty := syncType(t, d.XDS, xds.TypeAddress)
	if p.Kind != "ztunnel" || p.Node != "node-a" || p.Pod != "zt-1" || p.Namespace != "istio-system" || p.Version != "1.2.3" || p.ConnectedAt.IsZero() {
		t.Errorf("proxy %+v", p)
	}
	if ty.Status != syncz.NotSent || len(p.Types) != 1 {
		t.Errorf("before the first publish: %+v", p.Types)
	}

	mesh := xdstest.Mesh(4, 2, 1)
	d.XDS.Set(mesh)
	r := c.recv()
	_, ty = syncType(t, d.XDS, xds.TypeAddress)
	if ty.Status != syncz.Stale || ty.Sent != r.GetNonce() || ty.Acked != "" {
		t.Errorf("sent, not acked: %+v", ty)
	}
	c.ack(r)
	eventually(t, "SYNCED after the ACK", func() bool { _, ty := syncType(t, d.XDS, xds.TypeAddress); return ty.Status == syncz.Synced })
	_, ty = syncType(t, d.XDS, xds.TypeAddress)
	if ty.Sent != r.GetNonce() || ty.Acked != r.GetNonce() {
		t.Errorf("synced: %+v", ty)
	}

	next := clone(mesh)
	w := xdstest.Workload(9, 2, 1, 1)
	next.Addresses[xds.AddressKey(w)] = w
	d.XDS.Set(next)
	r2 := c.recv()
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r2.GetTypeUrl(), ResponseNonce: r2.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "app-9: bad address"}})
	eventually(t, "the NACK in syncz", func() bool { _, ty := syncType(t, d.XDS, xds.TypeAddress); return ty.Error != "" })
	_, ty = syncType(t, d.XDS, xds.TypeAddress)
	if ty.Status != syncz.Stale || ty.Sent != r2.GetNonce() || ty.Acked != r.GetNonce() || ty.Error != "app-9: bad address" {
		t.Errorf("after a NACK: %+v", ty)
	}

	next = clone(next)
	w = xdstest.Workload(10, 2, 1, 1)
	next.Addresses[xds.AddressKey(w)] = w
	d.XDS.Set(next)
	c.recvType(xds.TypeAddress)
	eventually(t, "SYNCED after the next ACK", func() bool {
		_, ty := syncType(t, d.XDS, xds.TypeAddress)
		return ty.Status == syncz.Synced && ty.Error == ""
	})

	// A second type appears once subscribed; a closed stream leaves.
	c.subscribe(xds.TypeAuthorization, nil)
	c.recvType(xds.TypeAuthorization)
	eventually(t, "both types SYNCED", func() bool {
		p, ty := syncType(t, d.XDS, xds.TypeAuthorization)
		return len(p.Types) == 2 && ty.Status == syncz.Synced
	})
	c.close()
	eventually(t, "the closed stream to leave syncz", func() bool { return len(d.XDS.Syncz()) == 0 })
}
