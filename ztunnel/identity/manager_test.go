package identity

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/testpki"
)

// failDeadline bounds every wait for background work; reaching it is a test
// failure, never how a test makes progress.
const failDeadline = 10 * time.Second

var errCADown = errors.New("connection refused: CA is down")

// fakeSource issues certificates from a testpki CA, valid from the fake
// clock's now for life.
type fakeSource struct {
	t     testing.TB
	clock *fakeClock
	life  time.Duration

	mu      sync.Mutex
	cas     map[string]*testpki.CA // by trust domain
	fail    error
	gate    chan struct{} // when non-nil, Fetch waits for it to close
	calls   map[spiffe.ID]int
	mangle  func(*Issued)  // changes a response before it is returned
	entered chan spiffe.ID // when non-nil, receives each Fetch call's id
	active  atomic.Int32   // Fetch calls running
	ctxErrs atomic.Int32   // Fetch calls that returned because ctx was done
}

func newFakeSource(t testing.TB, clk *fakeClock, life time.Duration) *fakeSource {
	return &fakeSource{t: t, clock: clk, life: life, cas: map[string]*testpki.CA{}, calls: map[spiffe.ID]int{}}
}

func (s *fakeSource) Fetch(ctx context.Context, id spiffe.ID) (*Issued, error) {
	s.active.Add(1)
	defer s.active.Add(-1)
	s.mu.Lock()
	s.calls[id]++
	gate, fail, mangle := s.gate, s.fail, s.mangle
	ca := s.cas[id.TrustDomain]
	if s.entered != nil {
		s.entered <- id
	}
	if ca == nil {
		ca = testpki.NewCA(s.t, id.TrustDomain)
		s.cas[id.TrustDomain] = ca
	}
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			s.ctxErrs.Add(1)
			return nil, ctx.Err()
		}
	}
	if fail != nil {
		return nil, fail
	}
	now := s.clock.Now()
	c := ca.LeafFor(s.t, id, testpki.Validity(now, now.Add(s.life)))
	iss := &Issued{Key: c.PrivateKey.(crypto.Signer), Chain: []*x509.Certificate{c.Leaf, ca.Cert}}
	if mangle != nil {
		mangle(iss)
	}
	return iss, nil
}

func (s *fakeSource) setFail(err error) { s.mu.Lock(); s.fail = err; s.mu.Unlock() }
func (s *fakeSource) setGate(ch chan struct{}) {
	s.mu.Lock()
	s.gate = ch
	s.mu.Unlock()
}
func (s *fakeSource) count(id spiffe.ID) int { s.mu.Lock(); defer s.mu.Unlock(); return s.calls[id] }
func (s *fakeSource) ca(td string) *testpki.CA {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cas[td]
}

type attemptResult struct {
	id  spiffe.ID
	err error
}

type harness struct {
	t        *testing.T
	clk      *fakeClock
	src      *fakeSource
	m        *Manager
	attempts chan attemptResult
	waiting  chan spiffe.ID
}

func newHarness(t *testing.T, life time.Duration, tweak func(*Options)) *harness {
	t.Helper()
	clk := newFakeClock(time.Now().Truncate(time.Second))
	src := newFakeSource(t, clk, life)
	opts := Options{
		Source:         src,
		Clock:          clk,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		InitialBackoff: time.Second,
		MaxBackoff:     time.Minute,
	}
	if tweak != nil {
		tweak(&opts)
	}
	m, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clk: clk, src: src, m: m, attempts: make(chan attemptResult, 1000), waiting: make(chan spiffe.ID, 1000)}
	m.hooks.attemptDone = func(id spiffe.ID, err error) { h.attempts <- attemptResult{id, err} }
	m.hooks.waiting = func(id spiffe.ID) { h.waiting <- id }
	t.Cleanup(func() { m.Close() })
	return h
}

// waitAttempt returns the next finished fetch attempt.
func (h *harness) waitAttempt() attemptResult {
	h.t.Helper()
	select {
	case r := <-h.attempts:
		return r
	case <-time.After(failDeadline):
		h.t.Fatal("no fetch attempt finished")
		return attemptResult{}
	}
}

