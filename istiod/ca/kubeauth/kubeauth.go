package kubeauth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	typedauthv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Defaults of Options.
const (
	DefaultZtunnelServiceAccount = "istio-system/ztunnel"
	// DefaultAudience is the audience Istio's ztunnel requests for its CA
	// token.
	DefaultAudience = "istio-ca"
	// AudienceAPIServer in Options.Audiences accepts tokens for the API
	// server's own audiences (reviewed without spec.audiences).
	AudienceAPIServer = "@api-server"
	DefaultCacheTTL   = time.Minute
	DefaultCacheSize  = 4096
)

// DefaultAudiences are the audiences accepted when Options.Audiences is empty.
var DefaultAudiences = []string{DefaultAudience, AudienceAPIServer}

// Keys of TokenReview user.extra set for pod-bound service-account tokens.
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
)

// serviceAccountPrefix starts the user name of a service-account token.
const serviceAccountPrefix = "system:serviceaccount:"

// Pods is the pod cache node authorization reads (istiod/config/kube.Source).
type Pods interface {
	// Pod returns the pod namespace/name, or nil when there is none. An
	// error means the cache cannot answer (not synced).
	Pod(namespace, name string) (*corev1.Pod, error)
	// PodsOnNode (ca.NodePods) returns the pods whose spec.nodeName is
	// node. An error means the cache cannot answer (not synced).
	ca.NodePods
}

// Options configure an Authenticator.
type Options struct {
	// Reviews creates TokenReviews (clientset.AuthenticationV1().TokenReviews()).
	// Required.
	Reviews typedauthv1.TokenReviewInterface
	// Pods is the pod cache. Required.
	Pods Pods
	// ZtunnelServiceAccount is "namespace/name" of the service account
	// that may request the identities of the pods on its node; default
	// DefaultZtunnelServiceAccount.
	ZtunnelServiceAccount string
	// Audiences a token may be for; default DefaultAudiences. See the
	// package doc for AudienceAPIServer.
	Audiences []string
	// CacheTTL bounds how long a positive TokenReview is reused; default
	// DefaultCacheTTL. Negative disables the cache.
	CacheTTL time.Duration
	// CacheSize bounds the cached reviews; default DefaultCacheSize.
	CacheSize int
	// Logger receives refusals; default slog.Default.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Authenticator authenticates CA callers by TokenReview. Safe for
// concurrent use.
type Authenticator struct {
	reviews   typedauthv1.TokenReviewInterface
	pods      Pods
	ztNS      string
	ztName    string
	explicit  []string // audiences reviewed together
	apiServer bool     // AudienceAPIServer listed
	ttl       time.Duration
	size      int
	log       *slog.Logger
	now       func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cacheEntry

	reviewCount, cacheHits atomic.Uint64
}

var (
	_ ca.Authenticator = (*Authenticator)(nil)
	_ ca.Caller        = (*caller)(nil)
	_ ca.NodeBound     = (*caller)(nil)
)

// reviewed is what a successful TokenReview says about a token.
type reviewed struct {
	namespace, serviceAccount string
	podName, podUID, node     string
}

type cacheEntry struct {
	r       reviewed
	expires time.Time
}

// Stats are an Authenticator's counters.
type Stats struct {
	// Reviews is the number of TokenReviews sent; CacheHits the
	// authentications answered from the cache.
	Reviews, CacheHits uint64
}

// New validates opts and returns an Authenticator.
func New(opts Options) (*Authenticator, error) {
	if opts.Reviews == nil {
		return nil, errors.New("kubeauth: Options.Reviews is required")
	}
	if opts.Pods == nil {
		return nil, errors.New("kubeauth: Options.Pods is required")
	}
	if opts.ZtunnelServiceAccount == "" {
		opts.ZtunnelServiceAccount = DefaultZtunnelServiceAccount
	}
	ns, name, err := ParseServiceAccount(opts.ZtunnelServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("kubeauth: ztunnel service account: %w", err)
	}
	if len(opts.Audiences) == 0 {
		opts.Audiences = DefaultAudiences
	}
	a := &Authenticator{
		reviews: opts.Reviews, pods: opts.Pods, ztNS: ns, ztName: name,
		ttl: opts.CacheTTL, size: opts.CacheSize, log: opts.Logger, now: opts.Now,
		cache: map[[sha256.Size]byte]cacheEntry{},
	}
	for _, aud := range opts.Audiences {
		switch {
		case aud == AudienceAPIServer:
			a.apiServer = true
		case strings.TrimSpace(aud) == "" || strings.ContainsAny(aud, " \t,"):
			return nil, fmt.Errorf("kubeauth: audience %q is empty or holds white space or a comma", aud)
		case !slices.Contains(a.explicit, aud):
			a.explicit = append(a.explicit, aud)
		}
	}
	if a.ttl == 0 {
		a.ttl = DefaultCacheTTL
	}
	if a.size <= 0 {
		a.size = DefaultCacheSize
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.now == nil {
		a.now = time.Now
	}
	return a, nil
}

// ParseServiceAccount splits "namespace/name".
func ParseServiceAccount(s string) (namespace, name string, err error) {
	ns, n, ok := strings.Cut(s, "/")
	if !ok || ns == "" || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("%q is not namespace/name (e.g. %s)", s, DefaultZtunnelServiceAccount)
	}
	return ns, n, nil
}

// Stats returns the counters.
func (a *Authenticator) Stats() Stats {
	return Stats{Reviews: a.reviewCount.Load(), CacheHits: a.cacheHits.Load()}
}

// Authenticate implements ca.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context) (ca.Caller, error) {
	token, err := ca.BearerToken(ctx)
	if err != nil {
		a.log.Warn("CA request refused", "reason", err.Error())
		return nil, err
	}
	r, err := a.review(ctx, token)
	if err != nil {
		if errors.Is(err, ca.ErrUnauthenticated) {
			a.log.Warn("CA request refused", "reason", err.Error())
		} else {
			a.log.Warn("cannot verify a CA caller's token", "error", err.Error())
		}
		return nil, err
	}
	c := &caller{a: a, r: r, ztunnel: r.namespace == a.ztNS && r.serviceAccount == a.ztName}
	if c.ztunnel {
		c.node, c.nodeWhy = a.callerNode(r)
	}
	return c, nil
}

