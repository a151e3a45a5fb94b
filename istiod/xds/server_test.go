package xds_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/istiod/xds/xdstest"
)

func TestInitialSync(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(200, 20, 10)
	// A stream opened before the first Set waits for it.
	c := dial(t, d, true)
	c.subscribe(xds.TypeAddress, nil)
	c.none(50 * time.Millisecond)
	d.XDS.Set(mesh)
	a := c.recvType(xds.TypeAddress)
	c.subscribe(xds.TypeAuthorization, nil)
	p := c.recvType(xds.TypeAuthorization)
	if got, want := names(a), keys(mesh.Addresses); !slices.Equal(got, want) {
		t.Fatalf("addresses: got %d names, want %d", len(got), len(want))
	}
	if got, want := names(p), keys(mesh.Authorizations); !slices.Equal(got, want) {
		t.Fatalf("policies: got %v, want %v", got, want)
	}
	checkContent(t, a, mesh)
	checkContent(t, p, mesh)
	for _, r := range append(a.GetResources(), p.GetResources()...) {
		if r.GetVersion() == "" {
			t.Fatalf("%s has no version", r.GetName())
		}
	}
	if len(a.GetRemovedResources())+len(p.GetRemovedResources()) != 0 {
		t.Fatal("removals in an initial response")
	}
	// Setting the same state again (rebuilt from scratch) sends nothing.
	d.XDS.Set(xdstest.Mesh(200, 20, 10))
	d.XDS.Flush()
	c.none(50 * time.Millisecond)
	st := d.XDS.Stats()
	if st.Pushes != 2 || st.ACKs != 2 || st.StreamsActive != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestIncrementalAndRemoval(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(100, 10, 10)
	d.XDS.Set(mesh)
	c := dial(t, d, true)
	v0 := c.syncAll(nil)

	// One workload changes: only it is sent, with a new version.
	next := clone(mesh)
	w := xdstest.Workload(7, 10, 10, 1)
	next.Addresses[xds.AddressKey(w)] = w
	d.XDS.Set(next)
	r := c.recvType(xds.TypeAddress)
	if got := names(r); !slices.Equal(got, []string{xds.AddressKey(w)}) || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("update sent %v, removed %v; want only %s", got, r.GetRemovedResources(), xds.AddressKey(w))
	}
	if r.GetResources()[0].GetVersion() == v0[xds.TypeAddress][xds.AddressKey(w)] {
		t.Fatal("the changed resource kept its version")
	}
	checkContent(t, r, next)
	c.none(50 * time.Millisecond) // no Authorization response: nothing changed

	// A workload, a service and a policy go away.
	gone := xds.AddressKey(xdstest.Workload(3, 10, 10, 0))
	goneSvc := xds.AddressKey(xdstest.Service(4))
	gonePol := xds.AuthorizationKey(xdstest.Policy(5, 0))
	delete(next.Addresses, gone)
	delete(next.Addresses, goneSvc)
	delete(next.Authorizations, gonePol)
	d.XDS.Set(next)
	got := map[string][]string{}
	for range 2 {
		r := c.recv()
		c.ack(r)
		if len(r.GetResources()) != 0 {
			t.Fatalf("removal sent resources %v", names(r))
		}
		got[r.GetTypeUrl()] = sorted(r.GetRemovedResources()...)
	}
	if !slices.Equal(got[xds.TypeAddress], sorted(gone, goneSvc)) || !slices.Equal(got[xds.TypeAuthorization], []string{gonePol}) {
		t.Fatalf("removed %v", got)
	}
	c.none(50 * time.Millisecond)
}

func TestBurstIsOnePush(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{XDS: xds.Options{Debounce: 200 * time.Millisecond, MaxDebounce: 5 * time.Second}})
	mesh := xdstest.Mesh(200, 10, 10)
	d.XDS.Set(mesh)
	c := dial(t, d, true)
	c.syncAll(nil)
	// 100 states, each changing one more workload.
	states := make([]xds.Resources, 100)
	cur := mesh
	var changed []string
	for i := range states {
		cur = clone(cur)
		w := xdstest.Workload(i, 10, 10, 1)
		cur.Addresses[xds.AddressKey(w)] = w
		changed = append(changed, xds.AddressKey(w))
		states[i] = cur
	}
	before := d.XDS.Stats()
	for _, s := range states {
		d.XDS.Set(s)
	}
	r := c.recvType(xds.TypeAddress)
	if got := names(r); !slices.Equal(got, sorted(changed...)) {
		t.Fatalf("burst sent %d resources, want the %d changed", len(got), len(changed))
	}
	checkContent(t, r, cur)
	after := d.XDS.Stats()
	if n := after.Snapshots - before.Snapshots; n != 1 {
		t.Fatalf("%d snapshots published for one burst", n)
	}
	if n := after.Sets - before.Sets; n != 100 {
		t.Fatalf("%d Sets counted", n)
	}
	c.none(50 * time.Millisecond)
}

