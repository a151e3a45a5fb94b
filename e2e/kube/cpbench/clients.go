package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
)

// The clients process: EnvRole=clients makes the program (or the test
// binary, through TestMain) run the simulated ztunnels instead of the
// orchestrator. Its configuration comes as JSON in EnvClientConfig; commands
// come one per line on stdin and each is answered by one JSON line on
// stdout (progress goes to stderr):
//
//	probe      one client syncs, then disconnects (the server has the full state)
//	sync       M clients connect at once; per-client sync times
//	change <i> change i through the API server; per-client delivery times
//	quit       clean up (a policy left by the changes) and exit
const (
	EnvRole         = "AMBIT_CPBENCH_ROLE"
	EnvClientConfig = "AMBIT_CPBENCH_CLIENTS"
	roleClients     = "clients"
)

// clientConfig is what the clients process needs to know.
type clientConfig struct {
	Tag        string // server tag, in policy names
	Addr       string // xDS server host:port (TLS)
	ServerName string
	RootCAFile string
	Kubeconfig string
	Clients    int
	Pods       int
	Services   int
	Namespaces int
	Nodes      int
	Window     int
	// SyncTimeout bounds probe and sync; ChangeTimeout each change.
	SyncTimeout   time.Duration
	ChangeTimeout time.Duration
}

// ztunnel's service account: the servers authorize its token.
const (
	ztunnelNS = pilot.Namespace
	ztunnelSA = "ztunnel"
)

type syncReply struct {
	// Sync is each client's time from its first stream open to holding
	// every bench Address, in seconds (-1: not within the timeout).
	Sync []float64
	// Retries counts streams that failed and were reopened (e.g.
	// ResourceExhausted from the server's new-stream rate limit).
	Retries int64
	Err     string `json:",omitempty"`
}

type changeReply struct {
	What string
	// Write is the API call's duration, seconds.
	Write float64
	// Latency is, per client, the time from the start of the API write to
	// the response holding the change, seconds (-1: missed within the
	// timeout).
	Latency []float64
	Err     string `json:",omitempty"`
}

func clientsMain() error {
	var cfg clientConfig
	if err := json.Unmarshal([]byte(os.Getenv(EnvClientConfig)), &cfg); err != nil {
		return fmt.Errorf("%s: %w", EnvClientConfig, err)
	}
	return runClientsProcess(context.Background(), cfg, os.Stdin, os.Stdout, os.Stderr)
}

func runClientsProcess(ctx context.Context, cfg clientConfig, in io.Reader, out, logw io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 100, 200
	rc.UserAgent = "ambit-cpbench-clients"
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ic, err := istioclient.NewForConfig(rc)
	if err != nil {
		return err
	}
	pem, err := os.ReadFile(cfg.RootCAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", cfg.RootCAFile)
	}
	tlsConf := &tls.Config{RootCAs: pool, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12}

	// One token per client, as each ztunnel has its own (not pod-bound).
	tokens := make([]string, cfg.Clients+1)
	for i := range tokens {
		tr, err := kc.CoreV1().ServiceAccounts(ztunnelNS).CreateToken(ctx, ztunnelSA, tokenRequest(), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("token for %s/%s: %w", ztunnelNS, ztunnelSA, err)
		}
		tokens[i] = tr.Status.Token
	}
	target := cfg.Pods + cfg.Services
	enc := json.NewEncoder(out)
	sc := bufio.NewScanner(in)
	var fleet *fleet
	defer func() {
		if fleet != nil {
			fleet.close()
		}
	}()
	changes := 0
	for sc.Scan() {
		cmd := strings.Fields(sc.Text())
		if len(cmd) == 0 {
			continue
		}
		switch cmd[0] {
		case "probe":
			f := newFleet(cfg, tlsConf, tokens[cfg.Clients:], target, "probe")
			r := f.waitSynced(ctx, cfg.SyncTimeout)
			f.close()
			if err := enc.Encode(r); err != nil {
				return err
			}
		case "sync":
			if fleet != nil {
				return errors.New("sync twice")
			}
			fleet = newFleet(cfg, tlsConf, tokens[:cfg.Clients], target, "ztunnel")
			if err := enc.Encode(fleet.waitSynced(ctx, cfg.SyncTimeout)); err != nil {
				return err
			}
		case "change":
			if fleet == nil || len(cmd) != 2 {
				return errors.New("change before sync, or without its index")
			}
			i, err := strconv.Atoi(cmd[1])
			if err != nil {
				return err
			}
			c := planChange(cfg, cfg.Tag, i)
			if err := enc.Encode(fleet.change(ctx, c, kc, ic, cfg.ChangeTimeout)); err != nil {
				return err
			}
			changes = max(changes, i+1)
		case "quit":
			if ns, name, ok := leftoverPolicy(cfg, cfg.Tag, changes); ok {
				_ = ic.SecurityV1().AuthorizationPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{})
			}
			return nil
		default:
			return fmt.Errorf("unknown command %q", sc.Text())
		}
	}
	return sc.Err()
}

