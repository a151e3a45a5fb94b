package xds_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/istiod/ca"
	istiodxds "github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/istiod/xds/xdstest"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

const (
	wait  = 15 * time.Second
	token = "ztunnel-token-0123456789"
)

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

func requireToken(ctx context.Context) error {
	tok, err := ca.BearerToken(ctx)
	if err != nil {
		return err
	}
	if tok != token {
		return errors.New("unknown token")
	}
	return nil
}

func startIstiod(t *testing.T, opts xdstest.Options) *xdstest.Istiod {
	t.Helper()
	if opts.XDS.Logger == nil {
		opts.XDS.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.XDS.Authorize == nil {
		opts.XDS.Authorize = requireToken
	}
	d, err := xdstest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d
}

type ztunnel struct {
	client *xds.Client
	store  *state.Store
	logs   *logBuffer
	cancel context.CancelFunc
	done   chan struct{}
}

func startClient(t *testing.T, d *xdstest.Istiod, name string) *ztunnel {
	t.Helper()
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	store := state.New(state.Options{Logger: log})
	c, err := xds.New(xds.Options{
		Address: d.Addr, ServerName: xdstest.ServerName, RootCAs: d.RootCAs,
		Token:          func(context.Context) (string, error) { return token, nil },
		NodeID:         "ztunnel~10.0.0.1~" + name + ".istio-system~istio-system.svc.cluster.local",
		NodeMetadata:   map[string]string{"NODE_NAME": name},
		Store:          store,
		InitialBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	z := &ztunnel{client: c, store: store, logs: logs, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(z.done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-z.done
		c.Close()
	})
	return z
}

func (z *ztunnel) synced(t *testing.T) {
	t.Helper()
	select {
	case <-z.client.Synced():
	case <-time.After(wait):
		t.Fatalf("not synced within %v; stats %+v; logs:\n%s", wait, z.client.Stats(), z.logs.String())
	}
}

// reference is the store a ztunnel holds when it has exactly r.
func reference(t *testing.T, r istiodxds.Resources) string {
	t.Helper()
	var snap state.Snapshot
	for _, a := range r.Addresses {
		a = proto.Clone(a).(*workloadapi.Address)
		if w := a.GetWorkload(); w != nil {
			snap.Workloads = append(snap.Workloads, w)
		} else {
			snap.Services = append(snap.Services, a.GetService())
		}
	}
	for _, p := range r.Authorizations {
		snap.Policies = append(snap.Policies, proto.Clone(p).(*security.Authorization))
	}
	s := state.New(state.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := s.Set(snap); err != nil {
		t.Fatalf("reference state: %v", err)
	}
	return dump(s)
}

func dump(s *state.Store) string {
	d := s.Dump()
	d.Version = 0
	b, err := json.Marshal(d)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func converges(t *testing.T, z *ztunnel, want string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for dump(z.store) != want {
		if time.Now().After(deadline) {
			t.Fatalf("store did not converge within %v: has %d workloads, %d services, %d policies; stats %+v; logs:\n%s",
				wait, len(z.store.Load().Workloads()), len(z.store.Load().Services()), len(z.store.Load().Policies()), z.client.Stats(), z.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func clone(r istiodxds.Resources) istiodxds.Resources {
	out := istiodxds.Resources{Addresses: map[string]*workloadapi.Address{}, Authorizations: map[string]*security.Authorization{}}
	for k, v := range r.Addresses {
		out.Addresses[k] = v
	}
	for k, v := range r.Authorizations {
		out.Authorizations[k] = v
	}
	return out
}

func TestConvergesAndPropagates(t *testing.T) {
	d := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(300, 30, 10)
	d.XDS.Set(mesh)
	z := startClient(t, d, "node-a")
	z.synced(t)
	if got, want := dump(z.store), reference(t, mesh); got != want {
		t.Fatal("synced store differs from istiod's state")
	}
	// A workload changes, a service goes, a policy changes.
	next := clone(mesh)
	w := xdstest.Workload(5, 30, 10, 1)
	next.Addresses[istiodxds.AddressKey(w)] = w
	delete(next.Addresses, istiodxds.AddressKey(xdstest.Service(3)))
	p := xdstest.Policy(2, 1)
	next.Authorizations[istiodxds.AuthorizationKey(p)] = p
	d.XDS.Set(next)
	converges(t, z, reference(t, next))
	if st := z.client.Stats(); st.NACKs != 0 || st.Streams != 1 {
		t.Fatalf("client stats %+v", st)
	}
}

func TestUnauthorizedClientRetries(t *testing.T) {
	d := startIstiod(t, xdstest.Options{XDS: istiodxds.Options{Authorize: func(context.Context) error { return errors.New("token expired") }}})
	d.XDS.Set(xdstest.Mesh(3, 1, 1))
	z := startClient(t, d, "node-a")
	deadline := time.Now().Add(wait)
	for z.client.Stats().Failures < 2 {
		if time.Now().After(deadline) {
			t.Fatal("client did not retry")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-z.client.Synced():
		t.Fatal("synced without being authorized")
	default:
	}
}

func TestIstiodDownKeepsStateThenResumes(t *testing.T) {
	d := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(300, 30, 10)
	d.XDS.Set(mesh)
	z := startClient(t, d, "node-a")
	z.synced(t)
	before := dump(z.store)

	d.Stop()
	deadline := time.Now().Add(wait)
	for z.client.Stats().Failures < 2 { // noticed, and failed to reconnect
		if time.Now().After(deadline) {
			t.Fatal("client did not notice istiod going away")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if dump(z.store) != before {
		t.Fatal("store changed while istiod was down")
	}
	if z.store.Load().WorkloadByUID(istiodxds.AddressKey(xdstest.Workload(1, 30, 10, 0))) == nil {
		t.Fatal("store lost its state while istiod was down")
	}

	// istiod comes back (same address and root) with a changed state.
	next := clone(mesh)
	w := xdstest.Workload(9, 30, 10, 1)
	next.Addresses[istiodxds.AddressKey(w)] = w
	delete(next.Addresses, istiodxds.AddressKey(xdstest.Workload(10, 30, 10, 0)))
	d2 := startIstiod(t, xdstest.Options{Addr: d.Addr, Authority: d.Authority})
	d2.XDS.Set(next)
	converges(t, z, reference(t, next))
	// It resumed: only the changed workload was sent, and the removal.
	deadline = time.Now().Add(wait)
	for d2.XDS.Stats().ACKs < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no ACKs after resuming")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := d2.XDS.Stats(); st.ResourcesSent != 1 || st.RemovalsSent != 1 {
		t.Fatalf("resuming sent %d resources and %d removals, want 1 and 1", st.ResourcesSent, st.RemovalsSent)
	}
}

func TestResourceExhaustedBacksOff(t *testing.T) {
	d := startIstiod(t, xdstest.Options{XDS: istiodxds.Options{StreamRate: 20, StreamBurst: 1}})
	mesh := xdstest.Mesh(50, 5, 5)
	d.XDS.Set(mesh)
	want := reference(t, mesh)
	var zs []*ztunnel
	for i := range 5 {
		zs = append(zs, startClient(t, d, fmt.Sprintf("node-%d", i)))
	}
	var exhausted uint64
	for _, z := range zs {
		z.synced(t)
		converges(t, z, want)
		exhausted += z.client.Stats().ResourceExhausted
	}
	if exhausted == 0 || d.XDS.Stats().StreamsRejected == 0 {
		t.Fatalf("no stream was rate limited (clients saw %d, server rejected %d)", exhausted, d.XDS.Stats().StreamsRejected)
	}
}

func TestInvalidResourceIsNACKedAndLastGoodKept(t *testing.T) {
	d := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(20, 2, 2)
	d.XDS.Set(mesh)
	z := startClient(t, d, "node-a")
	z.synced(t)

	// Workload 1 gets an invalid address; workload 2 a valid change.
	next := clone(mesh)
	bad := xdstest.Workload(1, 2, 2, 1)
	bad.GetWorkload().Addresses = [][]byte{{1, 2, 3}}
	next.Addresses[istiodxds.AddressKey(bad)] = bad
	good := xdstest.Workload(2, 2, 2, 1)
	next.Addresses[istiodxds.AddressKey(good)] = good
	d.XDS.Set(next)

	deadline := time.Now().Add(wait)
	for d.XDS.Stats().NACKs < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no NACK; client logs:\n%s", z.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The good change applied; the bad workload kept its last good version.
	want := clone(next)
	want.Addresses[istiodxds.AddressKey(bad)] = mesh.Addresses[istiodxds.AddressKey(bad)]
	converges(t, z, reference(t, want))
	if st := z.client.Stats(); st.NACKs != 1 {
		t.Fatalf("client stats %+v", st)
	}
}

// TestScale is a short correctness run: 10 ztunnels sync 2,000 resources
// and get a change.
func TestScale(t *testing.T) {
	d := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(1800, 150, 50)
	d.XDS.Set(mesh)
	want := reference(t, mesh)
	var zs []*ztunnel
	for i := range 10 {
		zs = append(zs, startClient(t, d, fmt.Sprintf("node-%d", i)))
	}
	for _, z := range zs {
		z.synced(t)
		converges(t, z, want)
	}
	next := clone(mesh)
	w := xdstest.Workload(100, 150, 50, 1)
	next.Addresses[istiodxds.AddressKey(w)] = w
	d.XDS.Set(next)
	want = reference(t, next)
	for _, z := range zs {
		converges(t, z, want)
	}
}