func TestNACKIsLoggedAndNotResent(t *testing.T) {
	d, logs := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(20, 2, 2)
	d.XDS.Set(mesh)
	c := dial(t, d, true)
	c.syncAll(nil)

	next := clone(mesh)
	w1 := xdstest.Workload(1, 2, 2, 1)
	next.Addresses[xds.AddressKey(w1)] = w1
	d.XDS.Set(next)
	r := c.recv()
	c.send(&discovery.DeltaDiscoveryRequest{
		TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "workload app-1 is bad: field x"},
	})
	eventually(t, "the NACK to be counted", func() bool { return d.XDS.Stats().NACKs == 1 })
	out := logs.String()
	for _, want := range []string{"NACK", xds.TypeAddress, "nonce=" + r.GetNonce(), "workload app-1 is bad: field x", "node=ztunnel~10.0.0.1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("NACK log lacks %q:\n%s", want, out)
		}
	}
	c.none(50 * time.Millisecond) // the rejected version is not resent

	// The next change sends only what changed since.
	w2 := xdstest.Workload(2, 2, 2, 1)
	next = clone(next)
	next.Addresses[xds.AddressKey(w2)] = w2
	d.XDS.Set(next)
	r = c.recvType(xds.TypeAddress)
	if got := names(r); !slices.Equal(got, []string{xds.AddressKey(w2)}) {
		t.Fatalf("after a NACK sent %v", got)
	}
}

func TestReconnectSendsOnlyTheDiff(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(100, 10, 5)
	d.XDS.Set(mesh)
	c1 := dial(t, d, true)
	have := c1.syncAll(nil)
	c1.close()

	// While the client is away: one workload changes, one goes, one
	// comes; policies stay.
	next := clone(mesh)
	changed := xdstest.Workload(10, 10, 5, 1)
	next.Addresses[xds.AddressKey(changed)] = changed
	gone := xds.AddressKey(xdstest.Workload(11, 10, 5, 0))
	delete(next.Addresses, gone)
	added := xdstest.Workload(1000, 10, 5, 0)
	next.Addresses[xds.AddressKey(added)] = added
	d.XDS.Set(next)
	d.XDS.Flush()

	c2 := dial(t, d, true)
	c2.subscribe(xds.TypeAddress, have[xds.TypeAddress])
	r := c2.recvType(xds.TypeAddress)
	if got, want := names(r), sorted(xds.AddressKey(changed), xds.AddressKey(added)); !slices.Equal(got, want) {
		t.Fatalf("after reconnect sent %v, want %v", got, want)
	}
	if got := r.GetRemovedResources(); !slices.Equal(got, []string{gone}) {
		t.Fatalf("after reconnect removed %v, want [%s]", got, gone)
	}
	checkContent(t, r, next)
	// The client has every policy: an empty response says it is in sync.
	c2.subscribe(xds.TypeAuthorization, have[xds.TypeAuthorization])
	p := c2.recvType(xds.TypeAuthorization)
	if len(p.GetResources())+len(p.GetRemovedResources()) != 0 {
		t.Fatalf("policies resent: %v, removed %v", names(p), p.GetRemovedResources())
	}

	// A restarted istiod (same content, new process) computes the same
	// versions: a client resuming there gets nothing new.
	d2, _ := startIstiod(t, xdstest.Options{})
	d2.XDS.Set(xdstest.Mesh(100, 10, 5))
	c3 := dial(t, d2, true)
	c3.subscribe(xds.TypeAuthorization, have[xds.TypeAuthorization])
	if p := c3.recvType(xds.TypeAuthorization); len(p.GetResources())+len(p.GetRemovedResources()) != 0 {
		t.Fatalf("restarted istiod resent policies: %v", names(p))
	}
}

func TestExplicitNames(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(10, 2, 2)
	d.XDS.Set(mesh)
	c := dial(t, d, true)
	w := xds.AddressKey(xdstest.Workload(1, 2, 2, 0))
	c.send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n"}, TypeUrl: xds.TypeAddress, ResourceNamesSubscribe: []string{w, "ns-0/missing"}})
	r := c.recvType(xds.TypeAddress)
	if !slices.Equal(names(r), []string{w}) || !slices.Equal(r.GetRemovedResources(), []string{"ns-0/missing"}) {
		t.Fatalf("sent %v, removed %v", names(r), r.GetRemovedResources())
	}
	// Other workloads' changes are not sent; the subscribed one's are.
	next := clone(mesh)
	for _, i := range []int{1, 2} {
		a := xdstest.Workload(i, 2, 2, 1)
		next.Addresses[xds.AddressKey(a)] = a
	}
	d.XDS.Set(next)
	if r := c.recvType(xds.TypeAddress); !slices.Equal(names(r), []string{w}) || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("sent %v, removed %v", names(r), r.GetRemovedResources())
	}
	// Subscribing again resends the resource even though it is current.
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeAddress, ResourceNamesSubscribe: []string{w}})
	if r := c.recvType(xds.TypeAddress); !slices.Equal(names(r), []string{w}) {
		t.Fatalf("resubscribe sent %v", names(r))
	}
	c.none(50 * time.Millisecond)
}

