package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults for Options.
const (
	// DefaultDebounce is the quiet period after a Set before a push. Set
	// is level-triggered, so a burst of Sets becomes one push of the last
	// state; 10 ms absorbs the bursts an informer resync produces while
	// adding little to propagation latency.
	DefaultDebounce = 10 * time.Millisecond
	// DefaultMaxDebounce bounds how long a continuous stream of Sets can
	// delay a push.
	DefaultMaxDebounce = 100 * time.Millisecond
	// DefaultStreamRate and DefaultStreamBurst limit new streams (token
	// bucket); a stream over the limit fails with ResourceExhausted and the
	// client retries with backoff.
	DefaultStreamRate  = 100.0
	DefaultStreamBurst = 100
)

// AuthorizeFunc decides whether the caller of a stream (its peer, metadata
// and TLS state are in ctx) may receive workload discovery. An error that is
// a gRPC status is returned as is; any other error as PermissionDenied.
type AuthorizeFunc func(ctx context.Context) error

// AuthorizeNodeFunc decides whether the caller of a stream (ctx as for
// AuthorizeFunc) may receive workload discovery as node, the node of the
// stream's first request (nil when that request has none). Errors map as
// for AuthorizeFunc.
type AuthorizeNodeFunc func(ctx context.Context, node *core.Node) error

// Options configure a Server. The zero value uses the defaults.
type Options struct {
	// Debounce is the quiet period after a Set before a push; default
	// DefaultDebounce. Negative pushes without delay.
	Debounce time.Duration
	// MaxDebounce bounds the delay from the first Set of a burst to its
	// push; default DefaultMaxDebounce.
	MaxDebounce time.Duration
	// StreamRate is the sustained number of new streams admitted per
	// second and StreamBurst the bucket size; defaults DefaultStreamRate and
	// DefaultStreamBurst. A negative StreamRate disables the limit.
	StreamRate  float64
	StreamBurst int
	// Authorize, if set, is called for every new stream before it is
	// served.
	Authorize AuthorizeFunc
	// AuthorizeNode, if set, is called once per stream with the node of
	// its first request, before that request is handled: nothing is sent
	// to a stream before its node is authorized. On error the stream ends
	// with that error.
	AuthorizeNode AuthorizeNodeFunc
	// Logger receives stream lifecycle and NACK lines; default
	// slog.Default.
	Logger *slog.Logger
}

// Server is the delta ADS server for workload discovery. Feed it with Set;
// it serves every stream from the latest state. Safe for concurrent use.
type Server struct {
	opts    Options
	log     *slog.Logger
	limiter *tokenBucket
	stats   counters

	// Debouncing. pending is the latest unpublished Set.
	mu           sync.Mutex
	pending      *Resources
	timer        *time.Timer
	burstStarted time.Time

	buildMu sync.Mutex // serializes builds so generations publish in order
	snap    atomic.Pointer[snapshot]
	ready   chan struct{} // closed by the first publish

	streamsMu sync.Mutex
	streams   map[*stream]struct{}
	nextID    atomic.Uint64
}

var _ discovery.AggregatedDiscoveryServiceServer = (*Server)(nil)

// New returns a Server with no state. Streams are accepted at once but get
// their first response only after the first Set is published.
func New(opts Options) (*Server, error) {
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDebounce == 0 {
		opts.MaxDebounce = DefaultMaxDebounce
	}
	if opts.MaxDebounce < opts.Debounce {
		return nil, fmt.Errorf("xds: MaxDebounce %v is below Debounce %v; raise MaxDebounce", opts.MaxDebounce, opts.Debounce)
	}
	if opts.StreamRate == 0 {
		opts.StreamRate = DefaultStreamRate
	}
	if opts.StreamBurst == 0 {
		opts.StreamBurst = DefaultStreamBurst
	}
	if opts.StreamRate > 0 && opts.StreamBurst < 1 {
		return nil, fmt.Errorf("xds: StreamBurst %d admits no stream; set it to 1 or more", opts.StreamBurst)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{
		opts:    opts,
		log:     opts.Logger,
		ready:   make(chan struct{}),
		streams: map[*stream]struct{}{},
	}
	if opts.StreamRate > 0 {
		s.limiter = newTokenBucket(opts.StreamRate, opts.StreamBurst, time.Now)
	}
	return s, nil
}

// Register adds the AggregatedDiscoveryService to gs (which should serve
// TLS: istiod's serving certificate).
func (s *Server) Register(gs *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, s)
}

