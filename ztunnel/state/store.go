package state

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// Defaults for Options.
const (
	DefaultRootNamespace  = "istio-system"
	DefaultTrustDomain    = "cluster.local"
	DefaultServiceAccount = "default"
)

// Snapshot is a set of resources: the whole state for Set, the upserts of
// a Delta.
type Snapshot struct {
	Workloads []*workloadapi.Workload
	Services  []*workloadapi.Service
	Policies  []*security.Authorization
}

// Delta is an incremental change, as one delta xDS response carries it.
// Removals are applied before upserts.
type Delta struct {
	Upsert Snapshot
	// RemoveAddresses names Address resources: a workload uid or a
	// service "namespace/hostname". A name that is a workload uid removes
	// the workload; otherwise the service. Unknown names are ignored.
	RemoveAddresses []string
	// RemovePolicies names policies as "namespace/name".
	RemovePolicies []string
}

// Options configure a Store.
type Options struct {
	// RootNamespace holds mesh-wide (GLOBAL) policies. Default istio-system.
	RootNamespace string
	// TrustDomain fills a workload's elided trust_domain. Default
	// cluster.local.
	TrustDomain string
	// Logger receives one line per rejected resource. Default slog.Default.
	Logger *slog.Logger
}

// Store is the concurrency-safe holder of the current View. The zero value
// is not usable; call New.
type Store struct {
	opts Options
	log  *slog.Logger

	writeMu sync.Mutex // serializes writers; readers never take it
	seq     uint64     // guarded by writeMu
	cur     atomic.Pointer[View]

	subMu sync.Mutex
	subs  map[chan struct{}]struct{}
}

// New returns an empty Store.
func New(opts Options) *Store {
	if opts.RootNamespace == "" {
		opts.RootNamespace = DefaultRootNamespace
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{opts: opts, log: opts.Logger, subs: map[chan struct{}]struct{}{}}
	s.cur.Store(&View{rootNamespace: opts.RootNamespace})
	return s
}

// Load returns the current View. It never blocks and never returns nil.
func (s *Store) Load() *View { return s.cur.Load() }

// RootNamespace returns the namespace whose GLOBAL policies apply mesh-wide.
func (s *Store) RootNamespace() string { return s.opts.RootNamespace }

// Set replaces the whole state with snap's valid resources. It returns
// every validation error (joined); rejected resources are absent after.
func (s *Store) Set(snap Snapshot) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	t := begin(s.Load(), true)
	errs := s.accept(t, snap)
	s.swap(t.commit())
	return s.report(errs)
}

// Apply applies a delta: removals, then upserts of valid resources. It
// returns every validation error (joined).
func (s *Store) Apply(d Delta) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	t := begin(s.Load(), false)
	for _, name := range d.RemoveAddresses {
		if !t.removeWorkload(name) {
			t.removeService(name)
		}
	}
	for _, name := range d.RemovePolicies {
		t.removePolicy(name)
	}
	errs := s.accept(t, d.Upsert)
	s.swap(t.commit())
	return s.report(errs)
}

// Upsert adds or replaces resources by name; shorthand for Apply.
func (s *Store) Upsert(snap Snapshot) error { return s.Apply(Delta{Upsert: snap}) }

// RemoveAddresses removes workloads (by uid) or services (by
// "namespace/hostname"); shorthand for Apply.
func (s *Store) RemoveAddresses(names ...string) {
	_ = s.Apply(Delta{RemoveAddresses: names})
}

// RemovePolicies removes policies by "namespace/name"; shorthand for Apply.
func (s *Store) RemovePolicies(names ...string) {
	_ = s.Apply(Delta{RemovePolicies: names})
}

// Validate reports every error Set would report for snap, without
// changing the Store or the resources.
func (s *Store) Validate(snap Snapshot) error {
	v := validator{rootNamespace: s.opts.RootNamespace}
	var errs []error
	seen := map[string]bool{}
	for i, w := range snap.Workloads {
		errs = append(errs, v.workload(i, w, seen)...)
	}
	clear(seen)
	for i, svc := range snap.Services {
		errs = append(errs, v.service(i, svc, seen)...)
	}
	clear(seen)
	for i, p := range snap.Policies {
		errs = append(errs, v.policy(i, p, seen)...)
	}
	return errors.Join(errs...)
}

// accept validates snap and writes its valid resources into t. Caller
// holds writeMu.
func (s *Store) accept(t *txn, snap Snapshot) []error {
	v := validator{rootNamespace: s.opts.RootNamespace}
	var errs []error
	seen := map[string]bool{}
	for i, w := range snap.Workloads {
		if e := v.workload(i, w, seen); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		if w.TrustDomain == "" {
			w.TrustDomain = s.opts.TrustDomain
		}
		if w.ServiceAccount == "" {
			w.ServiceAccount = DefaultServiceAccount
		}
		s.seq++
		t.putWorkload(wlEntry{w: w, seq: s.seq})
	}
	clear(seen)
	for i, svc := range snap.Services {
		if e := v.service(i, svc, seen); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		s.seq++
		t.putService(svcEntry{s: svc, seq: s.seq})
	}
	clear(seen)
	for i, p := range snap.Policies {
		if e := v.policy(i, p, seen); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		t.putPolicy(p)
	}
	return errs
}

func (s *Store) report(errs []error) error {
	for _, err := range errs {
		s.log.Error("rejected resource", "error", err)
	}
	return errors.Join(errs...)
}

// swap publishes v and signals subscribers. Caller holds writeMu.
func (s *Store) swap(v *View) {
	s.cur.Store(v)
	s.subMu.Lock()
	defer s.subMu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // a signal is already pending; signals coalesce
		}
	}
}

// Subscribe returns a channel that receives a signal after each write
// (signals coalesce: one pending at most), and a function that ends the
// subscription. The channel is never closed.
func (s *Store) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.subMu.Lock()
	s.subs[ch] = struct{}{}
	s.subMu.Unlock()
	return ch, func() {
		s.subMu.Lock()
		delete(s.subs, ch)
		s.subMu.Unlock()
	}
}
