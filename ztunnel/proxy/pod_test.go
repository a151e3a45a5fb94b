package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/testpki"
	"github.com/ambit-mesh/ambit/ztunnel/hbone"
	"github.com/ambit-mesh/ambit/ztunnel/limit"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// The pod under test serves 127.0.0.1: its HBONE listener is on loopback.
const podYAML = `
workloads:
- uid: pod-uid
  name: echo
  namespace: b
  addresses: ["127.0.0.1"]
  serviceAccount: echo
  tunnelProtocol: HBONE
  node: node-a
`

type testCerts struct {
	t  testing.TB
	ca *testpki.CA
}

func (c testCerts) GetCertificate(_ context.Context, id spiffe.ID) (*tls.Certificate, error) {
	leaf := c.ca.LeafFor(c.t, id)
	return &leaf, nil
}

// blockingDialer stands in for the pod's socket factory: every dial blocks
// until its context ends, counting dials in flight and cancelled.
type blockingDialer struct {
	started, inFlight, cancelled atomic.Int64
}

func (d *blockingDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	d.started.Add(1)
	d.inFlight.Add(1)
	defer d.inFlight.Add(-1)
	<-ctx.Done()
	d.cancelled.Add(1)
	return nil, ctx.Err()
}

type podHarness struct {
	p      *PodProxy
	hbone  netip.AddrPort
	plain  net.Addr
	out    net.Addr
	ca     *testpki.CA
	met    *metrics.Metrics
	dialer *blockingDialer
	podID  spiffe.ID
}

func startPod(t *testing.T, in, out limit.Config) *podHarness {
	t.Helper()
	snap, err := state.ParseConfig([]byte(podYAML))
	if err != nil {
		t.Fatal(err)
	}
	st := state.New(state.Options{})
	if err := st.Set(snap); err != nil {
		t.Fatal(err)
	}
	ca := testpki.NewCA(t, "cluster.local")
	var ls [3]net.Listener
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
	}
	met := metrics.New()
	d := &blockingDialer{}
	p, err := Start(Config{
		Node: "node-a", TrustDomain: "cluster.local", State: st, Certs: testCerts{t, ca},
		TrustBundle: func() *x509.CertPool { return ca.Pool() }, Metrics: met,
		Logger:         slog.New(slog.DiscardHandler),
		ConnectTimeout: time.Minute, InboundLimits: in, OutboundLimits: out,
	}, Pod{UID: "pod-uid", Name: "echo", Namespace: "b", ServiceAccount: "echo"},
		Listeners{Outbound: ls[0], Inbound: ls[1], HBONE: ls[2]}, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &podHarness{
		p: p, hbone: addrOf(ls[2].Addr()), plain: ls[1].Addr(), out: ls[0].Addr(),
		ca: ca, met: met, dialer: d, podID: p.Identity(),
	}
}

func (h *podHarness) pool(t *testing.T) (*hbone.Pool, spiffe.ID) {
	t.Helper()
	src := mustID(t, "spiffe://cluster.local/ns/a/sa/client")
	pool, err := hbone.NewPool(hbone.PoolConfig{
		TrustBundle: func() *x509.CertPool { return h.ca.Pool() },
		ClientCertificate: func(id spiffe.ID) (*tls.Certificate, error) {
			leaf := h.ca.LeafFor(t, id)
			return &leaf, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return pool, src
}

func (h *podHarness) refused(direction, reason string) float64 {
	var m dto.Metric
	if err := h.met.RefusedCounter().WithLabelValues("b", "echo", direction, reason).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A stream reset by its client cancels the dial behind it.
func TestResetStreamCancelsItsDial(t *testing.T) {
	h := startPod(t, limit.Config{}, limit.Config{})
	pool, src := h.pool(t)
	const n = 20
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := pool.Dial(ctx, hbone.Key{Source: src, Destination: h.podID, Addr: h.hbone},
				netip.MustParseAddrPort("127.0.0.1:8080"), hbone.Headers{})
			if err == nil {
				t.Error("dial answered although the app dial never completes")
			}
		}()
	}
	waitFor(t, "all dials in flight", func() bool { return h.dialer.inFlight.Load() == n })
	cancel() // the client resets every stream
	wg.Wait()
	waitFor(t, "every dial cancelled", func() bool { return h.dialer.cancelled.Load() == n && h.dialer.inFlight.Load() == 0 })
}

// Inbound admissions per source: past MaxInProgress streams are refused 503
// at once, and a reset gives the slot back.
func TestInboundLimitPerSource(t *testing.T) {
	h := startPod(t, limit.Config{MaxInProgress: 3}, limit.Config{})
	pool, src := h.pool(t)
	key := hbone.Key{Source: src, Destination: h.podID, Addr: h.hbone}
	authority := netip.MustParseAddrPort("127.0.0.1:8080")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = pool.Dial(ctx, key, authority, hbone.Headers{}) }()
	}
	waitFor(t, "three dials in flight", func() bool { return h.dialer.inFlight.Load() == 3 })
	_, err := pool.Dial(context.Background(), key, authority, hbone.Headers{})
	var re *hbone.RejectedError
	if !errors.As(err, &re) || re.Status != http.StatusServiceUnavailable {
		t.Fatalf("fourth stream: %v; want 503", err)
	}
	if got := h.refused("inbound", "limit_in_progress"); got != 1 {
		t.Fatalf("limit_in_progress refusals = %v; want 1", got)
	}
	cancel()
	wg.Wait()
	waitFor(t, "slots given back", func() bool {
		ip, open := h.p.inLimits.Counts(netip.MustParseAddr("127.0.0.1"))
		return ip == 0 && open == 0
	})
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go func() { _, _ = pool.Dial(ctx2, key, authority, hbone.Headers{}) }()
	waitFor(t, "a new stream admitted", func() bool { return h.dialer.started.Load() == 4 })
}

// A CONNECT for one of ztunnel's in-pod ports is refused 400 and never
// dialed.
func TestHBONEAuthorityOwnPortRefused(t *testing.T) {
	h := startPod(t, limit.Config{}, limit.Config{})
	pool, src := h.pool(t)
	for _, port := range []uint16{15001, 15006, 15008} {
		_, err := pool.Dial(context.Background(), hbone.Key{Source: src, Destination: h.podID, Addr: h.hbone},
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), hbone.Headers{})
		var re *hbone.RejectedError
		if !errors.As(err, &re) || re.Status != http.StatusBadRequest {
			t.Fatalf("authority port %d: %v; want 400", port, err)
		}
	}
	if h.dialer.started.Load() != 0 {
		t.Fatalf("%d dials made for refused streams", h.dialer.started.Load())
	}
	if got := h.refused("inbound", "self_call"); got != 3 {
		t.Fatalf("self_call refusals = %v; want 3", got)
	}
}

// Outbound admissions per pod: past the rate the connection is reset at
// once and counted.
func TestOutboundRateLimit(t *testing.T) {
	h := startPod(t, limit.Config{}, limit.Config{Rate: 0.001, Burst: 2})
	for i := range 5 {
		c, err := net.Dial("tcp", h.out.String())
		if err != nil {
			continue // reset before connect returned: ended too
		}
		// Every connection ends: the first two for lack of an original
		// destination (loopback, no NAT), the rest refused.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("connection %d: read data", i)
		}
		c.Close()
	}
	waitFor(t, "three rate refusals", func() bool { return h.refused("outbound", "limit_rate") == 3 })
}