func tokenRequest() *authnv1.TokenRequest {
	return &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{pilot.CAAudience}, ExpirationSeconds: new(int64(3600)),
	}}
}

// pending is the change the fleet waits for.
type pending struct {
	name    []byte
	removed bool
	since   time.Time
	lat     []atomic.Int64 // nanoseconds + 1; 0 = not yet
	left    atomic.Int64
	done    chan struct{}
}

// fleet is M lite delta ADS clients: each subscribes wildcard to Address
// and Authorization, scans responses in the wire format (resource names,
// removed names, type URL, nonce; bodies skipped), ACKs everything, counts
// the bench's Address names until it has them all, and afterwards only
// watches for the pending change's name. No store is built.
type fleet struct {
	target  int
	start   time.Time
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	conns   []*grpc.ClientConn
	synced  []atomic.Int64 // sync time in ns + 1; 0 = not yet
	left    atomic.Int64
	done    chan struct{}
	retries atomic.Int64
	pending atomic.Pointer[pending]
	lastErr atomic.Pointer[error]
	seed    maphash.Seed
}

func newFleet(cfg clientConfig, tlsConf *tls.Config, tokens []string, target int, kind string) *fleet {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{
		target: target, cancel: cancel, synced: make([]atomic.Int64, len(tokens)),
		done: make(chan struct{}), seed: maphash.MakeSeed(),
	}
	f.left.Store(int64(len(tokens)))
	if len(tokens) == 0 {
		close(f.done)
	}
	f.start = time.Now()
	for i, tok := range tokens {
		conn, err := grpc.NewClient("passthrough:///"+cfg.Addr,
			grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30), grpc.ForceCodec(liteCodec{})),
			grpc.WithInitialWindowSize(int32(cfg.Window)), grpc.WithInitialConnWindowSize(int32(cfg.Window)))
		if err != nil {
			// NewClient fails only on bad options: count the client as
			// never synced.
			continue
		}
		f.conns = append(f.conns, conn)
		ip := nodeIP(i % max(cfg.Nodes, 1)).String()
		id, md := pilot.ZtunnelNode(ip, fmt.Sprintf("%s-%d", kind, i), ztunnelNS, ztunnelSA, nodeName(i%max(cfg.Nodes, 1)))
		f.wg.Go(func() { f.client(ctx, conn, i, tok, id, md) })
	}
	return f
}

func (f *fleet) markSynced(i int) {
	if f.synced[i].CompareAndSwap(0, int64(time.Since(f.start))+1) {
		if f.left.Add(-1) == 0 {
			close(f.done)
		}
	}
}

// client runs one simulated ztunnel: streams are reopened with exponential
// backoff (50 ms doubling to 2 s, ±25 % jitter) after any failure, as
// ztunnel does after ResourceExhausted.
func (f *fleet) client(ctx context.Context, conn *grpc.ClientConn, i int, token, id string, md map[string]string) {
	names := map[uint64]struct{}{}
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := f.stream(ctx, conn, i, token, id, md, &names)
		if ctx.Err() != nil {
			return
		}
		f.lastErr.Store(&err)
		f.retries.Add(1)
		d := time.Duration(float64(backoff) * (0.75 + rand.Float64()/2))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (f *fleet) stream(ctx context.Context, conn *grpc.ClientConn, i int, token, id string, md map[string]string, names *map[uint64]struct{}) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources")
	if err != nil {
		return err
	}
	mdv := map[string]any{}
	for k, v := range md {
		mdv[k] = v
	}
	meta, err := structpb.NewStruct(mdv)
	if err != nil {
		return err
	}
	for j, t := range []string{pilot.TypeAddress, pilot.TypeAuthorization} {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{"*"}}
		if j == 0 {
			req.Node = &core.Node{Id: id, Metadata: meta}
		}
		if err := st.SendMsg(req); err != nil {
			return err
		}
	}
	resp := &liteResp{f: f, client: i}
	for {
		if err := st.RecvMsg(resp); err != nil {
			return err
		}
		if *names != nil && resp.typeURL == pilot.TypeAddress {
			for _, h := range resp.hashes {
				(*names)[h] = struct{}{}
			}
			for _, h := range resp.removedHashes {
				delete(*names, h)
			}
			if len(*names) >= f.target {
				f.markSynced(i)
				*names = nil // the set is only for the initial sync
			}
		}
		if err := st.SendMsg(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.typeURL, ResponseNonce: resp.nonce}); err != nil {
			return err
		}
	}
}