// review returns the TokenReview verdict on token, from the cache when a
// fresh positive one is there.
func (a *Authenticator) review(ctx context.Context, token string) (reviewed, error) {
	if strings.Count(token, ".") != 2 {
		return reviewed{}, fmt.Errorf("%w: the bearer token is not a JWT; send the service account's token (a projected token for audience %s)", ca.ErrUnauthenticated, DefaultAudience)
	}
	key := sha256.Sum256([]byte(token))
	now := a.now()
	if a.ttl > 0 {
		a.mu.Lock()
		e, ok := a.cache[key]
		if ok && now.Before(e.expires) {
			a.mu.Unlock()
			a.cacheHits.Add(1)
			return e.r, nil
		}
		if ok {
			delete(a.cache, key)
		}
		a.mu.Unlock()
	}

	var (
		status authv1.TokenReviewStatus
		err    error
	)
	if len(a.explicit) > 0 {
		status, err = a.send(ctx, token, a.explicit)
		if err != nil {
			return reviewed{}, err
		}
	}
	if !status.Authenticated && a.apiServer {
		first := status
		status, err = a.send(ctx, token, nil)
		if err != nil {
			return reviewed{}, err
		}
		if !status.Authenticated && first.Error != "" {
			status = first
		}
	}
	if !status.Authenticated {
		why := status.Error
		if why == "" {
			why = "token not authenticated"
		}
		return reviewed{}, fmt.Errorf("%w: TokenReview (audiences %s): %s", ca.ErrUnauthenticated, a.audienceList(), why)
	}
	r, err := fromUser(status.User)
	if err != nil {
		return reviewed{}, err
	}
	if a.ttl > 0 {
		exp := now.Add(a.ttl)
		if t, ok := tokenExpiry(token); ok && t.Before(exp) {
			exp = t
		}
		a.store(key, cacheEntry{r: r, expires: exp}, now)
	}
	return r, nil
}

func (a *Authenticator) audienceList() string {
	l := slices.Clone(a.explicit)
	if a.apiServer {
		l = append(l, "the API server's")
	}
	return strings.Join(l, ", ")
}

func (a *Authenticator) send(ctx context.Context, token string, audiences []string) (authv1.TokenReviewStatus, error) {
	a.reviewCount.Add(1)
	tr, err := a.reviews.Create(ctx, &authv1.TokenReview{Spec: authv1.TokenReviewSpec{Token: token, Audiences: audiences}}, metav1.CreateOptions{})
	if err != nil {
		return authv1.TokenReviewStatus{}, fmt.Errorf("TokenReview: %w", err)
	}
	st := tr.Status
	if st.Authenticated && len(audiences) > 0 && len(st.Audiences) > 0 {
		// The API server lists the requested audiences the token is
		// for; none of ours means it is not for us.
		ok := false
		for _, aud := range st.Audiences {
			ok = ok || slices.Contains(audiences, aud)
		}
		if !ok {
			st = authv1.TokenReviewStatus{Error: fmt.Sprintf("token audiences %v are none of %v", st.Audiences, audiences)}
		}
	}
	return st, nil
}

