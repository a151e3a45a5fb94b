package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// ErrClosed is returned by GetCertificate once the Manager is closed.
var ErrClosed = errors.New("certificate manager is closed")

// ErrForgotten is returned to GetCertificate callers that were waiting for a
// certificate when its identity was forgotten.
var ErrForgotten = errors.New("identity was forgotten while its certificate was being fetched")

// Issued is what a CertSource returns: a private key and the certificate
// chain issued for it, leaf first, the root of trust last.
type Issued struct {
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// CertSource obtains a fresh key and certificate for one identity, normally
// from the CA. Fetch must honour ctx, may be called concurrently for
// different identities, and must validate what the CA returned (fail closed).
type CertSource interface {
	Fetch(ctx context.Context, id spiffe.ID) (*Issued, error)
}

// State of one identity's certificate, as shown by the admin endpoint.
type State string

const (
	// StateInitializing: the first fetch has not completed yet.
	StateInitializing State = "Initializing"
	// StateAvailable: a valid certificate is held.
	StateAvailable State = "Available"
	// StateUnavailable: no certificate was ever obtained; retrying.
	StateUnavailable State = "Unavailable"
	// StateExpired: the held certificate expired and renewal keeps failing;
	// it is never presented.
	StateExpired State = "Expired"
)

// CertInfo is a snapshot of one identity's certificate for the admin endpoint.
// Times are zero and Serial is empty when no certificate is held.
type CertInfo struct {
	Identity    spiffe.ID
	NotBefore   time.Time
	NotAfter    time.Time
	Serial      string // hexadecimal
	State       State
	NextRefresh time.Time // zero while a fetch is in flight
	LastError   string    // error of the last failed attempt since the last success
}

// Defaults for Options.
const (
	DefaultRenewFraction  = 0.5
	DefaultRenewJitter    = 0.1
	DefaultInitialBackoff = time.Second
	DefaultMaxBackoff     = time.Minute
	DefaultFetchTimeout   = 30 * time.Second
	// backoffJitter shortens each backoff delay by up to this fraction.
	backoffJitter = 0.2
	// minRenewDelay bounds the renewal rate when a CA hands out certificates
	// whose renewal point has already passed.
	minRenewDelay = time.Second
)

// Options configure a Manager. Source is required; the rest have defaults.
type Options struct {
	Source CertSource
	Clock  Clock        // default RealClock
	Logger *slog.Logger // default slog.Default()
	// RenewFraction of a certificate's lifetime after which it is renewed,
	// varied by ±RenewJitter (both fractions of the lifetime).
	RenewFraction float64
	RenewJitter   float64
	// Failed fetches are retried after InitialBackoff, doubling per failure,
	// at most MaxBackoff, each delay shortened by a random up to 20 %.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// FetchTimeout bounds one Fetch call (wall clock).
	FetchTimeout time.Duration
}

// Manager holds one certificate per identity: fetched on first need, shared
// by all callers, renewed in the background, never presented once expired.
// All methods are safe for concurrent use.
type Manager struct {
	opts         Options
	clock        Clock
	log          *slog.Logger
	ctx          context.Context // cancelled by Close
	cancel       context.CancelFunc
	stopCtxWatch func() bool
	done         chan struct{}

	mu      sync.Mutex
	closed  bool
	entries map[spiffe.ID]*entry
	wg      sync.WaitGroup // fetch attempts in flight

	roots atomic.Pointer[x509.CertPool]

	randMu sync.Mutex
	rnd    *rand.Rand

	// hooks let tests in this package observe progress without sleeping.
	// Set before the Manager is used.
	hooks struct {
		attemptDone func(id spiffe.ID, err error) // after state is updated
		waiting     func(id spiffe.ID)            // a caller waits on a fetch
	}
}

// entry is one identity's state. Fields are guarded by Manager.mu.
type entry struct {
	id       spiffe.ID
	ctx      context.Context // cancelled by Forget and Close
	cancel   context.CancelFunc
	cert     *tls.Certificate // nil until the first success; Leaf set
	root     *x509.Certificate
	inflight chan struct{} // non-nil while a fetch runs; closed when it ends
	timer    Timer         // next renewal or retry
	next     time.Time
	failures int
	lastErr  error
}

// New starts a Manager. It shuts down when ctx is done or Close is called.
func New(ctx context.Context, opts Options) (*Manager, error) {
	if opts.Source == nil {
		return nil, errors.New("identity: Options.Source is required")
	}
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RenewFraction == 0 {
		opts.RenewFraction = DefaultRenewFraction
	}
	if opts.RenewJitter == 0 {
		opts.RenewJitter = DefaultRenewJitter
	}
	if opts.RenewJitter < 0 || opts.RenewFraction-opts.RenewJitter <= 0 || opts.RenewFraction+opts.RenewJitter >= 1 {
		return nil, fmt.Errorf("identity: renewal at %.2f ± %.2f of the lifetime must stay strictly between 0 and 1", opts.RenewFraction, opts.RenewJitter)
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = DefaultInitialBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MaxBackoff < opts.InitialBackoff {
		return nil, fmt.Errorf("identity: MaxBackoff %v is below InitialBackoff %v", opts.MaxBackoff, opts.InitialBackoff)
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = DefaultFetchTimeout
	}
	mctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		opts:    opts,
		clock:   opts.Clock,
		log:     opts.Logger,
		ctx:     mctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		entries: make(map[spiffe.ID]*entry),
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	m.roots.Store(x509.NewCertPool())
	m.stopCtxWatch = context.AfterFunc(ctx, func() { m.Close() })
	return m, nil
}

// GetCertificate returns id's certificate (Leaf set), fetching it on first
// need. Concurrent first calls for one identity share one fetch. It never
// returns an expired certificate: when the only one held has expired and
// renewal keeps failing, the error names id and the CA's error. The returned
// certificate is shared: callers must not modify it.
func (m *Manager) GetCertificate(ctx context.Context, id spiffe.ID) (*tls.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("getting certificate: %w", err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	e := m.entries[id]
	if e == nil {
		e = m.newEntryLocked(id)
	}
	for {
		if c := m.validLocked(e); c != nil {
			m.mu.Unlock()
			return c, nil
		}
		ch := e.inflight
		if ch == nil {
			err := m.noCertErrorLocked(e)
			m.mu.Unlock()
			return nil, err
		}
		m.mu.Unlock()
		if h := m.hooks.waiting; h != nil {
			h(id)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for certificate for %s: %w", id, ctx.Err())
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		if m.entries[id] != e {
			m.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: %w", id, ErrForgotten)
		}
		if c := m.validLocked(e); c != nil {
			m.mu.Unlock()
			return c, nil
		}
		if e.inflight == nil {
			err := m.noCertErrorLocked(e)
			m.mu.Unlock()
			return nil, err
		}
		// Another attempt started already: wait for it too.
	}
}

// validLocked returns e's certificate if it has not expired.
func (m *Manager) validLocked(e *entry) *tls.Certificate {
	if e.cert != nil && m.clock.Now().Before(e.cert.Leaf.NotAfter) {
		return e.cert
	}
	return nil
}

func (m *Manager) noCertErrorLocked(e *entry) error {
	if e.cert != nil {
		return fmt.Errorf("certificate for %s expired at %s and renewal is failing: %w",
			e.id, e.cert.Leaf.NotAfter.UTC().Format(time.RFC3339), e.lastErr)
	}
	if e.lastErr != nil {
		return fmt.Errorf("no certificate for %s: %w", e.id, e.lastErr)
	}
	return fmt.Errorf("no certificate for %s yet", e.id) // not reached: a new entry always has a fetch in flight
}

func (m *Manager) newEntryLocked(id spiffe.ID) *entry {
	ctx, cancel := context.WithCancel(m.ctx)
	e := &entry{id: id, ctx: ctx, cancel: cancel}
	m.entries[id] = e
	m.startLocked(e)
	m.wg.Go(func() { m.attempt(e) })
	return e
}

// startLocked marks an attempt in flight; the caller then runs m.attempt(e),
// counted in m.wg.
func (m *Manager) startLocked(e *entry) {
	e.inflight = make(chan struct{})
	e.next = time.Time{}
	e.timer = nil
}

// scheduled runs when e's renewal or retry timer fires.
func (m *Manager) scheduled(e *entry) {
	m.mu.Lock()
	if m.closed || m.entries[e.id] != e || e.inflight != nil {
		m.mu.Unlock()
		return
	}
	m.startLocked(e)
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()
	m.attempt(e)
}

// attempt fetches e's certificate once and schedules what comes next.
func (m *Manager) attempt(e *entry) {
	ctx, cancel := context.WithTimeout(e.ctx, m.opts.FetchTimeout)
	iss, err := m.opts.Source.Fetch(ctx, e.id)
	cancel()
	var cert *tls.Certificate
	if err == nil {
		cert, err = m.accept(e.id, iss)
	}

	m.mu.Lock()
	ch := e.inflight
	e.inflight = nil
	if m.closed || m.entries[e.id] != e {
		m.mu.Unlock()
		close(ch)
		return
	}
	now := m.clock.Now()
	var delay time.Duration
	if err != nil {
		e.failures++
		e.lastErr = err
		delay = m.backoff(e.failures)
		m.log.Warn("fetching workload certificate failed; retrying",
			"identity", e.id.String(), "attempt", e.failures, "retry_in", delay,
			"have_valid_cert", e.cert != nil && now.Before(e.cert.Leaf.NotAfter), "error", err)
	} else {
		e.failures = 0
		e.lastErr = nil
		e.cert = cert
		e.root = iss.Chain[len(iss.Chain)-1]
		delay = m.renewDelay(cert.Leaf, now)
		m.rebuildRootsLocked()
		m.log.Info("workload certificate issued", "identity", e.id.String(),
			"serial", cert.Leaf.SerialNumber.Text(16), "not_after", cert.Leaf.NotAfter, "renew_in", delay)
	}
	e.next = now.Add(delay)
	e.timer = m.clock.AfterFunc(delay, func() { m.scheduled(e) })
	m.mu.Unlock()
	close(ch)
	if h := m.hooks.attemptDone; h != nil {
		h(e.id, err)
	}
}

// accept checks what the source returned (defence in depth: the source
// validates fully) and builds the certificate presented in handshakes.
func (m *Manager) accept(id spiffe.ID, iss *Issued) (*tls.Certificate, error) {
	if iss == nil || iss.Key == nil || len(iss.Chain) == 0 || iss.Chain[0] == nil {
		return nil, fmt.Errorf("certificate source returned no key or an empty chain for %s", id)
	}
	leaf := iss.Chain[0]
	got, err := spiffe.FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("certificate issued for %s: %w", id, err)
	}
	if got != id {
		return nil, fmt.Errorf("certificate issued for %s names %s instead", id, got)
	}
	if now := m.clock.Now(); !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate issued for %s expired at %s", id, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	type publicKeyer interface{ Equal(crypto.PublicKey) bool }
	if pk, ok := iss.Key.Public().(publicKeyer); !ok || !pk.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("certificate issued for %s does not match its private key", id)
	}
	// Present leaf and intermediates; peers hold the root.
	presented := iss.Chain
	if len(presented) > 1 {
		presented = presented[:len(presented)-1]
	}
	der := make([][]byte, len(presented))
	for i, c := range presented {
		der[i] = c.Raw
	}
	return &tls.Certificate{Certificate: der, PrivateKey: iss.Key, Leaf: leaf}, nil
}

// renewDelay is the time from now until leaf should be renewed:
// RenewFraction ± RenewJitter of its lifetime after NotBefore.
func (m *Manager) renewDelay(leaf *x509.Certificate, now time.Time) time.Duration {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	frac := m.opts.RenewFraction + m.opts.RenewJitter*(2*m.float64()-1)
	at := leaf.NotBefore.Add(time.Duration(float64(life) * frac))
	return max(at.Sub(now), minRenewDelay)
}

// backoff is the delay after the n-th consecutive failure (n ≥ 1):
// InitialBackoff·2^(n-1), at most MaxBackoff, shortened by up to 20 %.
func (m *Manager) backoff(n int) time.Duration {
	d := m.opts.MaxBackoff
	if n-1 < 62 {
		if b := m.opts.InitialBackoff << (n - 1); b > 0 && b < d {
			d = b
		}
	}
	return time.Duration(float64(d) * (1 - backoffJitter*m.float64()))
}

func (m *Manager) float64() float64 {
	m.randMu.Lock()
	defer m.randMu.Unlock()
	return m.rnd.Float64()
}

// rebuildRootsLocked publishes the union of the roots of all held
// certificates as a new pool.
func (m *Manager) rebuildRootsLocked() {
	pool := x509.NewCertPool()
	var seen [][]byte
	for _, e := range m.entries {
		if e.root == nil {
			continue
		}
		dup := false
		for _, raw := range seen {
			if bytes.Equal(raw, e.root.Raw) {
				dup = true
				break
			}
		}
		if !dup {
			seen = append(seen, e.root.Raw)
			pool.AddCert(e.root)
		}
	}
	m.roots.Store(pool)
}

// Roots returns the trust bundle: the roots (last certificate of each issued
// chain) of every certificate held. The pool is replaced, never modified,
// when it changes: fetch it per handshake (e.g. in GetConfigForClient or
// VerifyConnection) rather than once. Empty until a certificate is held.
func (m *Manager) Roots() *x509.CertPool { return m.roots.Load() }

// Forget drops id: its renewals stop, an in-flight fetch is cancelled and
// callers waiting for it get ErrForgotten. A later GetCertificate starts over.
func (m *Manager) Forget(id spiffe.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil {
		return
	}
	delete(m.entries, id)
	if e.timer != nil {
		e.timer.Stop()
	}
	e.cancel()
	if e.root != nil {
		m.rebuildRootsLocked()
	}
	m.log.Info("forgot workload identity", "identity", id.String())
}

// Certificates returns a snapshot of every identity's certificate, sorted by
// identity.
func (m *Manager) Certificates() []CertInfo {
	m.mu.Lock()
	now := m.clock.Now()
	out := make([]CertInfo, 0, len(m.entries))
	for _, e := range m.entries {
		ci := CertInfo{Identity: e.id, NextRefresh: e.next}
		if e.lastErr != nil {
			ci.LastError = e.lastErr.Error()
		}
		switch {
		case e.cert != nil:
			l := e.cert.Leaf
			ci.NotBefore, ci.NotAfter, ci.Serial = l.NotBefore, l.NotAfter, l.SerialNumber.Text(16)
			ci.State = StateAvailable
			if !now.Before(l.NotAfter) {
				ci.State = StateExpired
			}
		case e.lastErr != nil:
			ci.State = StateUnavailable
		default:
			ci.State = StateInitializing
		}
		out = append(out, ci)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Identity.String() < out[j].Identity.String() })
	return out
}

// Close stops all renewals, cancels fetches in flight and waits for them to
// return. It is idempotent; GetCertificate fails with ErrClosed afterwards.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		<-m.done
		return nil
	}
	m.closed = true
	for _, e := range m.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	m.mu.Unlock()
	m.stopCtxWatch()
	m.cancel()
	m.wg.Wait()
	close(m.done)
	return nil
}

// Done is closed once the Manager has shut down and all its goroutines have
// returned.
func (m *Manager) Done() <-chan struct{} { return m.done }
