package xds_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/istiod/xds/xdstest"
)

const wait = 10 * time.Second

// logBuffer collects log output safely.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startIstiod(t *testing.T, opts xdstest.Options) (*xdstest.Istiod, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	if opts.XDS.Logger == nil {
		opts.XDS.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := xdstest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d, logs
}

// client is a bare delta ADS client that records what it receives.
type client struct {
	t      *testing.T
	conn   *grpc.ClientConn
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discovery.DeltaDiscoveryResponse
	errc   chan error
	cancel context.CancelFunc
}

func dial(t *testing.T, d *xdstest.Istiod, read bool) *client {
	t.Helper()
	conn, err := grpc.NewClient(d.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: d.RootCAs, ServerName: xdstest.ServerName})),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, conn: conn, stream: stream, resps: make(chan *discovery.DeltaDiscoveryResponse, 1024), errc: make(chan error, 1), cancel: cancel}
	if read {
		go func() {
			for {
				r, err := stream.Recv()
				if err != nil {
					c.errc <- err
					return
				}
				c.resps <- r
			}
		}()
	}
	t.Cleanup(c.close)
	return c
}

func (c *client) close() {
	c.cancel()
	c.conn.Close()
}

func (c *client) send(req *discovery.DeltaDiscoveryRequest) {
	c.t.Helper()
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// subscribe subscribes wildcard to typeURL, with the versions the client
// claims to hold.
func (c *client) subscribe(typeURL string, initial map[string]string) {
	c.send(&discovery.DeltaDiscoveryRequest{
		Node:                    &core.Node{Id: "ztunnel~10.0.0.1~test.istio-system~istio-system.svc.cluster.local"},
		TypeUrl:                 typeURL,
		ResourceNamesSubscribe:  []string{"*"},
		InitialResourceVersions: initial,
	})
}

func (c *client) recv() *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errc:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(wait):
		c.t.Fatalf("no response within %v", wait)
	}
	return nil
}

// recvType receives the next response, which must be of typeURL, and ACKs
// it.
func (c *client) recvType(typeURL string) *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	r := c.recv()
	if r.GetTypeUrl() != typeURL {
		c.t.Fatalf("got a response of type %s, want %s", r.GetTypeUrl(), typeURL)
	}
	c.ack(r)
	return r
}

func (c *client) ack(r *discovery.DeltaDiscoveryResponse) {
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
}

// none asserts that no response arrives within d.
func (c *client) none(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected response: type %s, %d resources %v, removed %v", r.GetTypeUrl(), len(r.GetResources()), names(r), r.GetRemovedResources())
	case <-time.After(d):
	}
}

// syncAll subscribes to both types and returns the versions received.
func (c *client) syncAll(initial map[string]map[string]string) map[string]map[string]string {
	c.t.Helper()
	c.subscribe(xds.TypeAddress, initial[xds.TypeAddress])
	a := c.recvType(xds.TypeAddress)
	c.subscribe(xds.TypeAuthorization, initial[xds.TypeAuthorization])
	p := c.recvType(xds.TypeAuthorization)
	return map[string]map[string]string{xds.TypeAddress: versions(a), xds.TypeAuthorization: versions(p)}
}

func names(r *discovery.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.GetName())
	}
	slices.Sort(out)
	return out
}

func versions(r *discovery.DeltaDiscoveryResponse) map[string]string {
	out := map[string]string{}
	for _, res := range r.GetResources() {
		out[res.GetName()] = res.GetVersion()
	}
	return out
}

func sorted(m ...string) []string {
	s := slices.Clone(m)
	slices.Sort(s)
	return s
}

func keys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// checkContent decodes every resource of r and compares it with want.
func checkContent(t *testing.T, r *discovery.DeltaDiscoveryResponse, want xds.Resources) {
	t.Helper()
	for _, res := range r.GetResources() {
		if res.GetResource().GetTypeUrl() != r.GetTypeUrl() {
			t.Fatalf("%s: Any type %s in a %s response", res.GetName(), res.GetResource().GetTypeUrl(), r.GetTypeUrl())
		}
		var got, exp proto.Message
		switch r.GetTypeUrl() {
		case xds.TypeAddress:
			got, exp = &workloadapi.Address{}, want.Addresses[res.GetName()]
		case xds.TypeAuthorization:
			got, exp = &security.Authorization{}, want.Authorizations[res.GetName()]
		}
		if err := proto.Unmarshal(res.GetResource().GetValue(), got); err != nil {
			t.Fatalf("%s: %v", res.GetName(), err)
		}
		if !proto.Equal(got, exp) {
			t.Fatalf("%s: got %v, want %v", res.GetName(), got, exp)
		}
	}
}

// clone returns a shallow copy of r's maps, to derive a next state.
func clone(r xds.Resources) xds.Resources {
	return xds.Resources{Addresses: maps.Clone(r.Addresses), Authorizations: maps.Clone(r.Authorizations)}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