func (f *fleet) waitSynced(ctx context.Context, timeout time.Duration) syncReply {
	t := time.NewTimer(timeout)
	defer t.Stop()
	var r syncReply
	select {
	case <-f.done:
	case <-t.C:
		r.Err = fmt.Sprintf("%d of %d clients not synced within %s", f.left.Load(), len(f.synced), timeout)
		if e := f.lastErr.Load(); e != nil {
			r.Err += fmt.Sprintf(" (last stream error: %v)", *e)
		}
	case <-ctx.Done():
		r.Err = ctx.Err().Error()
	}
	for i := range f.synced {
		r.Sync = append(r.Sync, nsToSeconds(f.synced[i].Load()))
	}
	r.Retries = f.retries.Load()
	return r
}

func nsToSeconds(v int64) float64 {
	if v == 0 {
		return -1
	}
	return time.Duration(v - 1).Seconds()
}

// change makes c through the API server and waits until every client has
// received it.
func (f *fleet) change(ctx context.Context, c change, kc kubernetes.Interface, ic istioclient.Interface, timeout time.Duration) changeReply {
	p := &pending{name: []byte(c.Name), removed: c.Removed, lat: make([]atomic.Int64, len(f.synced)), done: make(chan struct{})}
	p.left.Store(int64(len(f.synced)))
	r := changeReply{What: c.What}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p.since = time.Now()
	f.pending.Store(p)
	defer f.pending.Store(nil)
	if err := c.apply(wctx, kc, ic); err != nil {
		r.Err = fmt.Sprintf("%s: %v", c.What, err)
	} else {
		r.Write = time.Since(p.since).Seconds()
		select {
		case <-p.done:
		case <-wctx.Done():
			r.Err = fmt.Sprintf("%s: %d of %d clients did not receive %s within %s", c.What, p.left.Load(), len(f.synced), c.Name, timeout)
		}
	}
	for i := range p.lat {
		r.Latency = append(r.Latency, nsToSeconds(p.lat[i].Load()))
	}
	return r
}

// seen is called by the codec for each resource (or removed) name of a
// response as it arrives.
func (f *fleet) seen(client int, name []byte, removed bool) {
	p := f.pending.Load()
	if p == nil || removed != p.removed || !bytes.Equal(name, p.name) {
		return
	}
	if p.lat[client].CompareAndSwap(0, int64(time.Since(p.since))+1) {
		if p.left.Add(-1) == 0 {
			close(p.done)
		}
	}
}

func (f *fleet) close() {
	f.cancel()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.wg.Wait()
}

// liteResp is what a client keeps of a DeltaDiscoveryResponse: the type,
// the nonce and the hashes of the bench's resource names (only while the
// initial sync counts them).
type liteResp struct {
	f              *fleet
	client         int
	typeURL, nonce string
	hashes         []uint64
	removedHashes  []uint64
}

// liteCodec marshals requests as protobuf and scans responses.
type liteCodec struct{}

func (liteCodec) Name() string { return "proto" }

func (liteCodec) Marshal(v any) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }

var benchNS = []byte(nsPrefix)

func (liteCodec) Unmarshal(b []byte, v any) error {
	r := v.(*liteResp)
	r.hashes, r.removedHashes = r.hashes[:0], r.removedHashes[:0]
	r.typeURL, r.nonce = "", ""
	counting := r.f.synced[r.client].Load() == 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		val, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 2: // resources
			name := resourceName(val)
			r.f.seen(r.client, name, false)
			if counting && bytes.Contains(name, benchNS) {
				r.hashes = append(r.hashes, maphash.Bytes(r.f.seed, name))
			}
		case 4:
			r.typeURL = string(val)
		case 5:
			r.nonce = string(val)
		case 6: // removed_resources
			r.f.seen(r.client, val, true)
			if counting && bytes.Contains(val, benchNS) {
				r.removedHashes = append(r.removedHashes, maphash.Bytes(r.f.seed, val))
			}
		}
	}
	return nil
}

// resourceName returns field 3 (name) of an encoded discovery Resource.
func resourceName(b []byte) []byte {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		if num == 3 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			return v
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil
		}
		b = b[m:]
	}
	return nil
}
