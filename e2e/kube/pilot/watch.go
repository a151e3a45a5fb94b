package pilot

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// The workload discovery type URLs (DESIGN.md section 2).
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// Resources is one client's view of workload discovery, keyed by xDS
// resource name.
type Resources struct {
	Addresses      map[string]*workloadapi.Address
	Authorizations map[string]*security.Authorization
}

// Workloads returns the Address resources that are workloads, by name.
func (r Resources) Workloads() map[string]*workloadapi.Workload {
	out := map[string]*workloadapi.Workload{}
	for k, a := range r.Addresses {
		if w := a.GetWorkload(); w != nil {
			out[k] = w
		}
	}
	return out
}

// Services returns the Address resources that are services, by name.
func (r Resources) Services() map[string]*workloadapi.Service {
	out := map[string]*workloadapi.Service{}
	for k, a := range r.Addresses {
		if s := a.GetService(); s != nil {
			out[k] = s
		}
	}
	return out
}

// WatchOptions say how to reach an istiod and who the client claims to be.
type WatchOptions struct {
	// Address is host:port of the xDS server.
	Address string
	// TLS, when set, secures the connection (pilot's 15012); nil is
	// plaintext (pilot's 15010, which authenticates no one).
	TLS *tls.Config
	// Token, when set, is sent as "authorization: Bearer <token>".
	Token string
	// NodeID and Metadata identify the client (see ZtunnelNode).
	NodeID   string
	Metadata map[string]string
}

// ZtunnelNode returns the node id and metadata Istio's ztunnel sends:
// "ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>", with the
// metadata pilot reads (NAMESPACE and SERVICE_ACCOUNT must match the token's
// identity when pilot checks xDS identities).
func ZtunnelNode(ip, pod, namespace, serviceAccount, node string) (string, map[string]string) {
	id := fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.%s", ip, pod, namespace, namespace, DomainSuffix)
	return id, map[string]string{
		"NAMESPACE":       namespace,
		"SERVICE_ACCOUNT": serviceAccount,
		"NODE_NAME":       node,
		"CLUSTER_ID":      ClusterID,
		"POD_NAME":        pod,
		"INSTANCE_IPS":    ip,
	}
}

// Watcher holds one delta ADS stream subscribed wildcard to Address and
// Authorization and the state it received. Its methods are safe for
// concurrent use.
type Watcher struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	res     Resources
	synced  map[string]bool
	nacks   []string
	err     error
}

// Watch connects and subscribes. The stream runs until Close or until it
// fails (the failure is then returned by WaitFor).
func Watch(opts WatchOptions) (*Watcher, error) {
	creds := insecure.NewCredentials()
	if opts.TLS != nil {
		creds = credentials.NewTLS(opts.TLS)
	}
	conn, err := grpc.NewClient("passthrough:///"+opts.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connecting to xDS server %s: %w", opts.Address, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	if opts.Token != "" {
		sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+opts.Token)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, fmt.Errorf("opening delta ADS stream to %s: %w", opts.Address, err)
	}
	md := map[string]any{}
	for k, v := range opts.Metadata {
		md[k] = v
	}
	meta, err := structpb.NewStruct(md)
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	node := &core.Node{Id: opts.NodeID, Metadata: meta}
	w := &Watcher{
		conn:    conn,
		cancel:  cancel,
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		res: Resources{
			Addresses:      map[string]*workloadapi.Address{},
			Authorizations: map[string]*security.Authorization{},
		},
		synced: map[string]bool{},
	}
	for i, t := range []string{TypeAddress, TypeAuthorization} {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{"*"}}
		if i == 0 {
			req.Node = node
		}
		if err := stream.Send(req); err != nil {
			cancel()
			_ = conn.Close()
			return nil, fmt.Errorf("subscribing to %s at %s: %w", t, opts.Address, err)
		}
	}
	go w.run(stream)
	return w, nil
}

func (w *Watcher) run(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) {
	defer close(w.done)
	for {
		resp, err := stream.Recv()
		if err != nil {
			w.fail(fmt.Errorf("delta ADS stream: %w", err))
			return
		}
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}
		if err := w.apply(resp); err != nil {
			w.mu.Lock()
			w.nacks = append(w.nacks, err.Error())
			w.mu.Unlock()
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		}
		if err := stream.Send(ack); err != nil {
			w.fail(fmt.Errorf("acking %s: %w", resp.TypeUrl, err))
			return
		}
	}
}

func (w *Watcher) apply(resp *discovery.DeltaDiscoveryResponse) error {
	var errs []error
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range resp.Resources {
		if r.Resource == nil {
			errs = append(errs, fmt.Errorf("resource %s has no body", r.Name))
			continue
		}
		switch resp.TypeUrl {
		case TypeAddress:
			a := &workloadapi.Address{}
			if err := r.Resource.UnmarshalTo(a); err != nil {
				errs = append(errs, fmt.Errorf("decoding Address %s: %w", r.Name, err))
				continue
			}
			w.res.Addresses[r.Name] = a
		case TypeAuthorization:
			a := &security.Authorization{}
			if err := r.Resource.UnmarshalTo(a); err != nil {
				errs = append(errs, fmt.Errorf("decoding Authorization %s: %w", r.Name, err))
				continue
			}
			w.res.Authorizations[r.Name] = a
		default:
			errs = append(errs, fmt.Errorf("unexpected type %s", resp.TypeUrl))
		}
	}
	for _, name := range resp.RemovedResources {
		switch resp.TypeUrl {
		case TypeAddress:
			delete(w.res.Addresses, name)
		case TypeAuthorization:
			delete(w.res.Authorizations, name)
		}
	}
	w.synced[resp.TypeUrl] = true
	close(w.changed)
	w.changed = make(chan struct{})
	return errors.Join(errs...)
}

func (w *Watcher) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// Resources returns a copy of the current state (the messages are shared:
// do not modify them).
func (w *Watcher) Resources() Resources {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Resources{
		Addresses:      maps.Clone(w.res.Addresses),
		Authorizations: maps.Clone(w.res.Authorizations),
	}
}

// NACKs returns the error texts of the responses the watcher rejected.
func (w *Watcher) NACKs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.nacks...)
}

// WaitFor waits until both types have had a response and check passes on
// the state, re-checking after every change. It returns check's last error
// when ctx ends first, or the stream's error when the stream failed.
func (w *Watcher) WaitFor(ctx context.Context, what string, check func(Resources) error) error {
	for {
		w.mu.Lock()
		ch, serr := w.changed, w.err
		synced := w.synced[TypeAddress] && w.synced[TypeAuthorization]
		w.mu.Unlock()
		var last error
		if !synced {
			last = errors.New("no response of both types yet")
		} else if last = check(w.Resources()); last == nil {
			return nil
		}
		if serr != nil {
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, serr, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-ch:
		}
	}
}

// Close ends the stream and the connection.
func (w *Watcher) Close() error {
	w.cancel()
	err := w.conn.Close()
	<-w.done
	return err
}

// Names lists the keys of m, sorted.
func Names[T any](m map[string]T) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// HasAll returns an error naming the keys of want missing from m.
func HasAll[T any](m map[string]T, want ...string) error {
	var missing []string
	for _, k := range want {
		if _, ok := m[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s (have %s)", strings.Join(missing, ", "), strings.Join(Names(m), ", "))
	}
	return nil
}