// step advances the clock to the earliest pending timer and waits for the
// fetch attempt it starts.
func (h *harness) step() attemptResult {
	h.t.Helper()
	p := h.clk.Pending()
	if len(p) == 0 {
		h.t.Fatal("no renewal or retry is scheduled")
	}
	if n := h.clk.Advance(p[0].Sub(h.clk.Now())); n != 1 {
		h.t.Fatalf("advancing to the next deadline fired %d timers, want 1", n)
	}
	return h.waitAttempt()
}

// get calls GetCertificate and waits for the attempt it may have started to
// be fully recorded.
func (h *harness) first(id spiffe.ID) *tls.Certificate {
	h.t.Helper()
	c, err := h.m.GetCertificate(context.Background(), id)
	if err != nil {
		h.t.Fatalf("GetCertificate(%s): %v", id, err)
	}
	if r := h.waitAttempt(); r.id != id || r.err != nil {
		h.t.Fatalf("first attempt: %+v", r)
	}
	return c
}

func (h *harness) info(id spiffe.ID) CertInfo {
	h.t.Helper()
	for _, ci := range h.m.Certificates() {
		if ci.Identity == id {
			return ci
		}
	}
	h.t.Fatalf("no CertInfo for %s", id)
	return CertInfo{}
}

func mustID(t testing.TB, td, ns, sa string) spiffe.ID {
	t.Helper()
	id, err := spiffe.New(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRenewalSchedule(t *testing.T) {
	const life = 100 * time.Hour
	h := newHarness(t, life, nil)
	start := h.clk.Now()
	var ids []spiffe.ID
	for i := range 20 {
		id := mustID(t, "cluster.local", "ns", fmt.Sprintf("sa-%d", i))
		ids = append(ids, id)
		c := h.first(id)
		if c.Leaf == nil || !c.Leaf.NotBefore.Equal(start) {
			t.Fatalf("leaf of %s: %+v", id, c.Leaf)
		}
	}
	distinct := map[time.Duration]bool{}
	for _, id := range ids {
		ci := h.info(id)
		if ci.State != StateAvailable {
			t.Errorf("%s: state %s, want %s", id, ci.State, StateAvailable)
		}
		at := ci.NextRefresh.Sub(ci.NotBefore)
		if at < 40*time.Hour || at > 60*time.Hour {
			t.Errorf("%s renews %v after issue, want within 40%%..60%% of %v", id, at, life)
		}
		distinct[at] = true
	}
	if len(distinct) < 2 {
		t.Errorf("20 identities all renew at the same point %v: no jitter", distinct)
	}

	// Nothing renews before 40 % of the lifetime.
	if n := h.clk.Advance(40*time.Hour - time.Second); n != 0 {
		t.Fatalf("%d renewals fired before 40%% of the lifetime", n)
	}
	// The earliest one renews once, and gets a new certificate scheduled anew.
	var next spiffe.ID
	earliest := h.clk.Pending()[0]
	for _, id := range ids {
		if h.info(id).NextRefresh.Equal(earliest) {
			next = id
		}
	}
	old, _ := h.m.GetCertificate(context.Background(), next)
	if r := h.step(); r.id != next || r.err != nil {
		t.Fatalf("renewal attempt: %+v, want success for %s", r, next)
	}
	if got := h.src.count(next); got != 2 {
		t.Errorf("%s fetched %d times, want 2", next, got)
	}
	renewed, err := h.m.GetCertificate(context.Background(), next)
	if err != nil {
		t.Fatal(err)
	}
	if renewed == old || renewed.Leaf.SerialNumber.Cmp(old.Leaf.SerialNumber) == 0 {
		t.Error("renewal did not replace the certificate")
	}
	ci := h.info(next)
	if at := ci.NextRefresh.Sub(ci.NotBefore); at < 40*time.Hour || at > 60*time.Hour {
		t.Errorf("renewed certificate renews %v after issue, want 40..60 h", at)
	}
	for _, id := range ids {
		if id != next && h.src.count(id) != 1 {
			t.Errorf("%s fetched %d times, want 1", id, h.src.count(id))
		}
	}
}

func TestSingleFlightFirstFetch(t *testing.T) {
	h := newHarness(t, time.Hour, nil)
	gate := make(chan struct{})
	h.src.setGate(gate)
	id := mustID(t, "cluster.local", "default", "web")

	const n = 50
	type res struct {
		c   *tls.Certificate
		err error
	}
	results := make(chan res, n)
	for range n {
		go func() {
			c, err := h.m.GetCertificate(context.Background(), id)
			results <- res{c, err}
		}()
	}
	for range n { // all n callers are waiting on the one fetch
		select {
		case <-h.waiting:
		case <-time.After(failDeadline):
			t.Fatal("callers did not all wait")
		}
	}
	if ci := h.info(id); ci.State != StateInitializing {
		t.Errorf("state during first fetch: %s", ci.State)
	}
	close(gate)
	var first *tls.Certificate
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if first == nil {
			first = r.c
		}
		if r.c != first {
			t.Error("callers got different certificates")
		}
	}
	if got := h.src.count(id); got != 1 {
		t.Errorf("Fetch called %d times for %d concurrent callers, want 1", got, n)
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	h := newHarness(t, time.Hour, nil)
	h.src.setFail(errCADown)
	id := mustID(t, "cluster.local", "default", "web")

	_, err := h.m.GetCertificate(context.Background(), id)
	if err == nil || !errors.Is(err, errCADown) || !strings.Contains(err.Error(), id.String()) {
		t.Fatalf("first GetCertificate with the CA down: %v; want an error naming %s and wrapping the CA error", err, id)
	}
	h.waitAttempt()
	if ci := h.info(id); ci.State != StateUnavailable || !strings.Contains(ci.LastError, "CA is down") {
		t.Errorf("CertInfo while the CA is down: %+v", ci)
	}

	var prev time.Duration
	for i := 1; i <= 12; i++ {
		d := h.clk.Pending()[0].Sub(h.clk.Now())
		base := min(time.Second<<(i-1), time.Minute)
		if d < base*8/10 || d > base {
			t.Errorf("retry %d after %v, want within [%v, %v]", i, d, base*8/10, base)
		}
		if base < time.Minute && d <= prev {
			t.Errorf("retry %d after %v, not longer than the previous %v", i, d, prev)
		}
		prev = d
		if r := h.step(); !errors.Is(r.err, errCADown) {
			t.Fatalf("attempt %d: %v", i+1, r.err)
		}
		// A caller meanwhile fails fast with the CA's error.
		if _, err := h.m.GetCertificate(context.Background(), id); !errors.Is(err, errCADown) {
			t.Fatalf("GetCertificate during backoff: %v", err)
		}
	}
	if got := h.src.count(id); got != 13 {
		t.Errorf("Fetch called %d times, want 13", got)
	}
}

func TestCADownServesValidCertThenFailsAfterExpiryThenRecovers(t *testing.T) {
	const life = 10 * time.Minute
	h := newHarness(t, life, nil)
	id := mustID(t, "cluster.local", "shop", "cart")
	orig := h.first(id)
	h.src.setFail(errCADown)

	// Renewal and its retries fail; the still-valid certificate is served.
	retries := 0
	for h.clk.Now().Before(orig.Leaf.NotAfter) {
		if r := h.step(); !errors.Is(r.err, errCADown) {
			t.Fatalf("attempt while CA is down: %v", r.err)
		}
		retries++
		if !h.clk.Now().Before(orig.Leaf.NotAfter) {
			break
		}
		c, err := h.m.GetCertificate(context.Background(), id)
		if err != nil || c != orig {
			t.Fatalf("while the certificate is valid and the CA down: got %v, %v; want the held certificate", c, err)
		}
		if ci := h.info(id); ci.State != StateAvailable || ci.LastError == "" {
			t.Errorf("CertInfo: %+v", ci)
		}
	}
	if retries < 3 {
		t.Errorf("only %d attempts before expiry", retries)
	}

	// Expired, CA still down: an error naming the identity and the CA error.
	c, err := h.m.GetCertificate(context.Background(), id)
	if c != nil || err == nil {
		t.Fatalf("after expiry: got certificate %v, err %v; want no certificate", c, err)
	}
	if !errors.Is(err, errCADown) || !strings.Contains(err.Error(), id.String()) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("after expiry: %v", err)
	}
	if ci := h.info(id); ci.State != StateExpired {
		t.Errorf("state after expiry: %s", ci.State)
	}

	// The CA comes back: the next retry succeeds and a fresh cert is served.
	h.src.setFail(nil)
	if r := h.step(); r.err != nil {
		t.Fatalf("attempt after recovery: %v", r.err)
	}
	c, err = h.m.GetCertificate(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf.SerialNumber.Cmp(orig.Leaf.SerialNumber) == 0 || !h.clk.Now().Before(c.Leaf.NotAfter) {
		t.Errorf("after recovery got serial %v valid until %v", c.Leaf.SerialNumber, c.Leaf.NotAfter)
	}
	if ci := h.info(id); ci.State != StateAvailable || ci.LastError != "" {
		t.Errorf("CertInfo after recovery: %+v", ci)
	}
	// And the schedule is back to renewal at about half the new lifetime.
	if d := h.clk.Pending()[0].Sub(h.clk.Now()); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("next renewal in %v, want 4..6 min", d)
	}
}

func TestExpiredCertWaitsForRenewalInFlight(t *testing.T) {
	h := newHarness(t, 10*time.Minute, nil)
	id := mustID(t, "cluster.local", "shop", "cart")
	orig := h.first(id)
	h.src.setFail(errCADown)
	for h.clk.Now().Before(orig.Leaf.NotAfter) {
		h.step()
	}
	// The next retry is in flight, blocked; a caller waits for it rather than
	// failing or getting the expired certificate, and gets the new one.
	gate := make(chan struct{})
	h.src.mu.Lock()
	h.src.gate, h.src.fail, h.src.entered = gate, nil, make(chan spiffe.ID, 1)
	h.src.mu.Unlock()
	p := h.clk.Pending()
	h.clk.Advance(p[0].Sub(h.clk.Now()))
	<-h.src.entered // the retry is in flight
	got := make(chan *tls.Certificate, 1)
	go func() {
		c, err := h.m.GetCertificate(context.Background(), id)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	select {
	case <-h.waiting:
	case <-time.After(failDeadline):
		t.Fatal("caller did not wait for the renewal in flight")
	}
	close(gate)
	h.waitAttempt()
	select {
	case c := <-got:
		if c == orig || !h.clk.Now().Before(c.Leaf.NotAfter) {
			t.Error("got the expired certificate")
		}
	case <-time.After(failDeadline):
		t.Fatal("caller never returned")
	}
}

func TestForgetStopsRenewal(t *testing.T) {
	h := newHarness(t, time.Hour, nil)
	a := mustID(t, "cluster.local", "ns", "a")
	b := mustID(t, "other.domain", "ns", "b")
	h.first(a)
	h.first(b)
	if n := len(h.clk.Pending()); n != 2 {
		t.Fatalf("%d timers pending, want 2", n)
	}
	want := h.src.ca("cluster.local").Pool()
	want.AddCert(h.src.ca("other.domain").Cert)
	if !h.m.Roots().Equal(want) {
		t.Error("Roots does not hold both trust domains' roots")
	}

	h.m.Forget(b)
	if p := h.clk.Pending(); len(p) != 1 {
		t.Fatalf("%d timers pending after Forget, want 1", len(p))
	}
	if !h.m.Roots().Equal(h.src.ca("cluster.local").Pool()) {
		t.Error("Roots still holds the forgotten identity's root")
	}
	for _, ci := range h.m.Certificates() {
		if ci.Identity == b {
			t.Error("forgotten identity still listed")
		}
	}
	// A long time passes: a is renewed repeatedly, b never.
	for range 5 {
		if r := h.step(); r.id != a {
			t.Fatalf("attempt for %s", r.id)
		}
	}
	if got := h.src.count(b); got != 1 {
		t.Errorf("forgotten identity fetched %d times, want 1", got)
	}
	// Asking again starts over.
	h.first(b)
	if got := h.src.count(b); got != 2 {
		t.Errorf("after asking again: %d fetches, want 2", got)
	}
}

func TestForgetDuringFirstFetch(t *testing.T) {
	h := newHarness(t, time.Hour, nil)
	h.src.setGate(make(chan struct{})) // never opens
	id := mustID(t, "cluster.local", "ns", "a")
	errc := make(chan error, 1)
	go func() {
		_, err := h.m.GetCertificate(context.Background(), id)
		errc <- err
	}()
	<-h.waiting
	h.m.Forget(id)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrForgotten) {
			t.Errorf("waiter got %v, want ErrForgotten", err)
		}
	case <-time.After(failDeadline):
		t.Fatal("waiter not released by Forget")
	}
	if h.src.ctxErrs.Load() != 1 {
		// The cancelled fetch returns before the waiter is released.
		t.Errorf("fetch in flight was not cancelled")
	}
	if len(h.clk.Pending()) != 0 {
		t.Error("a forgotten identity scheduled a retry")
	}
}