// Set replaces the whole state. It returns at once; the state is encoded
// and pushed after the debounce period, and a later Set within that period
// supersedes it. Set takes ownership of r (see Resources).
func (s *Server) Set(r Resources) {
	s.stats.sets.Add(1)
	if s.opts.Debounce < 0 {
		s.mu.Lock()
		s.pending = &r
		s.mu.Unlock()
		s.flush()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = &r
	now := time.Now()
	switch {
	case s.timer == nil:
		s.burstStarted = now
		s.timer = time.AfterFunc(s.opts.Debounce, s.flush)
	case now.Sub(s.burstStarted)+s.opts.Debounce <= s.opts.MaxDebounce:
		s.timer.Reset(s.opts.Debounce)
	default:
		// The burst has lasted MaxDebounce: let the timer fire.
	}
}

// flush publishes the pending state, if any.
func (s *Server) flush() {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	s.mu.Lock()
	r := s.pending
	s.pending = nil
	s.timer = nil
	s.mu.Unlock()
	if r == nil {
		return
	}
	if err := s.publish(r); err != nil {
		s.log.Error("xDS state not published; clients keep the previous state", "error", err)
	}
}

// publish builds a snapshot from r and wakes every stream. Caller holds
// buildMu.
func (s *Server) publish(r *Resources) error {
	prev := s.snap.Load()
	var gen uint64 = 1
	prevTypes := [numTypes]*typeSnapshot{emptyType, emptyType}
	if prev != nil {
		gen = prev.gen + 1
		prevTypes = prev.types
	}
	next := &snapshot{gen: gen}
	var err error
	if next.types[idxAddress], err = buildType(prevTypes[idxAddress], gen, TypeAddress, r.Addresses); err != nil {
		return err
	}
	if next.types[idxAuthorization], err = buildType(prevTypes[idxAuthorization], gen, TypeAuthorization, r.Authorizations); err != nil {
		return err
	}
	s.snap.Store(next)
	s.stats.snapshots.Add(1)
	if prev == nil {
		close(s.ready)
	}
	s.streamsMu.Lock()
	for st := range s.streams {
		st.wakeUp()
	}
	s.streamsMu.Unlock()
	return nil
}

// Flush publishes a pending Set now instead of after the debounce period
// (shutdown, tests).
func (s *Server) Flush() { s.flush() }

// Generation is the generation of the published state: 0 before the first
// publish, then one more per publish.
func (s *Server) Generation() uint64 {
	if p := s.snap.Load(); p != nil {
		return p.gen
	}
	return 0
}

// DeltaAggregatedResources serves one delta ADS stream.
func (s *Server) DeltaAggregatedResources(gs discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx := gs.Context()
	if s.limiter != nil && !s.limiter.allow() {
		s.stats.streamsRejected.Add(1)
		return status.Error(codes.ResourceExhausted, "istiod: too many new xDS streams; retry with backoff")
	}
	if s.opts.Authorize != nil {
		if err := s.opts.Authorize(ctx); err != nil {
			return s.unauthorized(err)
		}
	}
	st := newStream(s, gs, s.nextID.Add(1))
	s.streamsMu.Lock()
	s.streams[st] = struct{}{}
	s.streamsMu.Unlock()
	s.stats.streamsTotal.Add(1)
	s.stats.streamsActive.Add(1)
	defer func() {
		s.streamsMu.Lock()
		delete(s.streams, st)
		s.streamsMu.Unlock()
		s.stats.streamsActive.Add(-1)
	}()
	err := st.run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
		st.logger().Info("xDS stream ended", "error", err)
	} else {
		st.logger().Debug("xDS stream ended")
	}
	return err
}

// unauthorized counts a refused stream and returns its gRPC error: err if
// it is a status, else PermissionDenied.
func (s *Server) unauthorized(err error) error {
	s.stats.streamsUnauthorized.Add(1)
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.PermissionDenied, err.Error())
}

// StreamAggregatedResources is not served: workload discovery is delta only.
func (s *Server) StreamAggregatedResources(discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "istiod: workload discovery serves delta ADS only (DeltaAggregatedResources)")
}