// fromUser reads a service-account user.
func fromUser(u authv1.UserInfo) (reviewed, error) {
	rest, ok := strings.CutPrefix(u.Username, serviceAccountPrefix)
	ns, name, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || name == "" {
		return reviewed{}, fmt.Errorf("%w: token of user %q is not a service-account token", ca.ErrUnauthenticated, u.Username)
	}
	one := func(k string) string {
		if v := u.Extra[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	return reviewed{namespace: ns, serviceAccount: name, podName: one(ExtraPodName), podUID: one(ExtraPodUID), node: one(ExtraNodeName)}, nil
}

// tokenExpiry reads the exp claim of a JWT (already verified by the API
// server; read only to bound the cache).
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *float64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(int64(*claims.Exp), 0), true
}

// store caches e, evicting expired entries and then arbitrary ones when
// full.
func (a *Authenticator) store(key [sha256.Size]byte, e cacheEntry, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= a.size {
		for k, v := range a.cache {
			if !now.Before(v.expires) {
				delete(a.cache, k)
			}
		}
		for k := range a.cache {
			if len(a.cache) < a.size {
				break
			}
			delete(a.cache, k)
		}
	}
	a.cache[key] = e
}

// callerNode finds a ztunnel caller's node: from the token, else from the
// pod the token is bound to. It returns "" and the reason when unknown.
func (a *Authenticator) callerNode(r reviewed) (node, why string) {
	if r.node != "" {
		return r.node, ""
	}
	if r.podName == "" {
		return "", "its token is bound to no pod (use a projected service-account token, as kubelet mounts)"
	}
	pod, err := a.pods.Pod(r.namespace, r.podName)
	switch {
	case err != nil:
		return "", fmt.Sprintf("looking up its pod %s/%s: %v", r.namespace, r.podName, err)
	case pod == nil:
		return "", fmt.Sprintf("its pod %s/%s is not known (yet)", r.namespace, r.podName)
	case r.podUID != "" && string(pod.UID) != r.podUID:
		return "", fmt.Sprintf("its pod %s/%s has uid %s, not the token's %s (the pod was replaced)", r.namespace, r.podName, pod.UID, r.podUID)
	case pod.Spec.NodeName == "":
		return "", fmt.Sprintf("its pod %s/%s is not scheduled on a node", r.namespace, r.podName)
	}
	return pod.Spec.NodeName, ""
}

// caller is an authenticated service account.
type caller struct {
	a       *Authenticator
	r       reviewed
	ztunnel bool
	node    string
	nodeWhy string // why node is "" (ztunnel only)
}

func (c *caller) Name() string {
	sa := c.r.namespace + "/" + c.r.serviceAccount
	switch {
	case c.ztunnel && c.node != "":
		return "ztunnel " + sa + " on node " + c.node
	case c.ztunnel:
		return "ztunnel " + sa + " on an unknown node"
	case c.r.podName != "":
		return "service account " + sa + " (pod " + c.r.podName + ")"
	}
	return "service account " + sa
}

// Authorize implements ca.Caller.
func (c *caller) Authorize(_ context.Context, id spiffe.ID) error {
	if id.Namespace == c.r.namespace && id.ServiceAccount == c.r.serviceAccount {
		return nil
	}
	if !c.ztunnel {
		return c.refuse(id, fmt.Errorf("%w: service account %s/%s may request only its own identity, not %s",
			ca.ErrPermissionDenied, c.r.namespace, c.r.serviceAccount, id))
	}
	if c.node == "" {
		return c.refuse(id, fmt.Errorf("%w: cannot tell the node of ztunnel %s/%s: %s",
			ca.ErrPermissionDenied, c.r.namespace, c.r.serviceAccount, c.nodeWhy))
	}
	if err := ca.AuthorizeNode(c.a.pods, c.node, id); err != nil {
		if errors.Is(err, ca.ErrPermissionDenied) {
			return c.refuse(id, err)
		}
		c.a.log.Warn("cannot authorize a CA request", "caller", c.Name(), "identity", id.String(), "node", c.node, "error", err.Error())
		return err
	}
	return nil
}

// Node implements ca.NodeBound: the node of a ztunnel caller ("" when it
// cannot be told), "" for any other service account.
func (c *caller) Node() string {
	if !c.ztunnel {
		return ""
	}
	return c.node
}

func (c *caller) refuse(id spiffe.ID, err error) error {
	c.a.log.Warn("CA request refused", "caller", c.Name(), "identity", id.String(), "node", c.node, "reason", err.Error())
	return err
}
