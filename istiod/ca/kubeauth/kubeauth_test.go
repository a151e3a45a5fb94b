package kubeauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// fakePods is an in-memory Pods.
type fakePods struct {
	pods     []*corev1.Pod
	notReady bool
}

func (f *fakePods) Pod(ns, name string) (*corev1.Pod, error) {
	if f.notReady {
		return nil, errors.New("not synced")
	}
	for _, p := range f.pods {
		if p.Namespace == ns && p.Name == name {
			return p, nil
		}
	}
	return nil, nil
}

func (f *fakePods) PodsOnNode(node string) ([]*corev1.Pod, error) {
	if f.notReady {
		return nil, errors.New("not synced")
	}
	var out []*corev1.Pod
	for _, p := range f.pods {
		if p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	return out, nil
}

func pod(ns, name, uid, sa, node string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// jwt returns a token of JWT shape whose payload has exp (0: none).
func jwt(name string, exp int64) string {
	payload := fmt.Sprintf(`{"sub":%q}`, name)
	if exp != 0 {
		payload = fmt.Sprintf(`{"sub":%q,"exp":%d}`, name, exp)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

// reviewer answers TokenReviews from a table of tokens.
type reviewer struct {
	mu    sync.Mutex
	users map[string]authv1.UserInfo
	// auds: the audiences each token is for; "" means the API server's.
	auds  map[string][]string
	fail  error
	calls [][]string // spec.audiences per call
}

func (r *reviewer) react(action k8stesting.Action) (bool, runtime.Object, error) {
	tr := action.(k8stesting.CreateAction).GetObject().(*authv1.TokenReview)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, tr.Spec.Audiences)
	if r.fail != nil {
		return true, nil, r.fail
	}
	out := tr.DeepCopy()
	u, ok := r.users[tr.Spec.Token]
	if !ok {
		out.Status = authv1.TokenReviewStatus{Error: "invalid bearer token"}
		return true, out, nil
	}
	tokenAuds := r.auds[tr.Spec.Token]
	if len(tokenAuds) == 0 {
		tokenAuds = []string{""}
	}
	want := tr.Spec.Audiences
	if len(want) == 0 {
		want = []string{""}
	}
	var matched []string
	for _, a := range want {
		if slices.Contains(tokenAuds, a) {
			matched = append(matched, a)
		}
	}
	if len(matched) == 0 {
		out.Status = authv1.TokenReviewStatus{Error: "token audiences are invalid"}
		return true, out, nil
	}
	out.Status = authv1.TokenReviewStatus{Authenticated: true, User: u}
	if len(tr.Spec.Audiences) > 0 {
		out.Status.Audiences = matched
	}
	return true, out, nil
}

func (r *reviewer) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func saUser(ns, sa string, extra map[string]string) authv1.UserInfo {
	u := authv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + sa, Extra: map[string]authv1.ExtraValue{}}
	for k, v := range extra {
		u.Extra[k] = authv1.ExtraValue{v}
	}
	return u
}

var (
	tokZtunnelA      = jwt("zt-a", 0)     // ztunnel, node-name in extra
	tokZtunnelPodB   = jwt("zt-b", 0)     // ztunnel, pod-name only (pod on node-b)
	tokZtunnelStale  = jwt("zt-stale", 0) // ztunnel, bound pod replaced
	tokZtunnelUnboud = jwt("zt-unbound", 0)
	tokWorkload      = jwt("wl", 0)
	tokAdmin         = jwt("admin", 0)
	tokAPIAudience   = jwt("api-aud", 0) // workload token for the API server's audience
)

func newFixture(t *testing.T, opts Options) (*Authenticator, *reviewer, *fakePods) {
	t.Helper()
	rv := &reviewer{
		users: map[string]authv1.UserInfo{
			tokZtunnelA:      saUser("istio-system", "ztunnel", map[string]string{ExtraPodName: "ztunnel-a", ExtraPodUID: "uid-zt-a", ExtraNodeName: "node-a"}),
			tokZtunnelPodB:   saUser("istio-system", "ztunnel", map[string]string{ExtraPodName: "ztunnel-b", ExtraPodUID: "uid-zt-b"}),
			tokZtunnelStale:  saUser("istio-system", "ztunnel", map[string]string{ExtraPodName: "ztunnel-b", ExtraPodUID: "uid-old"}),
			tokZtunnelUnboud: saUser("istio-system", "ztunnel", nil),
			tokWorkload:      saUser("shop", "cart", map[string]string{ExtraPodName: "cart-1", ExtraNodeName: "node-b"}),
			tokAdmin:         {Username: "admin", Groups: []string{"system:masters"}},
			tokAPIAudience:   saUser("shop", "cart", nil),
		},
		auds: map[string][]string{
			tokZtunnelA: {"istio-ca"}, tokZtunnelPodB: {"istio-ca"}, tokZtunnelStale: {"istio-ca"},
			tokZtunnelUnboud: {"istio-ca"}, tokWorkload: {"istio-ca"}, tokAdmin: {"istio-ca"},
		},
	}
	cs := fake.NewClientset()
	cs.PrependReactor("create", "tokenreviews", rv.react)
	pods := &fakePods{pods: []*corev1.Pod{
		pod("istio-system", "ztunnel-a", "uid-zt-a", "ztunnel", "node-a", corev1.PodRunning),
		pod("istio-system", "ztunnel-b", "uid-zt-b", "ztunnel", "node-b", corev1.PodRunning),
		pod("shop", "cart-1", "uid-cart", "cart", "node-b", corev1.PodRunning),
		pod("shop", "web-1", "uid-web", "web", "node-a", corev1.PodRunning),
		pod("shop", "job-1", "uid-job", "batch", "node-a", corev1.PodSucceeded),
		pod("shop", "def-1", "uid-def", "", "node-a", corev1.PodPending),
	}}
	opts.Reviews = cs.AuthenticationV1().TokenReviews()
	opts.Pods = pods
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return a, rv, pods
}

func withToken(tok string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
}

func id(ns, sa string) spiffe.ID {
	return spiffe.ID{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
}

func TestDecisions(t *testing.T) {
	tests := []struct {
		name      string
		token     string // "" sends no authorization metadata
		id        spiffe.ID
		notReady  bool
		wantAuth  error // sentinel of Authenticate; errOther: any other error
		wantAuthz error
		caller    string
	}{
		{name: "ztunnel: pod with that SA on its node", token: tokZtunnelA, id: id("shop", "web"), caller: "ztunnel istio-system/ztunnel on node node-a"},
		{name: "ztunnel: SA only on another node (forged identity)", token: tokZtunnelA, id: id("shop", "cart"), wantAuthz: ca.ErrPermissionDenied},
		{name: "ztunnel: SA nowhere", token: tokZtunnelA, id: id("shop", "ghost"), wantAuthz: ca.ErrPermissionDenied},
		{name: "ztunnel: right SA, wrong namespace", token: tokZtunnelA, id: id("other", "web"), wantAuthz: ca.ErrPermissionDenied},
		{name: "ztunnel: only a finished pod with that SA", token: tokZtunnelA, id: id("shop", "batch"), wantAuthz: ca.ErrPermissionDenied},
		{name: "ztunnel: pod without serviceAccountName runs as default", token: tokZtunnelA, id: id("shop", "default")},
		{name: "ztunnel: its own identity", token: tokZtunnelA, id: id("istio-system", "ztunnel")},
		{name: "ztunnel: node from its bound pod", token: tokZtunnelPodB, id: id("shop", "cart"), caller: "ztunnel istio-system/ztunnel on node node-b"},
		{name: "ztunnel: node from its bound pod, other node's SA", token: tokZtunnelPodB, id: id("shop", "web"), wantAuthz: ca.ErrPermissionDenied},
		{name: "ztunnel: bound pod replaced", token: tokZtunnelStale, id: id("shop", "cart"), wantAuthz: ca.ErrPermissionDenied, caller: "ztunnel istio-system/ztunnel on an unknown node"},
		{name: "ztunnel: unbound token, other identity", token: tokZtunnelUnboud, id: id("shop", "web"), wantAuthz: ca.ErrPermissionDenied},
		{name: "ztunnel: unbound token, own identity", token: tokZtunnelUnboud, id: id("istio-system", "ztunnel")},
		{name: "ztunnel: pod cache not synced", token: tokZtunnelA, id: id("shop", "web"), notReady: true, wantAuthz: errOther},
		{name: "workload: own identity", token: tokWorkload, id: id("shop", "cart"), caller: "service account shop/cart (pod cart-1)"},
		{name: "workload: another identity on its node", token: tokWorkload, id: id("shop", "web"), wantAuthz: ca.ErrPermissionDenied},
		{name: "workload: same SA name, other namespace", token: tokWorkload, id: id("other", "cart"), wantAuthz: ca.ErrPermissionDenied},
		{name: "workload: token for the API server's audience", token: tokAPIAudience, id: id("shop", "cart")},
		{name: "no token", token: "", wantAuth: ca.ErrUnauthenticated},
		{name: "not a JWT", token: "static-token-0123456789", wantAuth: ca.ErrUnauthenticated},
		{name: "rejected by TokenReview", token: jwt("forged", 0), wantAuth: ca.ErrUnauthenticated},
		{name: "not a service account", token: tokAdmin, wantAuth: ca.ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _, pods := newFixture(t, Options{})
			pods.notReady = tt.notReady
			ctx := context.Background()
			if tt.token != "" {
				ctx = withToken(tt.token)
			}
			c, err := a.Authenticate(ctx)
			if !matches(err, tt.wantAuth) {
				t.Fatalf("Authenticate: %v, want %v", err, tt.wantAuth)
			}
			if err != nil {
				return
			}
			if tt.caller != "" && c.Name() != tt.caller {
				t.Errorf("Name() = %q, want %q", c.Name(), tt.caller)
			}
			err = c.Authorize(ctx, tt.id)
			if !matches(err, tt.wantAuthz) {
				t.Fatalf("Authorize(%s): %v, want %v", tt.id, err, tt.wantAuthz)
			}
		})
	}
}

// errOther stands for "an error that is neither sentinel" (Unavailable).
var errOther = errors.New("other")

func matches(err, want error) bool {
	switch want {
	case nil:
		return err == nil
	case errOther:
		return err != nil && !errors.Is(err, ca.ErrUnauthenticated) && !errors.Is(err, ca.ErrPermissionDenied)
	}
	return errors.Is(err, want)
}

func TestTokenReviewErrorIsNotAllow(t *testing.T) {
	a, rv, _ := newFixture(t, Options{})
	rv.fail = errors.New("connection refused")
	_, err := a.Authenticate(withToken(tokZtunnelA))
	if !matches(err, errOther) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("got %v, want a transient (Unavailable) error", err)
	}
	// Not cached: once the API server answers again, the token works.
	rv.fail = nil
	if _, err := a.Authenticate(withToken(tokZtunnelA)); err != nil {
		t.Fatal(err)
	}
}

func TestCache(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { return now }
	a, rv, _ := newFixture(t, Options{Now: clock})
	for range 3 {
		if _, err := a.Authenticate(withToken(tokZtunnelA)); err != nil {
			t.Fatal(err)
		}
	}
	if n := rv.count(); n != 1 {
		t.Errorf("%d TokenReviews for 3 requests, want 1", n)
	}
	if s := a.Stats(); s.Reviews != 1 || s.CacheHits != 2 {
		t.Errorf("stats %+v", s)
	}
	// Negative results are not cached.
	for range 2 {
		if _, err := a.Authenticate(withToken(jwt("bad", 0))); !errors.Is(err, ca.ErrUnauthenticated) {
			t.Fatal(err)
		}
	}
	before := rv.count()
	now = now.Add(DefaultCacheTTL + time.Second)
	if _, err := a.Authenticate(withToken(tokZtunnelA)); err != nil {
		t.Fatal(err)
	}
	if rv.count() != before+1 {
		t.Errorf("expired entry reused")
	}

	// A token expiring before the TTL is not reused past its exp.
	short := jwt("short", now.Add(10*time.Second).Unix())
	rv.users[short] = saUser("shop", "cart", nil)
	rv.auds[short] = []string{"istio-ca"}
	if _, err := a.Authenticate(withToken(short)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(11 * time.Second)
	before = rv.count()
	_, _ = a.Authenticate(withToken(short))
	if rv.count() != before+1 {
		t.Errorf("token reused from the cache past its exp")
	}

	// Size bound.
	b, rv2, _ := newFixture(t, Options{CacheSize: 2, Now: clock})
	toks := []string{tokZtunnelA, tokWorkload, tokZtunnelPodB}
	for _, tok := range toks {
		if _, err := b.Authenticate(withToken(tok)); err != nil {
			t.Fatal(err)
		}
	}
	b.mu.Lock()
	n := len(b.cache)
	b.mu.Unlock()
	if n > 2 || rv2.count() != 3 {
		t.Errorf("cache holds %d entries (max 2) after %d reviews", n, rv2.count())
	}
}

func TestAudiences(t *testing.T) {
	// Default: istio-ca first, then the API server's audiences.
	a, rv, _ := newFixture(t, Options{})
	if _, err := a.Authenticate(withToken(tokAPIAudience)); err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"istio-ca"}, nil}; fmt.Sprint(rv.calls) != fmt.Sprint(want) {
		t.Errorf("reviews %v, want %v", rv.calls, want)
	}
	// istio-ca only: a token for the API server is refused in one review.
	b, rv2, _ := newFixture(t, Options{Audiences: []string{"istio-ca"}})
	if _, err := b.Authenticate(withToken(tokAPIAudience)); !errors.Is(err, ca.ErrUnauthenticated) {
		t.Fatalf("got %v", err)
	}
	if rv2.count() != 1 {
		t.Errorf("%d reviews, want 1", rv2.count())
	}
	if _, err := b.Authenticate(withToken(tokWorkload)); err != nil {
		t.Fatal(err)
	}
	// Bad options.
	for _, o := range []Options{
		{Audiences: []string{"a b"}},
		{ZtunnelServiceAccount: "ztunnel"},
		{ZtunnelServiceAccount: "a/b/c"},
	} {
		o.Reviews, o.Pods = fake.NewClientset().AuthenticationV1().TokenReviews(), &fakePods{}
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

func TestCustomZtunnelServiceAccount(t *testing.T) {
	a, _, _ := newFixture(t, Options{ZtunnelServiceAccount: "shop/cart"})
	c, err := a.Authenticate(withToken(tokWorkload))
	if err != nil {
		t.Fatal(err)
	}
	// shop/cart is now the node proxy, on node-b (from the token).
	if err := c.Authorize(context.Background(), id("istio-system", "ztunnel")); err != nil {
		t.Errorf("pod on node-b: %v", err)
	}
	if err := c.Authorize(context.Background(), id("shop", "web")); !errors.Is(err, ca.ErrPermissionDenied) {
		t.Errorf("pod on node-a: %v", err)
	}
	// The default ztunnel SA is now an ordinary workload.
	z, err := a.Authenticate(withToken(tokZtunnelA))
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Authorize(context.Background(), id("shop", "web")); !errors.Is(err, ca.ErrPermissionDenied) {
		t.Errorf("default ztunnel SA not configured: %v", err)
	}
	// Node binding (ca.NodeBound): the node proxy's node, none for others.
	if n := c.(ca.NodeBound).Node(); n != "node-b" {
		t.Errorf("node proxy's Node() = %q, want node-b", n)
	}
	if n := z.(ca.NodeBound).Node(); n != "" {
		t.Errorf("ordinary workload's Node() = %q, want none", n)
	}
}
