package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	gbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/ztunnel/identity"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Defaults for Options.
const (
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 15 * time.Second
	// DefaultMaxMessageSize bounds one response: a full state of 11,001
	// addresses is about 3.3 MB, far above gRPC's 4 MiB default only for
	// large meshes; 512 MiB leaves room for those.
	DefaultMaxMessageSize = 512 << 20
	// maxNACKMessage caps the error text sent back in a NACK.
	maxNACKMessage = 4096
)

// subscribed are the types the client subscribes to (wildcard), in order.
var subscribed = [...]string{TypeAddress, TypeAuthorization}

// Options configure a Client. Address, Store and one of RootCAs or
// RootCAFile are required.
type Options struct {
	// Address is istiod's xDS host:port (15012).
	Address string
	// ServerName is verified against istiod's serving certificate; default
	// the host part of Address.
	ServerName string
	// RootCAFile is a PEM file with the roots that sign istiod's serving
	// certificate; RootCAs, if set, is used instead.
	RootCAFile string
	RootCAs    *x509.CertPool
	// Token, if set, supplies "authorization: Bearer <token>" on every
	// stream (as the CA client sends it).
	Token identity.TokenFunc
	// NodeID and NodeMetadata identify this ztunnel to istiod (Istio's
	// ztunnel sends "ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>"
	// and metadata such as NAMESPACE and NODE_NAME).
	NodeID       string
	NodeMetadata map[string]string
	// ClusterID, if set, is sent as the "ClusterID" request header with the
	// token (identity.ClusterIDHeader), as Istio's ztunnel does: Istio's
	// istiod picks the API server that checks the token by it.
	ClusterID string
	// Store receives the state. The client owns the resources it received
	// from xDS: it tracks their versions to resume after a reconnect, so
	// other writers must not write them.
	Store *state.Store
	// InitialBackoff and MaxBackoff bound the delay between connection
	// attempts (exponential, with jitter); defaults DefaultInitialBackoff
	// and DefaultMaxBackoff.
	InitialBackoff, MaxBackoff time.Duration
	// MaxMessageSize bounds one response; default DefaultMaxMessageSize.
	MaxMessageSize int
	// Logger, default slog.Default.
	Logger *slog.Logger
	// DialOptions are appended to the client's (keepalives, tests).
	DialOptions []grpc.DialOption
}

// Stats are the client's counters.
type Stats struct {
	// Streams is the number of streams opened; Failures those that ended
	// with an error, of which ResourceExhausted were refused by istiod's
	// rate limit.
	Streams, Failures, ResourceExhausted uint64
	// Responses received; ACKs and NACKs sent.
	Responses, ACKs, NACKs uint64
}

// Client is ztunnel's workload discovery client: it keeps Store equal to
// istiod's state over delta ADS. Run it once; Synced and Stats are safe for
// concurrent use.
type Client struct {
	opts   Options
	log    *slog.Logger
	conn   *grpc.ClientConn
	ads    discovery.AggregatedDiscoveryServiceClient
	node   *core.Node
	synced chan struct{}
	once   sync.Once

	// versions[i] holds the version of every resource of subscribed[i]
	// the store has from xDS. Owned by Run.
	versions [len(subscribed)]map[string]string

	streams, failures, exhausted atomic.Uint64
	responses, acks, nacks       atomic.Uint64
}

// New prepares a client; it connects when Run is called.
func New(opts Options) (*Client, error) {
	if opts.Address == "" {
		return nil, errors.New("xDS client: no istiod address configured")
	}
	if opts.Store == nil {
		return nil, errors.New("xDS client: no state store to write to")
	}
	roots, serverName, err := identity.ServerTrust(opts.RootCAs, opts.RootCAFile, opts.ServerName, opts.Address)
	if err != nil {
		return nil, fmt.Errorf("xDS client: %w", err)
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = DefaultInitialBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MaxBackoff < opts.InitialBackoff {
		return nil, fmt.Errorf("xDS client: MaxBackoff %v is below InitialBackoff %v", opts.MaxBackoff, opts.InitialBackoff)
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = DefaultMaxMessageSize
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	node := &core.Node{Id: opts.NodeID}
	if len(opts.NodeMetadata) > 0 {
		md := make(map[string]any, len(opts.NodeMetadata))
		for k, v := range opts.NodeMetadata {
			md[k] = v
		}
		s, err := structpb.NewStruct(md)
		if err != nil {
			return nil, fmt.Errorf("xDS client: node metadata: %w", err)
		}
		node.Metadata = s
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12})),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(opts.MaxMessageSize)),
		// The channel's own reconnect backoff follows ours (gRPC's
		// default starts at 1 s).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           gbackoff.Config{BaseDelay: opts.InitialBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: opts.MaxBackoff},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if opts.Token != nil {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: opts.Token, clusterID: opts.ClusterID}))
	}
	conn, err := grpc.NewClient(opts.Address, append(dial, opts.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("xDS client: %w", err)
	}
	c := &Client{
		opts: opts, log: opts.Logger.With("istiod", opts.Address), conn: conn,
		ads: discovery.NewAggregatedDiscoveryServiceClient(conn), node: node, synced: make(chan struct{}),
	}
	for i := range c.versions {
		c.versions[i] = map[string]string{}
	}
	return c, nil
}