func TestStreamRateLimit(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{XDS: xds.Options{StreamRate: 0.001, StreamBurst: 1}})
	d.XDS.Set(xdstest.Mesh(1, 1, 1))
	c1 := dial(t, d, true)
	c1.syncAll(nil)
	c2 := dial(t, d, true)
	// The server may refuse the stream before the request is sent.
	_ = c2.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeAddress})
	select {
	case err := <-c2.errc:
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("over the limit: %v, want ResourceExhausted", err)
		}
	case <-time.After(wait):
		t.Fatal("stream over the limit was served")
	}
	if st := d.XDS.Stats(); st.StreamsRejected != 1 || st.StreamsTotal != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAuthorizeHook(t *testing.T) {
	errNo := errors.New("no token")
	d, _ := startIstiod(t, xdstest.Options{XDS: xds.Options{Authorize: func(context.Context) error { return errNo }}})
	d.XDS.Set(xdstest.Mesh(1, 1, 1))
	c := dial(t, d, true)
	_ = c.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeAddress})
	select {
	case err := <-c.errc:
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no token") {
			t.Fatalf("got %v, want PermissionDenied: no token", err)
		}
	case <-time.After(wait):
		t.Fatal("unauthorized stream served")
	}
}

func TestSlowClientDoesNotBlockOthers(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{XDS: xds.Options{Debounce: -1}})
	const n = 2000
	mesh := xdstest.Mesh(n, 50, 10)
	d.XDS.Set(mesh)
	// The slow client subscribes and never reads: its push blocks in
	// flow control.
	slow := dial(t, d, false)
	slow.subscribe(xds.TypeAddress, nil)
	fast := dial(t, d, true)
	fast.syncAll(nil)
	cur := mesh
	for rev := 1; rev <= 10; rev++ {
		cur = clone(cur)
		for i := range n {
			a := xdstest.Workload(i, 50, 10, rev)
			cur.Addresses[xds.AddressKey(a)] = a
		}
		d.XDS.Set(cur)
		r := fast.recvType(xds.TypeAddress)
		if len(r.GetResources()) != n {
			t.Fatalf("rev %d: fast client got %d resources, want %d", rev, len(r.GetResources()), n)
		}
		checkContent(t, r, cur)
	}
	if st := d.XDS.Stats(); st.StreamsActive != 2 {
		t.Fatalf("stats %+v", st)
	}
	// The slow client, reading at last, gets the latest state (the
	// intermediate ones coalesce).
	go func() {
		for {
			r, err := slow.stream.Recv()
			if err != nil {
				slow.errc <- err
				return
			}
			slow.resps <- r
		}
	}()
	got := map[string]string{}
	want := map[string]string{}
	for _, r := range versionsOf(t, d, cur) {
		want[r[0]] = r[1]
	}
	for !mapsEqual(got, want) {
		r := slow.recvType(xds.TypeAddress)
		for _, res := range r.GetResources() {
			got[res.GetName()] = res.GetVersion()
		}
		for _, name := range r.GetRemovedResources() {
			delete(got, name)
		}
	}
}

// versionsOf returns the [name, version] pairs a fresh client gets for
// Address.
func versionsOf(t *testing.T, d *xdstest.Istiod, _ xds.Resources) [][2]string {
	c := dial(t, d, true)
	c.subscribe(xds.TypeAddress, nil)
	r := c.recvType(xds.TypeAddress)
	var out [][2]string
	for _, res := range r.GetResources() {
		out = append(out, [2]string{res.GetName(), res.GetVersion()})
	}
	c.close()
	return out
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestScale is a short correctness run at a moderate size: 10 clients sync
// 2,000 resources and all get one change.
func TestScale(t *testing.T) {
	d, _ := startIstiod(t, xdstest.Options{})
	mesh := xdstest.Mesh(1800, 150, 50)
	d.XDS.Set(mesh)
	var cs []*client
	for range 10 {
		c := dial(t, d, true)
		c.subscribe(xds.TypeAddress, nil)
		c.subscribe(xds.TypeAuthorization, nil)
		cs = append(cs, c)
	}
	for _, c := range cs {
		got := map[string][]string{}
		for range 2 {
			r := c.recv()
			c.ack(r)
			got[r.GetTypeUrl()] = names(r)
			checkContent(t, r, mesh)
		}
		if !slices.Equal(got[xds.TypeAddress], keys(mesh.Addresses)) || !slices.Equal(got[xds.TypeAuthorization], keys(mesh.Authorizations)) {
			t.Fatalf("client got %d addresses and %d policies", len(got[xds.TypeAddress]), len(got[xds.TypeAuthorization]))
		}
	}
	next := clone(mesh)
	p := xdstest.Policy(3, 1)
	next.Authorizations[xds.AuthorizationKey(p)] = p
	d.XDS.Set(next)
	for _, c := range cs {
		if r := c.recvType(xds.TypeAuthorization); !slices.Equal(names(r), []string{xds.AuthorizationKey(p)}) {
			t.Fatalf("change sent %v", names(r))
		}
	}
	if st := d.XDS.Stats(); st.NACKs != 0 || st.StreamsActive != 10 {
		t.Fatalf("stats %+v", st)
	}
}