func TestCallerContext(t *testing.T) {
	h := newHarness(t, time.Hour, nil)
	gate := make(chan struct{})
	h.src.setGate(gate)
	id := mustID(t, "cluster.local", "ns", "a")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := h.m.GetCertificate(ctx, id)
		errc <- err
	}()
	<-h.waiting
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("got %v", err)
	}
	// The shared fetch goes on for others.
	close(gate)
	if r := h.waitAttempt(); r.err != nil {
		t.Fatal(r.err)
	}
	if _, err := h.m.GetCertificate(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	h := newHarness(t, time.Hour, nil)
	a := mustID(t, "cluster.local", "ns", "a")
	h.first(a) // a has a renewal timer
	h.src.setGate(make(chan struct{}))
	b := mustID(t, "cluster.local", "ns", "b")
	errc := make(chan error, 1)
	go func() {
		_, err := h.m.GetCertificate(context.Background(), b)
		errc <- err
	}()
	<-h.waiting // b's fetch is in flight and blocked

	if err := h.m.Close(); err != nil {
		t.Fatal(err)
	}
	// Close returned only after the fetch in flight did.
	if n := h.src.active.Load(); n != 0 {
		t.Errorf("%d fetches still running after Close", n)
	}
	select {
	case <-h.m.Done():
	default:
		t.Error("Done not closed after Close")
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("waiter got %v, want ErrClosed", err)
	}
	if p := h.clk.Pending(); len(p) != 0 {
		t.Errorf("%d timers still pending after Close", len(p))
	}
	if _, err := h.m.GetCertificate(context.Background(), a); !errors.Is(err, ErrClosed) {
		t.Errorf("GetCertificate after Close: %v", err)
	}
	if err := h.m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestContextCancelShutsDown(t *testing.T) {
	clk := newFakeClock(time.Now())
	src := newFakeSource(t, clk, time.Hour)
	src.setGate(make(chan struct{}))
	ctx, cancel := context.WithCancel(context.Background())
	m, err := New(ctx, Options{Source: src, Clock: clk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	go m.GetCertificate(context.Background(), mustID(t, "cluster.local", "ns", "a"))
	cancel()
	select {
	case <-m.Done():
	case <-time.After(failDeadline):
		t.Fatal("Manager did not shut down when its context was cancelled")
	}
	if n := src.active.Load(); n != 0 {
		t.Errorf("%d fetches still running after shutdown", n)
	}
}

func TestRejectsBadIssued(t *testing.T) {
	other := mustID(t, "cluster.local", "ns", "intruder")
	cases := map[string]func(*Issued){
		"other identity": func(iss *Issued) {
			iss.Chain[0] = testpki.NewCA(t, "cluster.local").LeafFor(t, other).Leaf
		},
		"key mismatch": func(iss *Issued) {
			iss.Key = testpki.NewCA(t, "cluster.local").Key
		},
		"empty chain": func(iss *Issued) { iss.Chain = nil },
	}
	for name, mangle := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, time.Hour, nil)
			h.src.mangle = mangle
			id := mustID(t, "cluster.local", "ns", "a")
			c, err := h.m.GetCertificate(context.Background(), id)
			if c != nil || err == nil || !strings.Contains(err.Error(), id.String()) {
				t.Fatalf("got %v, %v; want an error naming %s", c, err, id)
			}
			t.Log(err)
		})
	}
}

func TestOptionsValidation(t *testing.T) {
	src := newFakeSource(t, newFakeClock(time.Now()), time.Hour)
	for name, o := range map[string]Options{
		"no source":        {},
		"jitter too large": {Source: src, RenewFraction: 0.5, RenewJitter: 0.5},
		"backoff inverted": {Source: src, InitialBackoff: time.Minute, MaxBackoff: time.Second},
	} {
		if _, err := New(context.Background(), o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