// Close releases the connection; call it after Run returned.
func (c *Client) Close() error { return c.conn.Close() }

// Synced is closed once the first full state of every type is in the store
// (readiness). It stays closed across reconnects.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Streams: c.streams.Load(), Failures: c.failures.Load(), ResourceExhausted: c.exhausted.Load(),
		Responses: c.responses.Load(), ACKs: c.acks.Load(), NACKs: c.nacks.Load(),
	}
}

// Run keeps a stream to istiod open and applies what it receives, until
// ctx ends (then it returns nil). When the stream fails it reconnects with
// exponential backoff and jitter, resuming with the versions it holds; the
// store keeps the last good state meanwhile. Call Run once.
func (c *Client) Run(ctx context.Context) error {
	attempt := 0
	for {
		progressed, err := c.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.failures.Add(1)
		if progressed {
			attempt = 0
		}
		delay := backoff(c.opts.InitialBackoff, c.opts.MaxBackoff, attempt)
		attempt++
		if status.Code(err) == codes.ResourceExhausted {
			c.exhausted.Add(1)
			c.log.Info("istiod is limiting new xDS streams; retrying", "in", delay, "error", err)
		} else {
			c.log.Warn("xDS stream to istiod failed; serving the last known state and retrying", "in", delay, "error", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// backoff is the delay before attempt n (0-based): exponential from initial,
// capped at max, with jitter in [d/2, d).
func backoff(initial, max time.Duration, n int) time.Duration {
	d := initial
	for range n {
		if d >= max/2 {
			d = max
			break
		}
		d *= 2
	}
	d = min(d, max)
	return d/2 + rand.N(d/2+1)
}

// stream runs one stream until it fails; progressed reports whether it got
// at least one response.
func (c *Client) stream(ctx context.Context) (progressed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.streams.Add(1)
	s, err := c.ads.DeltaAggregatedResources(sctx)
	if err != nil {
		return false, err
	}
	for i, typeURL := range subscribed {
		req := &discovery.DeltaDiscoveryRequest{
			TypeUrl:                 typeURL,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: maps.Clone(c.versions[i]),
		}
		if i == 0 {
			req.Node = c.node
		}
		if err := s.Send(req); err != nil {
			return false, recvErr(s, err)
		}
	}
	var first [len(subscribed)]bool
	for {
		resp, err := s.Recv()
		if err != nil {
			return progressed, err
		}
		progressed = true
		c.responses.Add(1)
		idx := -1
		for i, u := range subscribed {
			if u == resp.GetTypeUrl() {
				idx = i
			}
		}
		var reply *discovery.DeltaDiscoveryRequest
		if idx < 0 {
			reply = c.nack(resp, fmt.Errorf("type %s was not subscribed to; ztunnel subscribes to %v", resp.GetTypeUrl(), subscribed))
		} else {
			reply = c.apply(idx, resp)
			first[idx] = true
		}
		if err := s.Send(reply); err != nil {
			return progressed, recvErr(s, err)
		}
		if first == [len(subscribed)]bool{true, true} {
			c.once.Do(func() {
				c.log.Info("xDS state synced", "workloads", len(c.opts.Store.Load().Workloads()), "policies", len(c.versions[1]))
				close(c.synced)
			})
		}
	}
}

// recvErr returns the stream's status when Send failed because it ended.
func recvErr(s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := s.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// apply writes one response to the store and returns the ACK or NACK.
func (c *Client) apply(idx int, resp *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryRequest {
	d := decode(resp)
	var storeErr error
	if len(d.removed) > 0 || len(d.versions) > 0 {
		storeErr = c.opts.Store.Apply(d.delta)
	}
	rejected := map[string]bool{}
	for _, n := range d.rejected(storeErr) {
		rejected[n] = true
	}
	vers := c.versions[idx]
	for _, n := range d.removed {
		delete(vers, n)
	}
	for n, v := range d.versions {
		if !rejected[n] {
			vers[n] = v
		}
	}
	if err := errors.Join(append(d.errs, storeErr)...); err != nil {
		return c.nack(resp, err)
	}
	c.acks.Add(1)
	return &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
}

func (c *Client) nack(resp *discovery.DeltaDiscoveryResponse, err error) *discovery.DeltaDiscoveryRequest {
	c.nacks.Add(1)
	msg := err.Error()
	if len(msg) > maxNACKMessage {
		msg = msg[:maxNACKMessage] + "..."
	}
	c.log.Warn("rejecting xDS response (NACK); the last good state of those resources stays",
		"type", resp.GetTypeUrl(), "nonce", resp.GetNonce(), "error", msg)
	return &discovery.DeltaDiscoveryRequest{
		TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg},
	}
}

// bearer sends "authorization: Bearer <token>" (and "ClusterID" when set)
// on every stream, over TLS only.
type bearer struct {
	token     identity.TokenFunc
	clusterID string
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := b.token(ctx)
	if err != nil {
		return nil, err
	}
	md := map[string]string{"authorization": "Bearer " + tok}
	if b.clusterID != "" {
		md[identity.ClusterIDHeader] = b.clusterID
	}
	return md, nil
}

func (bearer) RequireTransportSecurity() bool { return true }
